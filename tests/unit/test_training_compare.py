"""training.compare: two rounds' rollouts matched by problem id."""

import json

import pytest

from training import compare


def _write(path, rows, torn=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)
    return path


def test_compare_counts_only_shared_ids_and_who_solved_what(tmp_path):
    a = _write(tmp_path / "a.jsonl", [
        {"id": "p1", "solved": True, "correct": True, "seconds": 10},
        {"id": "p2", "solved": False, "correct": False, "seconds": 20},
        {"id": "p3", "solved": True, "correct": False, "seconds": 30},
        {"id": "only-a", "solved": True, "correct": True, "seconds": 99},
    ])
    b = _write(tmp_path / "b.jsonl", [
        {"id": "p2", "solved": True, "correct": True, "seconds": 4},
        {"id": "p1", "solved": False, "correct": False, "seconds": 2},
        {"id": "p3", "solved": True, "correct": True, "seconds": 6},
    ], torn='{"id": "p4", "sol')  # a round still being written: torn last row
    s = compare.compare(a, b)
    assert s["shared"] == 3
    assert s["a"] == {"solved": 2, "correct": 1, "mean_seconds": 20.0}
    assert s["b"] == {"solved": 2, "correct": 2, "mean_seconds": 4.0}
    assert (s["solved_only_a"], s["solved_only_b"]) == (1, 1)
    assert (s["correct_only_a"], s["correct_only_b"]) == (1, 2)
    assert b.read_text().endswith('"sol')  # reading never truncates the writer's file
    table = compare.format_table(s, "r2", "r3")
    assert "| r2 | 2 / 3 | 1 / 3 | 20.0 | 1 | 1 |" in table
    assert "| r3 | 2 / 3 | 2 / 3 | 4.0 | 1 | 2 |" in table


def test_compare_reads_eval_rows_in_tree_as_solved(tmp_path):
    greedy = _write(tmp_path / "greedy.jsonl", [
        {"id": f"q{i}", "correct": i == 0, "in_tree": i == 0, "seconds": 3} for i in range(4)])
    mcts = _write(tmp_path / "mcts.jsonl", [
        {"id": f"q{i}", "correct": i in (1, 2), "in_tree": i in (0, 1, 2), "seconds": 30} for i in range(3)])
    s = compare.compare(greedy, mcts)
    assert s["shared"] == 3
    assert s["b"] == {"solved": 3, "correct": 2, "mean_seconds": 30.0}
    assert (s["correct_only_a"], s["correct_only_b"]) == (1, 2)
    assert s["sign_test_p"] == 1.0  # 1 vs 2 discordant problems: no evidence either way


def test_sign_test_matches_the_exact_binomial_tails():
    assert compare.sign_test(0, 0) == 1.0
    assert compare.sign_test(3, 3) == 1.0
    assert compare.sign_test(0, 5) == 2 / 32  # both all-one-way tails of 5 fair flips
    assert compare.sign_test(9, 1) == compare.sign_test(1, 9) == 2 * 11 / 1024
    assert compare.sign_test(2, 10) < 0.05 < compare.sign_test(3, 9)


def test_compare_refuses_files_without_common_problems(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "x", "solved": True}])
    b = _write(tmp_path / "b.jsonl", [{"id": "y", "solved": True}])
    with pytest.raises(ValueError, match="share no problem ids"):
        compare.compare(a, b)
    with pytest.raises(ValueError, match="no such file"):
        compare.compare(a, tmp_path / "missing.jsonl")


def test_a_search_that_raised_is_no_attempt_until_its_rerun_row(tmp_path):
    err = {"error": "MemoryError: out of memory", "seconds": 1}
    a = _write(tmp_path / "a.jsonl", [{"id": "p1", "solved": True, "correct": True, "seconds": 10},
                                      {"id": "p2", "solved": True, "correct": True, "seconds": 10}])
    b = _write(tmp_path / "b.jsonl", [{"id": "p1", **err}, {"id": "p2", **err},
                                      {"id": "p2", "solved": True, "correct": True, "seconds": 5}])
    s = compare.compare(a, b)
    assert s["shared"] == 1 and s["b"]["correct"] == 1  # p1 not counted as a wrong answer of b
