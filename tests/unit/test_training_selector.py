"""training.selector: the conditional-logit fit, its cross-validation, and publishing into a manifest."""

import json
import random

import numpy as np

from rstar_app.selector import FEATURES, Selector
from rstar_app.tree import Tree
from training.selector import cross_validate, fit, main, picks_right, rollout_trees, tree_rows


def _problem(i: int, rng: random.Random) -> tuple[Tree, str]:
    """A tree whose right answer's code uses both of the problem's numbers, while each of two wrong
    answers uses one of them and comes from more terminals, so counting terminals misleads."""
    a, b = rng.randint(2, 90), rng.randint(100, 900)
    gold = str(a + b)
    t = Tree(f"Tom has {a} red and {b} blue pens. How many pens?", "prompt", gold=gold)
    for ans, code, n in ((gold, f"print({a} + {b})", 1), (str(2 * a), f"print({a} * 2)", 2),
                         (str(b - 1), f"print({b} - 1)", 2)):
        for _ in range(n):
            step = t.add(t.root, kind="code", status="ok", code=code, ppm=0.0)
            t.add(step, kind="answer", status="terminal", answer=ans, ppm=rng.uniform(-0.5, 0.5))
    return t, gold


def _rollouts(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            t, gold = _problem(i, rng)
            f.write(json.dumps({"id": f"p{seed}-{i}", "gold": gold, "trace": t.to_json(events=False)}) + "\n")


def _tree_dir(path, n: int, seed: int):
    """n saved trees with their gold answers, as `rstar-app eval --save-trees` writes them."""
    path.mkdir()
    rng = random.Random(seed)
    for i in range(n):
        t, _ = _problem(i, rng)
        (path / f"{i}.json").write_text(json.dumps(t.to_json(events=False)))
    return path


def test_fit_learns_the_telling_feature_and_cross_validation_holds_out_problems(tmp_path):
    _rollouts(tmp_path / "r.jsonl", 40, seed=0)
    rows = tree_rows(rollout_trees([str(tmp_path / "r.jsonl")]))
    assert len(rows) == 40 and all(r["X"].shape == (3, len(FEATURES)) for r in rows)
    w = fit(rows, 0.01)
    named = dict(zip(FEATURES, w))
    assert named["full"] > 0 and named["covmean"] > 0 and named["logc"] < 0
    assert picks_right(rows, w) == 40
    count_only = np.array([1.0 if k == "logc" else 0.0 for k in FEATURES])
    assert picks_right(rows, count_only) == 0  # the plain vote is wrong in every one of these trees
    cv = cross_validate(rows, folds=5, seed=0)
    assert set(cv) == {"lambda=0.001", "lambda=0.01", "lambda=0.1", "lambda=1"} and max(cv.values()) == 40


def test_cli_writes_a_loadable_selector_scores_transfer_trees_and_publishes(tmp_path, capsys):
    _rollouts(tmp_path / "r.jsonl", 30, seed=1)
    trees = _tree_dir(tmp_path / "eval.trees", 10, seed=2)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "old-selector.json").write_text("{}")
    (weights / "manifest.json").write_text(json.dumps({"round": 3, "ppm": {
        "head": "h.npz", "selector": "old-selector.json", "sha256": {"head": "x"}, "made_by": ["ppm cmd"]}}))
    assert main(["--rollouts", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out"),
                 "--transfer", str(trees), "--publish", str(weights)]) == 0
    out = capsys.readouterr().out
    assert f"| {trees} (10) | 10 |" in out  # the selector picks the right answer in all 10 unseen trees
    sel = Selector.load(tmp_path / "out" / "selector.json")
    assert sel.weights["full"] > 0 and sel.fit["mixed_trees"] == 30
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["transfer"][str(trees)]["learned"] == 10 and report["transfer"][str(trees)]["in_tree"] == 10
    m = json.loads((weights / "manifest.json").read_text())
    assert m["ppm"]["selector"] == "selector-r3.json" and len(m["ppm"]["sha256"]["selector"]) == 64
    assert m["ppm"]["made_by"][0] == "ppm cmd" and "training.selector" in m["ppm"]["made_by"][1]
    assert Selector.load(weights / "selector-r3.json").weights == sel.weights and not (weights / "old-selector.json").exists()


def test_cli_refuses_trees_that_hold_nothing_to_fit(tmp_path, capsys):
    t = Tree("Tom has 3 pens.", "prompt", gold="3")
    t.add(t.root, kind="answer", status="terminal", answer="3", ppm=0.1)
    (tmp_path / "r.jsonl").write_text(json.dumps({"id": "a", "gold": "3", "trace": t.to_json(events=False)}) + "\n")
    assert main(["--rollouts", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out")]) == 1
    assert "no tree holds both a right and a wrong answer" in capsys.readouterr().err


def test_cli_scores_a_baseline_selector_on_training_and_transfer_trees(tmp_path, capsys):
    _rollouts(tmp_path / "r.jsonl", 20, seed=3)
    trees = _tree_dir(tmp_path / "eval.trees", 6, seed=4)
    counter = tmp_path / "count.json"  # the plain vote as a selector: wrong in every one of these trees
    Selector(weights={"logc": 1.0}).save(counter)
    assert main(["--rollouts", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out"),
                 "--transfer", str(trees), "--baseline", str(counter)]) == 0
    out = capsys.readouterr().out
    assert f"baseline {counter} on all 20 training trees: 0" in out
    assert f"| {trees} (6) | 6 | 0 |" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["baseline"] == {"selector": str(counter), "training_right": 0}
    assert report["transfer"][str(trees)]["baseline"] == 0 and report["transfer"][str(trees)]["learned"] == 6


def test_cli_scores_transfer_rollout_files_like_tree_dirs(tmp_path, capsys):
    # held-out training problems come as rollout files; the same trees as a directory score the same
    _rollouts(tmp_path / "r.jsonl", 20, seed=3)
    _rollouts(tmp_path / "unseen.jsonl", 6, seed=4)
    trees = _tree_dir(tmp_path / "eval.trees", 6, seed=4)
    assert main(["--rollouts", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out"),
                 "--transfer", f"{tmp_path / 'unseen.jsonl'},{trees}"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())["transfer"]
    assert report[str(tmp_path / "unseen.jsonl")] == report[str(trees)]
    assert report[str(trees)]["trees"] == 6 and report[str(trees)]["learned"] == 6


def test_cli_rejects_a_baseline_that_is_not_a_selector_file(tmp_path, capsys):
    _rollouts(tmp_path / "r.jsonl", 5, seed=5)
    (tmp_path / "bad.json").write_text("{}")
    assert main(["--rollouts", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out"),
                 "--baseline", str(tmp_path / "bad.json")]) == 2
    assert "--baseline" in capsys.readouterr().err and not (tmp_path / "out").exists()
