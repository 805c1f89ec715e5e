"""The per-run summary that eval prints and records in the manifest."""

from rstar_app.eval import subset, summarize


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
