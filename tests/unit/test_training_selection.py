"""training.selection: answer-selection rules compared on saved trees, graded only afterwards."""

import json

from rstar_app.tree import Tree
from training.selection import (budget_curve, compare, filter_ids, load_trees, main, ppm_ranking, random_terminal,
                                ranking_intervals)


def _tree(gold: str, terminals: list[tuple[str, float, float]]) -> Tree:
    """terminals: (answer, value, terminal PPM score)."""
    t = Tree("p", "prompt", gold=gold)
    for ans, value, ppm in terminals:
        step = t.add(t.root, kind="code", status="ok", ppm=ppm)
        nd = t.add(step, kind="answer", status="terminal", answer=ans, ppm=ppm)
        nd.q, nd.n = value, 1
    return t


def test_rules_disagree_where_they_should_and_in_tree_is_the_ceiling():
    # one high-value wrong terminal against three lower-value right ones: top-1 picks the wrong one,
    # a vote over all terminals picks the right one
    a = _tree("5", [("9", 0.9, 0.9), ("5", 0.2, 0.1), ("5.0", 0.1, 0.0), ("5", 0.0, -0.1)])
    # the right answer is in the tree but every rule's evidence points away from it
    b = _tree("3", [("4", 0.8, 0.8), ("4", 0.7, 0.7), ("3", -0.5, -0.9)])
    # nothing right anywhere
    c = _tree("2", [("8", 0.5, 0.5)])
    got = dict(compare([a, b, c]))
    assert got["top-1 vote by value"] == 0
    assert got["vote over all terminals"] == 1
    assert got["best terminal PPM"] == 0
    assert got["in tree (ceiling)"] == 2
    assert all(k <= got["in tree (ceiling)"] for k in got.values())
    assert random_terminal([a, b, c]) == 3 / 4 + 1 / 3 + 0
    # a: right 0.1 / 0.0 / -0.1 against wrong 0.9 -> 0 of 3; b: right -0.9 against 0.8, 0.7 -> 0 of 2
    assert ppm_ranking([a, b, c]) == (0.0, 5)
    tie = _tree("1", [("1", 0.0, 0.3), ("7", 0.0, 0.3), ("8", 0.0, -0.2)])
    assert ppm_ranking([tie]) == (0.75, 2)


def test_budget_curve_scores_each_tree_cut_back_to_its_first_rollouts(tmp_path, capsys):
    # rollout 1 ends at a wrong terminal, rollouts 2 and 3 add two right ones: one rollout answers
    # wrong, three answer right by a plain vote
    t = _tree("5", [("9", 0.0, 0.9), ("5", 0.0, 0.1), ("5", 0.0, 0.2)])
    t.meta["rollout_nodes"] = [3, 5, 7]
    t.nodes[4].tokens = t.nodes[3].tokens = 10
    curve = budget_curve([t], [1, 3])
    assert curve["budgets"] == [1, 3] and curve["tokens"] == [0, 20] and curve["tokens_counted"] == "in nodes"
    assert curve["rules"]["vote over all terminals (count only)"] == [0, 1]
    assert curve["rules"]["best terminal PPM"] == [0, 0]
    assert curve["rules"]["in tree (ceiling)"] == [0, 1]
    d = tmp_path / "run.trees"
    d.mkdir()
    (d / "a.json").write_text(json.dumps(t.to_json()))
    assert main([str(d), "--json", "--budgets", "3,1"]) == 0
    assert json.loads(capsys.readouterr().out)["budget_curve"]["rules"]["in tree (ceiling)"] == [0, 1]
    assert main([str(d), "--budgets", "1,3"]) == 0 and "| R = 1 | R = 3 |" in capsys.readouterr().out
    t.meta["rollout_tokens"] = [40, 70, 90]  # what the search generated, duplicates included
    assert budget_curve([t], [1, 3])["tokens"] == [40, 90]
    del t.meta["rollout_nodes"]
    (d / "a.json").write_text(json.dumps(t.to_json()))
    assert main([str(d), "--budgets", "2"]) == 2 and "does not record its rollouts" in capsys.readouterr().err


