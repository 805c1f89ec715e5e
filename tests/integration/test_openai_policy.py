"""The OpenAI-compatible policy against a real local server (llama-cpp-python's own
`llama_cpp.server`) on the real base model, driving the same search."""

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rstar_app.steps import STOP, build_prompt, parse_step
from rstar_app.weights import base_gguf

pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python's server extras (uvicorn, fastapi)")


@pytest.fixture(scope="module")
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(base_gguf()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("llama_cpp.server exited at start-up")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not answer within ~2-10 minutes of starting")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_server_candidates_carry_their_stop_marker(server):
    from rstar_app.models.openai_api import OpenAIPolicy
    pol = OpenAIPolicy(server, tokenizer_path=base_gguf())
    prefix = build_prompt("Tom has 3 apples and buys 5 more. How many apples does he have now?", few_shot=True)
    cands = pol.generate(prefix, n=3, max_tokens=60, temperature=0.8, seed=3, stop=STOP)
    assert len(cands) == 3
    stopped = [c for c in cands if c.stop is not None]
    assert stopped, "no candidate ended on a step marker"
    for c in stopped:
        assert c.stop in STOP and not any(m in c.text for m in STOP)
        assert parse_step(c.text, c.stop).kind != "invalid" or "<answer>" in c.text
    again = pol.generate(prefix, n=3, max_tokens=60, temperature=0.8, seed=3, stop=STOP)
    assert [c.text for c in again] == [c.text for c in cands]  # seeds are honoured


def test_engine_search_runs_on_the_server_policy(server):
    from rstar_app.config import SearchConfig
    from rstar_app.engine import Engine
    eng = Engine.load(api_url=server, no_ppm=True, few_shot=True)
    try:
        tree = eng.solve("Sara has 4 pens and buys 2 more. How many pens does she have?",
                         SearchConfig(rollouts=2, candidates=2, seed=0, max_step_tokens=64))
    finally:
        eng.close()
    assert len(tree.nodes) > 2 and tree.meta["policy"].endswith(server)
    # the server's replies parsed into steps that ran: not only dead or invalid nodes
    assert any(n.kind != "invalid" and n.status in ("ok", "terminal") for n in tree.nodes[1:]), [
        (n.kind, n.status, n.reason) for n in tree.nodes[1:]]
