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
    assert b.read_text().endswith('"sol')  # reading never truncates the writer's file
    table = compare.format_table(s, "r2", "r3")
    assert "| r2 | 2 / 3 | 1 / 3 | 20.0 | 1 |" in table


def test_compare_refuses_files_without_common_problems(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "x", "solved": True}])
    b = _write(tmp_path / "b.jsonl", [{"id": "y", "solved": True}])
    with pytest.raises(ValueError, match="share no problem ids"):
        compare.compare(a, b)
    with pytest.raises(ValueError, match="no such rollouts file"):
        compare.compare(a, tmp_path / "missing.jsonl")