def test_cli_reads_saved_trees_and_skips_ungraded(tmp_path, capsys):
    d = tmp_path / "run.trees"
    d.mkdir()
    (d / "a.json").write_text(json.dumps(_tree("5", [("5", 0.5, 0.5)]).to_json()))
    ungraded = _tree("5", [("5", 0.5, 0.5)])
    ungraded.gold = None
    (d / "b.json").write_text(json.dumps(ungraded.to_json()))
    assert len(load_trees([str(d)])) == 2
    assert main([str(d), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == 1 and out["rules"]["top-4 vote by value"] == 1
    assert out["random_terminal"] == 1.0 and out["ppm_ranking"] is None  # no wrong terminal to rank
    from rstar_app.selector import Selector
    Selector({"maxp": 1.0}).save(tmp_path / "sel.json")
    assert main([str(d), "--json", "--selector", str(tmp_path / "sel.json")]) == 0
    assert json.loads(capsys.readouterr().out)["rules"]["learned selector (sel.json)"] == 1
    Selector({"maxp": 1.0}, name="").save(tmp_path / "unnamed.json")
    assert Selector.load(tmp_path / "unnamed.json").name == "unnamed.json"
    assert main([str(d), "--selector", str(tmp_path / "missing.json")]) == 2
    assert "not a readable selector file" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 1
    (d / "c.json").write_text("{not json")
    assert main([str(d)]) == 2 and "c.json" in capsys.readouterr().err


def test_cli_reads_a_training_rollouts_file_graded_by_each_rows_gold_and_leaves_a_torn_line(tmp_path, capsys):
    # rollout rows: the trace's own gold is not trusted, the row's is; rows without a trace are skipped;
    # a live run's half-written last line is neither read nor cut off
    right, wrong = _tree(None, [("5", 0.5, 0.5), ("6", 0.4, 0.1)]), _tree("9", [("7", 0.5, 0.5)])
    rows = [{"id": "a", "gold": "5", "trace": right.to_json()}, {"id": "b", "gold": "7", "trace": wrong.to_json()},
            {"id": "c", "gold": "1", "error": "boom"}]
    f = tmp_path / "rollouts.jsonl"
    torn = '{"id": "d", "gold": "2", "tra'
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)
    trees = load_trees([str(f)])
    assert [t.gold for t in trees] == ["5", "7"]
    assert main([str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == 2 and out["rules"]["in tree (ceiling)"] == 2 and out["ppm_ranking"] == 1.0
    assert f.read_text().endswith(torn)
    ids = tmp_path / "unseen.jsonl"
    ids.write_text(json.dumps({"id": "b", "question": "q", "gold": "7"}) + "\n")
    assert [t.meta["id"] for t in filter_ids(trees, only=str(ids))] == ["b"]
    assert [t.meta["id"] for t in filter_ids(trees, drop=str(ids))] == ["a"]
    assert main([str(f), "--json", "--not-ids", str(ids)]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == 1


def test_ranking_intervals_resample_whole_trees_and_pair_the_difference():
    # one tree where the PPM is always right (3 pairs), one where it is always wrong (1 pair)
    good = _tree("5", [("5", 0.0, 0.9), ("5", 0.0, 0.8), ("5", 0.0, 0.7), ("6", 0.0, 0.1)])
    bad = _tree("5", [("5", 0.0, 0.1), ("6", 0.0, 0.9)])
    ppm = lambda t, nd: nd.ppm  # noqa: E731
    same = lambda t, nd: nd.ppm * 2  # noqa: E731 (the same order: the difference is exactly 0)
    ci = ranking_intervals([good, bad, _tree("1", [("2", 0.0, 0.0)])], {"ppm": ppm, "twice": same}, n_boot=500)
    lo, hi = ci["ppm"]
    assert lo == 0.0 and hi == 1.0  # a resample can hold only the bad tree, or only the good one
    assert ci["twice - ppm"] == (0.0, 0.0)
    assert ranking_intervals([good] * 5, {"ppm": ppm}) == {"ppm": (1.0, 1.0)}
    assert ranking_intervals([_tree("1", [("2", 0.0, 0.0)])], {"ppm": ppm}) == {}  # no pair anywhere
