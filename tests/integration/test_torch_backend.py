"""The torch backend (rstar_app.models.torch_hf, the GPU recipe's rollouts) against llama.cpp on the
shipped weights, and its sampling contract on the tiny test model; then the GPU check script run
end to end on CPU with the tiny model, so the script cannot rot while no GPU is lent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

from rstar_app.models.batching import BatchingPolicy, BatchingPPM  # noqa: E402
from rstar_app.models.torch_hf import GenRequest, TorchPolicy, TorchPPM  # noqa: E402
from rstar_app.steps import STOP  # noqa: E402
from rstar_app.steps import build_prompt  # noqa: E402
from training.common import base_gguf_path  # noqa: E402
from training.tiny import make_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROBLEM = "Sara has 4 pens and buys 2 more. How many pens does she have?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def shipped_policy(tmp_path_factory):
    """(adapter GGUF named by weights/manifest.json, the same adapter imported to peft)."""
    from rstar_app.weights import load_weights
    from training.export import import_lora_gguf
    gguf = load_weights(REPO / "weights").policy_adapter
    assert gguf is not None and gguf.is_file(), "weights/manifest.json names no policy adapter"
    return gguf, import_lora_gguf(gguf, tmp_path_factory.mktemp("policy") / "peft")


def test_torch_policy_greedy_step_matches_llama_cpp_on_the_shipped_policy(shipped_policy):
    from rstar_app.models.llama_cpp import LlamaPolicy
    prefix = build_prompt(PROBLEM)
    kw = dict(n=1, max_tokens=48, temperature=0.0, top_p=1.0, top_k=0, seed=0, stop=STOP)
    gguf, peft_dir = shipped_policy
    t = TorchPolicy(base_gguf_path(), adapter=peft_dir, device="cpu", dtype="float32", max_candidates=2)
    ll = LlamaPolicy(base_gguf_path(), adapter=str(gguf), max_candidates=2,
                     n_ctx=1024, n_threads=2)
    a, b = t.generate(prefix, **kw)[0], ll.generate(prefix, **kw)[0]
    assert a.tokens > 5 and b.tokens > 5
    assert t.count_tokens(prefix) == ll.count_tokens(prefix)
    # same weights (torch dequantises the same Q4_1 file), different kernels: same greedy words
    assert a.text.split()[:8] == b.text.split()[:8], (a.text, b.text)
    # and both report how sure the policy was of its step, at temperature 1 (Candidate.logprob)
    assert a.logprob < 0 and b.logprob < 0
    if a.text == b.text:
        assert a.logprob == pytest.approx(b.logprob, abs=0.05 * a.tokens + 0.2)


def test_torch_siblings_equal_single_calls_with_their_seeds(tiny):
    p = TorchPolicy(tiny, device="cpu", dtype="float32", max_candidates=4)
    prefix = build_prompt(PROBLEM)
    kw = dict(max_tokens=12, temperature=1.0, top_p=0.95, top_k=40, stop=STOP)
    batch = p.generate(prefix, n=3, seed=10, **kw)
    assert len(batch) == 3 and all(c.tokens > 0 for c in batch)
    assert [p.generate(prefix, n=1, seed=10 + i, **kw)[0] for i in range(3)] == batch
    assert len({c.text for c in batch}) > 1  # different seeds, different samples
    assert all(c.tokens <= 12 for c in batch)
    with pytest.raises(ValueError):
        p.generate(prefix, n=5, seed=0, **kw)


def test_torch_greedy_first_replaces_only_sibling_zero_with_the_greedy_step(tiny):
    p = TorchPolicy(tiny, device="cpu", dtype="float32", max_candidates=4)
    prefix = build_prompt(PROBLEM)
    kw = dict(max_tokens=12, temperature=1.0, top_p=0.95, top_k=40, stop=STOP)
    plain = p.generate(prefix, n=3, seed=10, **kw)
    mixed = p.generate(prefix, n=3, seed=10, greedy_first=True, **kw)
    greedy = p.generate(prefix, n=1, seed=10, **{**kw, "temperature": 0.0})[0]
    assert mixed[0] == greedy and mixed[1:] == plain[1:]


def _requests() -> list[GenRequest]:
    """Calls of different searches: prefixes of different lengths, samplers and sibling counts."""
    long = build_prompt("A farm has 12 cows and 3 times as many hens. Each hen lays 2 eggs a day. "
                        "How many eggs do the hens lay in a week?")
    kw = dict(max_tokens=12, stop=tuple(STOP))
    return [GenRequest(build_prompt(PROBLEM), n=3, temperature=1.0, seed=10, **kw),
            GenRequest(long, n=2, temperature=0.7, top_p=0.9, top_k=20, seed=3, **kw),
            GenRequest(long + "# The hens\nhens = 12 * 3\n", n=1, temperature=0.0, seed=0, **kw),
            GenRequest(build_prompt(PROBLEM), n=2, temperature=1.0, seed=99, greedy_first=True,
                       **{**kw, "max_tokens": 5})]


def _run_threads(target, n: int, timeout: float = 300) -> None:
    """target(i) in n threads at once; returns when all have ended."""
    import threading
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)


def _alone(p, r: GenRequest):
    return p.generate(r.prefix, n=r.n, max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                      top_k=r.top_k, seed=r.seed, stop=r.stop, greedy_first=r.greedy_first)


def test_torch_generate_batch_of_different_prefixes_equals_each_call_alone(tiny):
    p = TorchPolicy(tiny, device="cpu", dtype="float32", max_candidates=4)
    reqs = _requests()
    batch = p.generate_batch(reqs)
    assert [len(b) for b in batch] == [r.n for r in reqs]
    alone = [_alone(p, r) for r in reqs]
    assert batch == alone  # left padding and batch mates change nothing
    lps = [(x.logprob, y.logprob) for xs, ys in zip(batch, alone) for x, y in zip(xs, ys)]
    assert all(x is not None and x <= 0 and x == pytest.approx(y, abs=1e-3) for x, y in lps)
    assert all(c.tokens <= 5 for c in batch[3])


def test_torch_advance_in_chunks_with_rows_joining_late_equals_one_run(tiny):
    p = TorchPolicy(tiny, device="cpu", dtype="float32", max_candidates=4)
    reqs = _requests()
    want = p.generate_batch(reqs)
    early = [p.rows_for(r) for r in reqs[:2]]
    p.advance([r for rs in early for r in rs], max_steps=3)          # the first two calls start alone
    assert all(len(r.out) <= 3 for rs in early for r in rs)
    late = [p.rows_for(r) for r in reqs[2:]]
    everyone = [r for rs in early + late for r in rs]
    while any(r.result is None for r in everyone):                   # then all of them, 4 tokens a chunk
        p.advance(everyone, max_steps=4)
    assert [[r.result for r in rs] for rs in early + late] == want


def test_batching_policy_runs_concurrent_searches_calls_as_shared_batches(tiny):
    import threading
    p = TorchPolicy(tiny, device="cpu", dtype="float32", max_candidates=4)
    reqs = _requests()
    want = [_alone(p, r) for r in reqs]
    front = BatchingPolicy(p, max_wait=5.0, chunk_tokens=None)
    got: dict[int, list] = {}
    everyone_in = threading.Barrier(len(reqs))

    def search(i: int) -> None:
        with front.client():
            everyone_in.wait()  # all clients registered before the first call
            got[i] = _alone(front, reqs[i])
            got[i] = got[i] + _alone(front, reqs[i])  # a second call, as a search's next expansion

    _run_threads(search, len(reqs))
    front.close()
    assert [got[i] for i in range(len(reqs))] == [w + w for w in want]
    # lockstep: 8 calls from 4 clients in 2 batches of 4 (the clients all wait before max_wait)
    assert front.batches == {"batches": 2, "requests": 8, "rows": 16}
    with pytest.raises(RuntimeError, match="closed"):
        _alone(front, reqs[0])

    # continuous batching: 2 tokens a chunk, calls leave when done and the next ones join
    front = BatchingPolicy(p, max_wait=5.0, join_wait=5.0, chunk_tokens=2)
    got.clear()
    everyone_in = threading.Barrier(len(reqs))
    _run_threads(search, len(reqs))
    front.close()
    assert [got[i] for i in range(len(reqs))] == [w + w for w in want]
    assert front.batches["requests"] == 8 and front.batches["batches"] >= 12  # >= 2 x ceil(12 / 2) chunks


def test_batching_policy_hands_a_backend_error_to_its_callers(tiny):
    front = BatchingPolicy(TorchPolicy(tiny, device="cpu", dtype="float32", max_candidates=2))
    with pytest.raises(ValueError, match="empty prefix"):
        front.generate("", n=1, max_tokens=4, temperature=0.0)
    assert front.generate(build_prompt(PROBLEM), n=1, max_tokens=3, temperature=0.0)[0].tokens > 0
    front.close()


def test_batching_ppm_scores_concurrent_calls_as_each_alone(tiny, tmp_path):
    head = tmp_path / "head.npz"
    np.savez(head, weight=np.random.default_rng(1).normal(0, 0.05, 256).astype(np.float32),
             bias=np.array([0.0], np.float32))
    ppm = TorchPPM(tiny, head, device="cpu", dtype="float32", max_candidates=2)
    calls = [(build_prompt(PROBLEM), ["# Add\nx = 4 + 2\n<end_of_step>", "# Subtract\nx = 4 - 2\n<end_of_step>",
                                      "<answer>\\boxed{6}"]),
             (build_prompt("Tom has 3 apples and eats one. How many are left?"), ["# Eat one\nx = 3 - 1\n"]),
             (build_prompt(PROBLEM) + "# Add\nx = 4 + 2\n", ["print(x)\n<end_of_step>", "<answer>6"])] * 3
    want = [ppm.score(pre, steps) for pre, steps in calls]
    front = BatchingPPM(ppm, max_rows=8)
    got: dict[int, list[float]] = {}
    _run_threads(lambda i: got.__setitem__(i, front.score(*calls[i])), len(calls))
    front.close()
    assert len(got) == len(calls)
    for i, w in enumerate(want):  # batch mates pad the texts: the same scores up to rounding
        assert np.allclose(got[i], w, atol=1e-4), (i, got[i], w)
    assert front.batches["requests"] == len(calls) and front.batches["rows"] == sum(len(s) for _, s in calls)
    with pytest.raises(RuntimeError, match="closed"):
        front.score(*calls[0])


def test_torch_ppm_scores_match_llama_ppm_with_the_same_head(tmp_path):
    from rstar_app.models.llama_cpp import LlamaPPM
    rng = np.random.default_rng(0)
    head = tmp_path / "head.npz"
    np.savez(head, weight=rng.normal(0, 0.02, 576).astype(np.float32), bias=np.array([0.1], np.float32))
    prefix = build_prompt(PROBLEM)
    steps = ["# She buys 2 more pens\npens = 4 + 2\nprint(pens)\n<end_of_step>",
             "# Subtract the pens\npens = 4 - 2\nprint(pens)\n<end_of_step>",
             "<answer>The answer is \\boxed{6}"]
    t = TorchPPM(base_gguf_path(), head, device="cpu", dtype="float32").score(prefix, steps)
    ll = LlamaPPM(base_gguf_path(), head, n_threads=2, n_ctx=1024, max_candidates=4).score(prefix, steps)
    assert len(t) == len(ll) == 3
    assert np.allclose(t, ll, atol=0.03), (t, ll)  # measured: at most 0.013 apart
    # not vacuous: the scores spread over more than the tolerance (0.135 measured), and pairs further
    # apart than twice it (0.06-0.08 measured) keep their order
    assert np.ptp(t) > 0.1, (t, ll)
    for i in range(3):
        for j in range(3):
            if t[i] - t[j] > 0.06:
                assert ll[i] > ll[j], (t, ll)


def test_gpu_check_script_runs_end_to_end_on_cpu_with_the_tiny_model(tiny, tmp_path, gsm8k_train):
    from training.bootstrap import build
    rows = gsm8k_train(6)
    trajectories, _ = build(rows, executor="local")
    data = tmp_path / "boot.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in trajectories))
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PY=sys.executable, WORK=str(tmp_path / "work"), DEVICE="cpu",
               STEPS="2", BATCH="2", PROBLEMS="4", ROLLOUTS="2", CANDIDATES="2", SHARDS="2", PARALLEL="2", CHUNK="8", STEP_TOKENS="24",
               SEQ="512", EXTRA_SFT_ARGS="--threads 1 --eval-size 2")
    r = subprocess.run(["bash", "training/gpu_check.sh", str(tiny), str(data)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "CHECK sft+export ok" in r.stdout and "CHECK rollouts ok" in r.stdout
    summary = [l for l in r.stdout.splitlines() if l.startswith("SUMMARY rollouts=")]
    assert summary and "rollouts=4 errors=0" in summary[0]
    assert (out / "policy-sft.gguf").stat().st_size > 0
    assert len((out / "rollouts.jsonl").read_text().splitlines()) == 4
    # each shard searched its problems through the batching front (how full its batches are
    # depends on thread timing; test_batching_policy_* pins the lockstep)
    shard_stats = [json.loads((out / f"rollouts.{i}.log").read_text().strip().splitlines()[-1]) for i in (0, 1)]
    assert all(s["ran"] == 2 and s["batches"]["requests"] >= 2 for s in shard_stats), shard_stats


def test_torch_ppm_loads_the_shipped_stacked_ppm_adapter_whose_ranks_differ(tmp_path):
    """weights/ppm-r3.gguf stacks the policy LoRA (every layer) and the PPM LoRA (top layers): rank 16
    below, 32 above. It imports as one peft LoRA with the rank-16 tensors zero-padded and the same
    delta on every tensor, and the torch PPM then scores near the llama.cpp PPM (their Q4_1 base and f16
    adapter against fp32: 24 dev terminals measured 0.09 apart on average)."""
    from safetensors.numpy import load_file
    from rstar_app.models.llama_cpp import LlamaPPM
    from rstar_app.weights import load_weights
    from training.export import HF_TO_GGUF, import_lora_gguf, read_lora_gguf
    w = load_weights(REPO / "weights")
    alpha, pairs = read_lora_gguf(w.ppm_adapter, base=w.base)
    ranks = {a.shape[0] for a, _ in pairs.values()}
    assert len(ranks) > 1, "the shipped PPM adapter is no longer of mixed ranks: this test needs one"
    peft = import_lora_gguf(w.ppm_adapter, tmp_path / "ppm", base=w.base)
    cfg = json.loads((peft / "adapter_config.json").read_text())
    assert cfg["r"] == max(ranks)
    tensors = load_file(str(peft / "adapter_model.safetensors"))
    hf = {v: k for k, v in HF_TO_GGUF.items()}
    for stem, (a, b) in pairs.items():
        layer, module = stem.split(".")[1], hf[stem.split(".")[2]]
        key = f"base_model.model.model.layers.{layer}.{module}.lora_"
        got = cfg["lora_alpha"] / cfg["r"] * tensors[key + "B.weight"] @ tensors[key + "A.weight"]
        np.testing.assert_allclose(got, (alpha / a.shape[0] if alpha else 1.0) * b @ a, rtol=1e-4, atol=1e-6)
    prefix = build_prompt(PROBLEM)
    steps = ["# She buys 2 more pens\npens = 4 + 2\nprint(pens)\n<end_of_step>",
             "# Subtract the pens\npens = 4 - 2\nprint(pens)\n<end_of_step>",
             "# Multiply\npens = 4 * 2 * 10\nprint(pens)\n<end_of_step>"]
    t = TorchPPM(w.base, w.ppm_head, ppm_adapter=str(peft), device="cpu", dtype="float32").score(prefix, steps)
    ll = LlamaPPM(w.base, w.ppm_head, adapter=str(w.ppm_adapter), n_threads=2, n_ctx=1024, max_candidates=4)
    want = np.array(ll.score(prefix, steps))
    assert np.allclose(t, want, atol=0.15), (t, want)  # measured: 0.05 apart at most
    # the adapter is what brings torch there: the head alone lands far further away (0.33 measured)
    bare = TorchPPM(w.base, w.ppm_head, device="cpu", dtype="float32").score(prefix, steps)
    assert np.abs(np.array(bare) - want).max() > 3 * np.abs(np.array(t) - want).max(), (bare, t, want)
