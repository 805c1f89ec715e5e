"""The per-run summary that eval prints and records in the manifest, and re-voting saved trees."""

import json

from rstar_app.cli import main
from rstar_app.eval import subset, summarize
from rstar_app.jsonl import read_rows
from rstar_app.tree import Tree


def test_summary_reports_in_tree_rate_only_over_rows_that_graded_it():
    rows = [{"correct": True, "in_tree": True, "tokens": 100, "seconds": 2.0},
            {"correct": False, "in_tree": True, "tokens": 300, "seconds": 4.0},   # selection miss
            {"correct": False, "in_tree": False, "tokens": 200, "seconds": 3.0},  # generation miss
            {"correct": False, "tokens": 400, "seconds": 5.0}]                    # older row: no field
    s = summarize(rows)
    assert s["problems"] == 4 and s["accuracy"] == 0.25 and s["tokens_per_problem"] == 250.0
    assert s["in_tree"] == round(2 / 3, 4) and s["in_tree_problems"] == 3
    assert "in_tree" not in summarize([{"correct": True, "tokens": 1, "seconds": 1.0}])


def test_a_larger_limit_extends_the_same_subset():
    items = [{"id": i} for i in range(50)]
    assert subset(items, 20, 1234) == subset(items, 200, 1234)[:20]
    assert subset(items, 20, 1234) != subset(items, 20, 1)


def _saved_run(tmp_path, trees: dict[str, list[tuple[str, float, float]]]):
    """A finished --save-trees run on disk: rows, summary, one tree per problem id."""
    src = tmp_path / "src"
    (src / "run.trees").mkdir(parents=True)
    with open(src / "run.jsonl", "w") as f:
        for pid, terms in trees.items():
            t = Tree("p", "prompt", gold="5")
            for ans, value, ppm in terms:
                nd = t.add(t.root, kind="answer", status="terminal", answer=ans, ppm=ppm)
                nd.q, nd.n = value, 1
            t.vote(4)
            (src / "run.trees" / f"{pid}.json").write_text(json.dumps(t.to_json(events=False)))
            f.write(json.dumps({"id": pid, "gold": "5", "answer": t.answer, "correct": t.answer == "5",
                                "in_tree": True, "tokens": 1000, "seconds": 9.0}) + "\n")
    (src / "run.summary.json").write_text(json.dumps({"models": "policy X, PPM Y"}))
    return src / "run.trees"


def test_from_trees_re_votes_a_finished_run_without_a_model(tmp_path, monkeypatch):
    ids = [f"practice-{i}" for i in range(3)]
    import rstar_app.eval as ev
    monkeypatch.setattr(ev, "load_bench", lambda name, data=None: [{"id": i, "question": "q", "gold": "5"} for i in ids])
    # the top-4 vote says 9 (three high-value terminals); the PPM weights say 5
    trees = _saved_run(tmp_path, {i: [("9", 0.9, -0.9), ("9", 0.8, -0.9), ("9", 0.7, -0.9), ("5", 0.1, 0.9),
                                      ("5", 0.0, 0.9)] for i in ids})
    out = tmp_path / "out"
    args = ["eval", "--bench", "practice", "--limit", "3", "--strategy", "mcts", "--out", str(out),
            "--from-trees", str(trees)]
    assert main(args) == 0
    assert [r["answer"] for r in read_rows(out / "practice-weights-mcts-r8-k4-s0-ss1234.jsonl")] == ["9"] * 3
    assert main(args + ["--vote", "ppm-weighted"]) == 0
    rows = read_rows(out / "practice-weights-mcts-r8-k4-vppm-s0-ss1234.jsonl")
    assert [r["answer"] for r in rows] == ["5"] * 3 and all(r["correct"] and r["tokens"] == 1000 for r in rows)
    summary = json.loads((out / "practice-weights-mcts-r8-k4-vppm-s0-ss1234.summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["vote"] == "ppm-weighted" and summary["models"] == "policy X, PPM Y"


def test_from_trees_refuses_a_run_that_lacks_a_problem(tmp_path, monkeypatch, capsys):
    import rstar_app.eval as ev
    monkeypatch.setattr(ev, "load_bench", lambda name, data=None: [{"id": i, "question": "q", "gold": "5"} for i in "ab"])
    trees = _saved_run(tmp_path, {"a": [("5", 0.5, 0.5)]})
    args = ["eval", "--bench", "practice", "--limit", "2", "--out", str(tmp_path / "out"), "--from-trees"]
    assert main(args + [str(trees)]) == 2
    assert "1 of 2 problems have no row and tree" in capsys.readouterr().err
    assert main(args + [str(tmp_path / "nowhere.trees")]) == 2
    assert "not a finished run's trees folder" in capsys.readouterr().err
