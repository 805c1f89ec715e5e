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


SOURCE = "practice-weights-mcts-r8-k4-s0-ss1234"


def _saved_run(tmp_path, trees: dict[str, list[tuple[str, float, float]]], *, strategy: str = "mcts",
               gold: str = "5"):
    """A finished --save-trees run on disk: rows, summary, one tree per problem id."""
    src = tmp_path / "src"
    (src / f"{SOURCE}.trees").mkdir(parents=True)
    with open(src / f"{SOURCE}.jsonl", "w") as f:
        for pid, terms in trees.items():
            t = Tree("p", "prompt", gold=gold)
            t.meta["config"] = {"strategy": strategy}
            for ans, value, ppm in terms:
                nd = t.add(t.root, kind="answer", status="terminal", answer=ans, ppm=ppm)
                nd.q, nd.n = value, 1
            t.vote(4)
            (src / f"{SOURCE}.trees" / f"{pid}.json").write_text(json.dumps(t.to_json(events=False)))
            f.write(json.dumps({"id": pid, "gold": gold, "answer": t.answer, "correct": t.answer == gold,
                                "in_tree": True, "tokens": 1000, "seconds": 9.0}) + "\n")
    (src / f"{SOURCE}.summary.json").write_text(json.dumps({
        "run": SOURCE, "bench": "practice", "strategy": strategy, "rollouts": 8, "candidates": 4,
        "greedy_first": False, "models": "policy X, PPM Y", "problems": len(trees), "accuracy": 0.0,
        "tokens_per_problem": 1000.0, "seconds_per_problem": 9.0}))
    return src / f"{SOURCE}.trees"


def _bench(monkeypatch, ids, gold="5"):
    import rstar_app.eval as ev
    monkeypatch.setattr(ev, "load_bench", lambda name, data=None: [{"id": i, "question": "q", "gold": gold} for i in ids])


# the top-4 vote says 9 (three high-value terminals); the PPM weights say 5
SPLIT = [("9", 0.9, -0.9), ("9", 0.8, -0.9), ("9", 0.7, -0.9), ("5", 0.1, 0.9), ("5", 0.0, 0.9)]


def test_from_trees_re_votes_a_finished_run_without_a_model(tmp_path, monkeypatch):
    ids = [f"practice-{i}" for i in range(3)]
    _bench(monkeypatch, ids)
    trees = _saved_run(tmp_path, {i: SPLIT for i in ids})
    out = tmp_path / "out"
    # the command line's search flags (greedy, 2 rollouts) are not the source's: the source's win
    args = ["eval", "--bench", "practice", "--limit", "3", "--strategy", "greedy", "--rollouts", "2",
            "--out", str(out), "--from-trees", str(trees)]
    assert main(args + ["--vote", "top-k"]) == 0
    assert [r["answer"] for r in read_rows(out / f"{SOURCE}-rv-v4.jsonl")] == ["9"] * 3
    assert main(args + ["--vote", "ppm-weighted"]) == 0
    rows = read_rows(out / f"{SOURCE}-rv-vppm.jsonl")
    assert [r["answer"] for r in rows] == ["5"] * 3 and all(r["correct"] and r["tokens"] == 1000 for r in rows)
    summary = json.loads((out / f"{SOURCE}-rv-vppm.summary.json").read_text())
    assert summary["accuracy"] == 1.0 and summary["vote"] == "ppm-weighted" and summary["models"] == "policy X, PPM Y"
    assert (summary["strategy"], summary["rollouts"], summary["candidates"]) == ("mcts", 8, 4)


def test_from_trees_auto_uses_the_weights_selector_and_learned_refuses_weights_without_one(tmp_path, monkeypatch, capsys):
    from rstar_app.selector import Selector
    ids = [f"practice-{i}" for i in range(2)]
    _bench(monkeypatch, ids)
    trees = _saved_run(tmp_path, {i: SPLIT for i in ids})
    weights = tmp_path / "w"
    weights.mkdir()
    Selector({"maxp": 1.0}, name="sel.json").save(weights / "sel.json")
    for head in ("Y", "Z"):
        (weights / head).write_bytes(b"head")
    out = tmp_path / "out"
    args = ["eval", "--bench", "practice", "--limit", "2", "--out", str(out), "--from-trees", str(trees)]
    # a selector fit on another PPM's scores (the weights ship head Z, the trees were scored by Y):
    # auto does not use it, as the engine with that PPM would not have
    (weights / "manifest.json").write_text(json.dumps({"round": 3, "ppm": {"head": "Z", "selector": "sel.json"}}))
    assert main(args + ["--weights", str(weights)]) == 0
    assert [r["answer"] for r in read_rows(out / f"{SOURCE}-rv-v4.jsonl")] == ["9", "9"]
    (out / f"{SOURCE}-rv-v4.jsonl").unlink()
    (weights / "manifest.json").write_text(json.dumps({"round": 3, "ppm": {"head": "Y", "selector": "sel.json"}}))
    assert main(args + ["--weights", str(weights)]) == 0  # auto: the selector's best PPM answer, 5
    rows = read_rows(out / f"{SOURCE}-rv-vsel.jsonl")
    assert [r["answer"] for r in rows] == ["5", "5"]
    summary = json.loads((out / f"{SOURCE}-rv-vsel.summary.json").read_text())
    assert summary["vote"] == "learned" and summary["models"] == "policy X, PPM Y, answers by sel.json"
    (weights / "sel.json").write_text("{truncated")
    assert main(args + ["--weights", str(weights)]) == 2
    assert "sel.json: not a readable selector file" in capsys.readouterr().err
    (weights / "manifest.json").write_text(json.dumps({"round": 3, "ppm": {}}))
    assert main(args + ["--weights", str(weights), "--vote", "learned"]) == 2
    assert "--vote learned needs weights whose manifest names ppm.selector" in capsys.readouterr().err
    assert main(args + ["--weights", str(weights)]) == 0  # auto without a selector: the top-4 vote
    assert [r["answer"] for r in read_rows(out / f"{SOURCE}-rv-v4.jsonl")] == ["9", "9"]


