"""`rstar-app solve` and `rstar-app eval` as a user runs them: real model, real sandbox, subprocess."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from rstar_app.weights import sha256

PROBLEM = "Sara has 4 pens and buys 2 more. How many pens does she have?"


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "rstar_app", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_solve_runs_a_real_search_and_dumps_the_tree_as_json():
    r = cli("solve", PROBLEM, "--rollouts", "3", "--candidates", "3", "--seed", "1", "--max-tokens", "900", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    trace = json.loads(r.stdout)
    nodes = trace["nodes"]
    assert trace["format"] == "rstar-app-trace" and len(nodes) > 3
    assert max(n["depth"] for n in nodes) >= 2            # more than one expanded level
    for key in ("text", "code", "output", "q", "n", "ppm", "status", "value"):
        assert key in nodes[1]
    assert trace["meta"]["stats"]["rollouts"] >= 1
    assert trace["meta"]["vote"] == "learned"  # the shipped weights' answer selector chose the answer


def test_solve_prints_solution_and_statistics_and_says_which_models():
    r = cli("solve", PROBLEM, "--rollouts", "2", "--candidates", "2", "--max-tokens", "400")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Models:" in r.stdout and "Search: mcts" in r.stdout and "tokens" in r.stdout
    assert "few-shot" in r.stdout or "round" in r.stdout


@pytest.mark.parametrize("bad", ["", "   ", "x" * 20000])
def test_solve_refuses_bad_problems_with_a_message(bad):
    r = cli("solve", bad, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_missing_model_file_is_a_message_not_a_traceback(tmp_path):
    r = cli("solve", PROBLEM, "--policy", str(tmp_path / "missing.gguf"), "--no-ppm", timeout=120)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_eval_writes_per_problem_rows_and_resumes(tmp_path, benchmark_data):
    args = ("eval", "--bench", "multiarith", "--strategy", "greedy", "--limit", "2", "--out", str(tmp_path),
            "--data", str(benchmark_data))
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    [jsonl] = tmp_path.glob("*.jsonl")
    rows = [json.loads(l) for l in jsonl.read_text().splitlines()]
    assert len(rows) == 2 and {"answer", "correct", "in_tree", "tokens", "seconds"} <= set(rows[0])
    assert all(r["in_tree"] == r["correct"] for r in rows)  # greedy: one path, its terminal is the answer
    assert "| run |" in r.stdout and (tmp_path / "accuracy_vs_tokens.html").exists()
    # a killed run left half a line: the rerun drops it and redoes only that problem
    jsonl.write_text(jsonl.read_text().splitlines()[0] + "\n" + '{"id": "multiarith-')
    r = cli(*args)
    assert r.returncode == 0
    assert r.stdout.count("[2/2]") == 1 and "[1/2]" not in r.stdout
    # the same run name over other model bytes (a retrained round): refused, rows left as they were
    [summary] = tmp_path.glob("*.summary.json")
    assert len(json.loads(summary.read_text())["models_sha256"]) == 16
    other = tmp_path / "weights-copy"
    shutil.copytree(ROOT / "weights", other)
    sel = next(other.glob("selector-*.json"))
    sel.write_text(json.dumps(json.loads(sel.read_text()), indent=3))  # same rule, other bytes, published
    m = json.loads((other / "manifest.json").read_text())                # with their sha256 (else the
    m["ppm"]["sha256"]["selector"] = sha256(sel)                          # engine refuses the file)
    (other / "manifest.json").write_text(json.dumps(m))
    before = jsonl.read_text()
    r = cli(*args, "--weights", str(other))
    assert r.returncode == 2 and "other model files" in r.stderr and "Traceback" not in r.stderr
    assert jsonl.read_text() == before


def test_eval_record_puts_the_summary_and_command_into_the_weights_manifest(tmp_path):
    import shutil
    wd = tmp_path / "weights"
    shutil.copytree(ROOT / "weights", wd)
    m = json.loads((wd / "manifest.json").read_text())
    (wd / "manifest.json").write_text(json.dumps({**m, "eval": {}}))
    r = cli("eval", "--bench", "practice", "--strategy", "greedy", "--limit", "1", "--out", str(tmp_path / "ev"),
            "--weights", str(wd), "--tag", "r1", "--record")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((wd / "manifest.json").read_text())
    [(name, row)] = m["eval"].items()
    assert name == "practice-r1-greedy-r8-k4-s0-ss1234" and row["problems"] == 1
    assert row["command"].startswith("rstar-app eval --bench practice") and 0 <= row["accuracy"] <= 1
    assert m["policy"] == json.loads((ROOT / "weights" / "manifest.json").read_text())["policy"]


def test_eval_save_trees_keeps_graded_trees_that_selection_rules_can_replay(tmp_path, benchmark_data):
    r = cli("eval", "--bench", "multiarith", "--strategy", "majority", "--rollouts", "2", "--limit", "1",
            "--vote", "top-k", "--top-k-vote", "2", "--max-tokens", "600", "--out", str(tmp_path),
            "--data", str(benchmark_data), "--save-trees")
    assert r.returncode == 0, r.stderr[-2000:]
    [trees] = tmp_path.glob("*-v2-*.trees")          # a non-default vote is part of the run name
    [path] = trees.glob("*.json")
    tree = json.loads(path.read_text())
    [row] = [json.loads(l) for l in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert tree["gold"] == row["gold"] and tree["answer"] == row["answer"] and len(tree["nodes"]) > 2
    from rstar_app.weights import load_weights
    selector = load_weights().selector  # the shipped answer selector, which the default --vote auto uses
    s = subprocess.run([sys.executable, "-m", "training.selection", str(trees), "--json", "--selector", str(selector)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert s.returncode == 0, s.stderr[-2000:]
    rules = json.loads(s.stdout)["rules"]
    assert rules["in tree (ceiling)"] == int(row["in_tree"]) and set(rules.values()) <= {0, 1}
    # the same search re-voted without a model: by PPM weight it agrees with the replay of that rule;
    # so does the default rule (the shipped selector); by the source's own rule it reproduces the
    # source's answer (majority counts every terminal)
    for vote, suffix in ((["--vote", "ppm-weighted"], "vppm"), ([], "vsel"), (["--vote", "top-k", "--top-k-vote", "2"], "v2")):
        r = cli("eval", "--bench", "multiarith", "--limit", "1", *vote, "--out", str(tmp_path / "rv"),
                "--data", str(benchmark_data), "--from-trees", str(trees))
        assert r.returncode == 0, r.stderr[-2000:]
        [rv] = [json.loads(l) for l in (tmp_path / "rv" / f"{trees.stem}-rv-{suffix}.jsonl").read_text().splitlines()]
        assert rv["tokens"] == row["tokens"] and rv["in_tree"] == row["in_tree"]
        if suffix == "vppm":
            assert rv["correct"] == rules["vote weighted by terminal PPM"]
        elif suffix == "vsel":
            assert rv["correct"] == rules[f"learned selector ({selector.name})"]
        else:
            assert rv["answer"] == row["answer"]
