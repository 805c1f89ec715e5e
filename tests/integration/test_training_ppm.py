"""PPM training on the tiny Llama: learns a separable preference, resumes exactly, exports a stacked
adapter + value head; on the real base, the exported PPM scores in llama.cpp as in torch."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

from rstar_app.steps import build_prompt  # noqa: E402
from training import ppm  # noqa: E402
from training.export import load_value_head  # noqa: E402
from training.tiny import make_tiny_model  # noqa: E402

QUESTIONS = [f"Tom has {i} apples and buys {i + 3} more. How many apples does he have now?" for i in range(40)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rows = []
    for i, q in enumerate(QUESTIONS):
        rows.append({"prefix": build_prompt(q), "problem_id": f"p{i}",
                     "pos": f"# Step 1: Add the apples he has and the apples he buys.\ntotal = {i} + {i + 3}\n<end_of_step>\n",
                     "neg": "# Step 1: Guess a big number without reading the problem.\nguess = 999999\n<end_of_step>\n"})
    p = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def run(tiny, pairs, out, **kw):
    args = ["--base", str(tiny), "--pairs", str(pairs), "--out", str(out), "--batch-size", "4",
            "--grad-accum", "1", "--lr", "1e-3", "--head-lr", "1e-2", "--warmup-steps", "1",
            "--eval-frac", "0.25", "--save-every", "2", "--log-every", "2", "--threads", "2"]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return ppm.main(args)


def test_ppm_learns_resumes_and_exports(tiny, pairs, tmp_path):
    full = run(tiny, pairs, tmp_path / "full", max_steps=6)
    assert full["eval_before"]["accuracy"] == 0.5  # zero-initialised head: all ties
    assert full["eval_after"]["accuracy"] > 0.8
    assert full["eval_after"]["loss"] < full["eval_before"]["loss"]
    w, b, meta = load_value_head(tmp_path / "full" / "value_head.npz")
    assert w.shape == (256,) and meta["activation"] == "tanh"
    assert (tmp_path / "full" / "ppm.gguf").stat().st_size > 0

    assert run(tiny, pairs, tmp_path / "cut", max_steps=6, stop_after=3) == {"stopped_at": 3}
    resumed = run(tiny, pairs, tmp_path / "cut", max_steps=6)
    w2, b2, _ = load_value_head(tmp_path / "cut" / "value_head.npz")
    np.testing.assert_allclose(w, w2, atol=1e-6)
    assert resumed["eval_after"] == full["eval_after"]


def test_split_is_by_problem():
    ps = [{"prefix": "x", "pos": "a", "neg": "b", "problem_id": f"p{i % 10}"} for i in range(200)]
    tr, ev = ppm.split_pairs(ps, 0.3, seed=0)
    assert tr and ev and not ({p["problem_id"] for p in tr} & {p["problem_id"] for p in ev})


def test_llama_ppm_scores_match_torch(tmp_path):
    """Stacked policy+PPM adapter GGUF + value head in rstar_app's LlamaPPM == torch ValueModel."""
    pytest.importorskip("llama_cpp")
    from peft import get_peft_model
    from rstar_app.models.llama_cpp import LlamaPPM
    from training import loop
    from training.common import base_gguf_path, load_base
    from training.export import export_lora, export_value_head

    torch.manual_seed(0)
    model, tok = load_base()
    pol = get_peft_model(model, loop.lora_config(model, r=8, alpha=16, dropout=0, targets=loop.LORA_TARGETS, top_layers=6))
    with torch.no_grad():
        for n, p in pol.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.15)
    pol.save_pretrained(str(tmp_path / "policy"))
    del pol, model
    cfg = ppm.PPMConfig(policy_adapter=str(tmp_path / "policy"), lora_r=8, lora_alpha=16, top_layers=6, device="cpu")
    vm, tok, base = ppm.build_model(cfg, "cpu")
    with torch.no_grad():
        for n, p in vm.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.15)
        vm.head.weight.normal_(0, 0.05)
        vm.head.bias.fill_(0.1)
    vm.lm.save_pretrained(str(tmp_path / "ppm_adapter"))
    export_lora(tmp_path / "ppm_adapter", tmp_path / "ppm.gguf", stack=[tmp_path / "policy"])
    export_value_head(vm.head.weight.detach().numpy(), vm.head.bias.detach().numpy(), tmp_path / "head.npz")

    prefix = build_prompt("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                          "clips in May. How many clips did Natalia sell altogether in April and May?")
    steps = ["# Step 1: In May she sold half as many clips as in April.\nmay = 48 / 2\n<end_of_step>\n",
             "# Step 1: Add everything.\ntotal = 48 + 48\n<end_of_step>\n",
             "# Step 1: Multiply.\nx = 48 * 2\n<end_of_step>\n"]
    vm.train(False)
    with torch.no_grad():
        want = []
        for s in steps:
            ids = tok(prefix + s, add_special_tokens=False, return_tensors="pt")["input_ids"]
            want.append(float(vm.scores(ids, torch.ones_like(ids))[0]))
    llm = LlamaPPM(base_gguf_path(), tmp_path / "head.npz", adapter=str(tmp_path / "ppm.gguf"), n_ctx=1024)
    got = llm.score(prefix, steps)
    # llama.cpp's last hidden state is ~1e-3 cosine from torch's (Q8 activations on a Q4_1 base, and
    # batched siblings): scores a few hundredths apart (0.02 on average here; training/RESULTS.md
    # measures 0.09 for the shipped PPM)
    assert np.allclose(got, want, atol=0.1), (got, want)
    # the adapters must matter: without them llama.cpp lands 0.09 from torch here. (With the LoRA B
    # drawn at std 0.04 the adapters moved the scores less than llama.cpp's own noise, so the
    # score check alone could not have caught a lost adapter.)
    bare = LlamaPPM(base_gguf_path(), tmp_path / "head.npz", n_ctx=1024).score(prefix, steps)
    gap = lambda xs: float(np.mean(np.abs(np.array(xs) - np.array(want))))  # noqa: E731
    assert gap(got) < gap(bare) / 2, (got, bare, want)
    for i in range(3):
        for j in range(3):
            if want[i] - want[j] > 0.1:  # clearly separated pairs keep their order
                assert got[i] > got[j], (got, want)
    assert max(want) - min(want) > 0.1  # the check is not vacuous


def test_extra_pairs_are_split_by_problem_and_kept_out_of_the_gated_held_out_number(tiny, pairs, tmp_path):
    rows = [json.loads(l) for l in pairs.read_text().splitlines()]
    extra = tmp_path / "extra.jsonl"
    # one extra pair per problem, synthetic-style, for every problem (held-out ones included)
    extra.write_text("".join(json.dumps(dict(r, neg=r["pos"].replace("+", "-"), kind="synthetic")) + "\n" for r in rows))
    plain = run(tiny, pairs, tmp_path / "plain", max_steps=1)
    mixed = run(tiny, pairs, tmp_path / "mixed", max_steps=1, extra_pairs=extra)
    held = plain["eval_before"]["pairs"]
    assert mixed["eval_before"]["pairs"] == held > 0
    assert mixed["extra_pairs"] == len(rows) - held  # the held-out problems' extra pairs do not train
    assert mixed["train_pairs"] == plain["train_pairs"] + mixed["extra_pairs"]
    # the extra pairs of held-out problems are scored on their own, never in the gate's number
    assert mixed["eval_extra_after"]["pairs"] == held and plain["eval_extra_after"] is None
    assert set(mixed["eval_after"]["by_kind"]) == {"step"}