def test_from_trees_into_the_source_folder_leaves_the_source_run_whole(tmp_path, monkeypatch):
    ids = [f"practice-{i}" for i in range(3)]
    _bench(monkeypatch, ids)
    trees = _saved_run(tmp_path, {i: SPLIT for i in ids})
    before = (trees.with_suffix(".jsonl")).read_text()
    assert main(["eval", "--bench", "practice", "--limit", "1", "--strategy", "mcts", "--out", str(trees.parent),
                 "--from-trees", str(trees)]) == 0
    assert trees.with_suffix(".jsonl").read_text() == before and len(read_rows(trees.with_suffix(".jsonl"))) == 3


def test_from_trees_keeps_a_majority_runs_vote_over_every_terminal(tmp_path, monkeypatch):
    _bench(monkeypatch, ["a"], gold="9")
    # five sampled trajectories: 5 twice with the higher values, 9 three times; majority counts all
    trees = _saved_run(tmp_path, {"a": [("5", 0.9, 0.0), ("5", 0.8, 0.0), ("9", 0.1, 0.0), ("9", 0.0, 0.0),
                                        ("9", 0.0, 0.0)]}, strategy="majority", gold="9")
    out = tmp_path / "out"
    assert main(["eval", "--bench", "practice", "--limit", "1", "--top-k-vote", "2", "--vote", "top-k",
                 "--out", str(out), "--from-trees", str(trees)]) == 0
    [row] = read_rows(out / f"{SOURCE}-rv-v2.jsonl")
    assert row["answer"] == "9" and row["correct"]


def test_from_trees_refuses_a_run_that_lacks_a_problem(tmp_path, monkeypatch, capsys):
    _bench(monkeypatch, "ab")
    trees = _saved_run(tmp_path, {"a": [("5", 0.5, 0.5)]})
    args = ["eval", "--bench", "practice", "--limit", "2", "--out", str(tmp_path / "out"), "--from-trees"]
    assert main(args + [str(trees)]) == 2
    assert "1 of 2 problems have no row and tree" in capsys.readouterr().err
    assert main(args + [str(tmp_path / "nowhere.trees")]) == 2
    assert "not a finished run's trees folder" in capsys.readouterr().err


def test_from_trees_refuses_another_benchmark_or_other_golds(tmp_path, monkeypatch, capsys):
    _bench(monkeypatch, ["a"], gold="7")
    trees = _saved_run(tmp_path, {"a": [("5", 0.5, 0.5)]})
    out = ["--out", str(tmp_path / "out"), "--from-trees", str(trees)]
    assert main(["eval", "--bench", "svamp", "--limit", "1", *out]) == 2
    assert "is a practice run; pass --bench practice" in capsys.readouterr().err
    assert main(["eval", "--bench", "practice", "--limit", "1", *out]) == 2
    assert "graded against '5', but the benchmark's answer to a is '7'" in capsys.readouterr().err


def test_recording_a_shorter_rerun_keeps_the_manifests_larger_row(tmp_path, capsys):
    from types import SimpleNamespace

    from rstar_app.eval import record_in_manifest
    (tmp_path / "manifest.json").write_text(json.dumps({"eval": {"run-a": {"problems": 200, "accuracy": 0.02}}}))
    a = SimpleNamespace(weights=str(tmp_path), sample_seed=1234)
    assert record_in_manifest({"run": "run-a", "problems": 120, "accuracy": 0.0333}, a) is None
    assert "keeps its run-a row over 200 problems" in capsys.readouterr().err
    assert record_in_manifest({"run": "run-a", "problems": 200, "accuracy": 0.025}, a) is not None
    assert record_in_manifest({"run": "run-b", "problems": 5, "accuracy": 0.2}, a) is not None
    rows = json.loads((tmp_path / "manifest.json").read_text())["eval"]
    assert rows["run-a"]["accuracy"] == 0.025 and rows["run-b"]["problems"] == 5


