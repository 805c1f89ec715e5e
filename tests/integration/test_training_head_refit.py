"""training.head end to end on the shipped weights: real trees from the committed round-3 rollouts,
features read by the llama.cpp PPM, a refit head published into a copy of weights/ that the engine's
PPM then loads and scores with."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from rstar_app.grading import is_correct  # noqa: E402
from rstar_app.tree import Tree  # noqa: E402
from rstar_app.weights import WEIGHTS_DIR, load_weights, sha256  # noqa: E402
from training import head  # noqa: E402

ROLLOUTS = Path(__file__).resolve().parents[2] / "training/runs/cpu-small/round-3/rollouts.practice.jsonl"


def _mixed_rows(n: int) -> list[dict]:
    """The first n rollouts whose tree has a right and a wrong terminal (and at most 7 terminals)."""
    rows = []
    for line in ROLLOUTS.read_text().splitlines():
        r = json.loads(line)
        ok = [is_correct(nd.answer, r["gold"]) for nd in Tree.from_json(r["trace"]).terminals()]
        if any(ok) and not all(ok) and len(ok) <= 7:
            rows.append(r)
        if len(rows) == n:
            return rows
    raise AssertionError("the committed rollouts have too few mixed trees")


def test_refit_head_is_published_and_loads_in_the_engine_ppm(tmp_path):
    w = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, w, ignore=shutil.ignore_patterns("*.pyc"))
    f = tmp_path / "rollouts.jsonl"
    rows = _mixed_rows(4)
    f.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    trees = tmp_path / "eval.trees"  # a fourth, never fitted on, as `rstar-app eval --save-trees` writes it
    trees.mkdir()
    (trees / "p0.json").write_text(json.dumps(rows[3]["trace"]))
    ok = [is_correct(nd.answer, rows[3]["gold"]) for nd in Tree.from_json(rows[3]["trace"]).terminals()]
    out = tmp_path / "head"
    old_head = load_weights(w).ppm_head.name
    rc = head.main(["--rollouts", str(f), "--out", str(out), "--weights", str(w), "--folds", "3",
                    "--threads", "2", "--no-progress", "--publish", "ppm-head-test.npz", "--transfer", str(trees)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["trees"] == 3 and set(report["cross_validation"]) >= {"old", "lambda=1"}
    assert report["cross_validation"]["old"]["trees"] == 3
    t = report["transfer"][str(trees)]
    assert t["mixed_trees"] == 1 and t["new"]["trees"] == 1 and 0.0 <= t["old"]["terminal_pairs_per_tree"] <= 1.0
    assert t["old"]["pairs"] == sum(ok) * (len(ok) - sum(ok))  # every (right, wrong) terminal pair of that tree

    wts = load_weights(w, verify=True)  # sha256 recorded for the new head
    assert wts.ppm_head.name == "ppm-head-test.npz" and not (w / old_head).exists()
    m = json.loads((w / "manifest.json").read_text())
    assert m["ppm"]["sha256"]["head"] == sha256(wts.ppm_head) and "training.head" in m["ppm"]["made_by"][-1]
    assert m["ppm"]["head_refit"]["transfer"] == report["transfer"]

    # the cached features are the engine PPM's own: its score is tanh(w . h + b) of them
    from rstar_app.models.llama_cpp import LlamaPPM
    ppm = LlamaPPM(wts.base, wts.ppm_head, adapter=str(wts.ppm_adapter), n_ctx=4096, n_threads=2)
    g = head.terminal_groups([str(f)])[0]
    cache = head.FeatureCache(out / "features.npz")
    with np.load(wts.ppm_head) as z:
        wv, b = z["weight"].astype(np.float64), float(z["bias"][0])
    want = [float(np.tanh(cache[t] @ wv + b)) for t in g["texts"]]
    got = ppm.score(g["prompt"], [t[len(g["prompt"]):] for t in g["texts"]])
    assert got == pytest.approx(want, abs=1e-3)