def test_resume_is_refused_only_when_the_rows_came_from_other_model_files(tmp_path):
    from rstar_app.eval import resume_clash
    summary = tmp_path / "gsm8k-r4-ppm-mcts-r8-k4-s0-ss1234.summary.json"
    assert resume_clash(summary, "aaaa") is None                     # a new run
    summary.write_text(json.dumps({"run": "x", "problems": 3}))
    assert resume_clash(summary, "aaaa") is None                     # written before fingerprints existed
    summary.write_text(json.dumps({"run": "x", "problems": 3, "models_sha256": "aaaa"}))
    assert resume_clash(summary, "aaaa") is None and resume_clash(summary, None) is None
    msg = resume_clash(summary, "bbbb")
    assert "gsm8k-r4-ppm-mcts-r8-k4-s0-ss1234.jsonl" in msg and "aaaa" in msg and "bbbb" in msg


def test_resume_is_refused_when_a_budget_the_name_does_not_spell_changed(tmp_path):
    from rstar_app.config import SearchConfig
    from rstar_app.eval import resume_clash, search_settings
    summary = tmp_path / "gsm8k-r3-ppm-mcts-r8-k4-s0-ss1234.summary.json"
    short = search_settings(SearchConfig(max_tokens=500))
    assert "max_tokens" in short and "rollouts" not in short  # the name already says the rollouts
    summary.write_text(json.dumps({"run": "x", "problems": 3, "models_sha256": "aaaa", "settings": short}))
    assert resume_clash(summary, "aaaa", search_settings(SearchConfig(max_tokens=500, seed=3))) is None
    msg = resume_clash(summary, "aaaa", search_settings(SearchConfig(max_tokens=5000)))
    assert "other settings" in msg and "'max_tokens': (500, 5000)" in msg
    summary.write_text(json.dumps({"run": "x", "problems": 3}))  # written before settings were recorded
    assert resume_clash(summary, "aaaa", search_settings(SearchConfig(max_tokens=5000))) is None


def test_engine_fingerprint_follows_the_bytes_of_its_model_files(tmp_path):
    from rstar_app.engine import Engine
    a, b = tmp_path / "policy.gguf", tmp_path / "head.npz"
    a.write_bytes(b"policy"), b.write_bytes(b"head")
    fp = Engine(policy=None, executor=None, model_files=(a, b)).fingerprint()
    assert len(fp) == 16 and fp == Engine(policy=None, executor=None, model_files=(a, b)).fingerprint()
    b.write_bytes(b"head, retrained")
    assert Engine(policy=None, executor=None, model_files=(a, b)).fingerprint() != fp
    assert Engine(policy=None, executor=None).fingerprint() is None   # built from objects: unknown


def test_engine_fingerprint_names_a_served_policy_and_the_prompt_mode_that_no_file_holds(tmp_path):
    from rstar_app.engine import Engine
    head = tmp_path / "head.npz"
    head.write_bytes(b"head")
    fp = lambda identity: Engine(policy=None, executor=None, model_files=(head,), identity=identity).fingerprint()
    assert len({fp(""), fp("few-shot prompt"), fp("policy m1 @ http://a/v1"), fp("policy m2 @ http://a/v1")}) == 4
    assert Engine(policy=None, executor=None, identity="policy m1 @ http://a/v1").fingerprint() is not None


def test_a_killed_runs_summary_says_it_is_partial():
    import argparse
    from rstar_app.eval import run_summary
    from rstar_app.config import SearchConfig
    a = argparse.Namespace(bench="gsm8k", limit=3)
    search = {"strategy": "mcts", "rollouts": 8, "candidates": 4, "greedy_first": False, "models_sha256": "ab"}
    row = {"correct": True, "tokens": 10, "seconds": 1.0}
    s = run_summary(a, SearchConfig(), "run", "top-k", "m", search, [row], 3)
    assert s["complete"] is False and s["problems"] == 1 and s["models_sha256"] == "ab"
    assert run_summary(a, SearchConfig(), "run", "top-k", "m", search, [row] * 3, 3)["complete"] is True


def test_run_name_carries_a_non_default_temperature_and_keeps_older_names():
    from types import SimpleNamespace
    from rstar_app.eval import run_name
    a = SimpleNamespace(tag="r3-ppm", top_k_vote=4, vote="learned", greedy_first=False, bench="dev",
                        strategy="best_of_n", rollouts=16, candidates=4, seed=0, sample_seed=7,
                        temperature=0.7, policy=None)
    assert run_name(a, "learned") == "dev-r3-ppm-best_of_n-r16-k4-vsel-s0-ss7"  # the default: as before
    a.temperature = 0.4
    assert run_name(a, "learned") == "dev-r3-ppm-best_of_n-r16-k4-vsel-t0.4-s0-ss7"
    a.strategy = "greedy"  # greedy decoding ignores the temperature: no suffix
    assert run_name(a) == "dev-r3-ppm-greedy-r16-k4-s0-ss7"
