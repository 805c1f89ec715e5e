"""rstar_app.selector: the learned answer rule's features, its choice, and Tree.vote's rules around it."""

import math

import pytest

from rstar_app.selector import FEATURES, Selector, answer_features, numbers_in, path_logprob
from rstar_app.tree import Tree

PROBLEM = "Ann has 1,200 stamps and buys 30 more at 2.5 dollars each. How many stamps now?"


def _tree(terminals: list[tuple[str, list[str], float]]) -> Tree:
    """terminals: (answer, the code of each step on its path, terminal PPM score); value 0."""
    t = Tree(PROBLEM, "prompt")
    for ans, codes, ppm in terminals:
        nd = t.root
        for code in codes:
            nd = t.add(nd, kind="code", status="ok", code=code, ppm=0.0)
        t.add(nd, kind="answer", status="terminal", answer=ans, ppm=ppm)
    return t


# 1230 twice (one path uses all three numbers), 1200.5 once with the best PPM score
TREE = [("1230", ["a = 1200 + 30", "print(a)"], 0.2), ("1230", ["print(1200 + 30 * 2.5)"], -0.4),
        ("1200.5", ["print(1200.5)"], 0.9)]


def test_numbers_in_reads_thousands_separators_and_decimals():
    assert numbers_in(PROBLEM) == {1200.0, 30.0, 2.5}
    assert numbers_in("x = 3 * (4 - 1)") == {3.0, 4.0, 1.0}
    assert numbers_in("no digits") == set()


def test_answer_features_of_each_answer_group():
    groups = answer_features(_tree(TREE))
    (g1, f1), (g2, f2) = groups  # the 0.9-PPM answer first: its group holds the best-scored terminal
    assert [nd.answer for nd in g1] == ["1200.5"] and [nd.answer for nd in g2] == ["1230", "1230"]
    assert set(f1) == set(f2) == set(FEATURES)
    assert f2["maxp"] == 0.2 and f2["meanp"] == pytest.approx(-0.1) and f2["sump"] == pytest.approx(0.6 + 0.3)
    assert f2["logc"] == math.log(2) and f2["share"] == pytest.approx(2 / 3) and f2["isint"] == 1.0
    # uses 1200 and 30 (2 of 3) on one path, all three on the other
    assert f2["cov"] == 1.0 and f2["covmean"] == pytest.approx((2 / 3 + 1) / 2) and f2["full"] == 1.0
    assert f1["isint"] == 0.0 and f1["cov"] == 0.0 and f1["full"] == 0.0 and f1["logc"] == 0.0


def test_the_weights_decide_the_answer_and_the_path():
    t = _tree(TREE)
    assert Selector({"maxp": 1.0}).choose(t)[0].answer == "1200.5"
    assert t.vote(4, "learned", Selector({"logc": 1.0, "cov": 0.5})) == "1230"
    assert t.meta["vote"] == "learned"
    # the path ends at the chosen answer's best-PPM terminal (0.2, the first 1230 path)
    assert [t.nodes[i].code for i in t.best_path[1:-1]] == ["a = 1200 + 30", "print(a)"]


def test_auto_is_the_top_k_vote_without_a_selector_and_learned_needs_one():
    t = _tree(TREE)
    for nd in t.terminals():  # values: the lone 1200.5 ranks first, so a top-1 vote says 1200.5
        nd.q, nd.n = (1.0 if nd.answer == "1200.5" else 0.0), 1
    assert t.vote(1, "auto") == t.vote(1, "top-k") == "1200.5" and t.meta["vote"] == "top-k"
    assert t.vote(1, "auto", Selector({"logc": 1.0})) == "1230" and t.meta["vote"] == "learned"
    with pytest.raises(ValueError, match="needs a selector"):
        t.vote(1, "learned")
    assert Tree("p", "prompt").vote(4, "learned", Selector({"logc": 1.0})) is None


def test_selector_files_round_trip_and_bad_ones_say_why(tmp_path):
    s = Selector({"logc": 1.5, "isint": -0.25}, name="sel", fit={"lambda": 0.01})
    s.save(tmp_path / "s.json")
    back = Selector.load(tmp_path / "s.json")
    assert back == s and back.fit == {"lambda": 0.01}
    (tmp_path / "bad.json").write_text('{"weights": {"logc": 1}}')
    with pytest.raises(ValueError, match="not an rstar-app-selector file"):
        Selector.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a readable selector file"):
        Selector.load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text('{"format": "rstar-app-selector", "weights": {"logc": "many"}}')
    with pytest.raises(ValueError, match="junk.json: bad selector weights"):
        Selector.load(tmp_path / "junk.json")
    (tmp_path / "unknown.json").write_text('{"format": "rstar-app-selector", "weights": {"votes": 1}}')
    with pytest.raises(ValueError, match="unknown.json: bad selector weights .unknown selector features"):
        Selector.load(tmp_path / "unknown.json")
    with pytest.raises(ValueError, match="unknown selector features"):
        Selector({"votes": 1.0})
    with pytest.raises(ValueError, match="finite"):
        Selector({"logc": float("nan")})


def test_a_broken_shipped_selector_is_a_weights_error_before_any_model_loads(tmp_path):
    import json

    from rstar_app.engine import Engine
    from rstar_app.weights import WeightsError
    (tmp_path / "head.npz").write_bytes(b"not loaded")
    (tmp_path / "selector-r3.json").write_text("{truncated")
    (tmp_path / "manifest.json").write_text(json.dumps({"round": 3, "ppm": {"head": "head.npz",
                                                                             "selector": "selector-r3.json"}}))
    with pytest.raises(WeightsError, match="selector-r3.json: not a readable selector file.*git checkout weights/"):
        Engine.load(weights_dir=tmp_path)


def _lp_tree(paths: list[tuple[str, list[tuple[float | None, int]]]]) -> Tree:
    """paths: (answer, [(step logprob, step tokens) for each step, the answer step last])."""
    t = Tree(PROBLEM, "prompt")
    for ans, steps in paths:
        nd = t.root
        for i, (lp, n) in enumerate(steps):
            last = i == len(steps) - 1
            nd = t.add(nd, kind="answer" if last else "code", status="terminal" if last else "ok",
                       answer=ans if last else None, code="" if last else "print(1)", ppm=0.0, logprob=lp, tokens=n)
    return t


def test_path_logprob_is_the_mean_per_generated_token_of_the_whole_path():
    t = _lp_tree([("7", [(-2.0, 10), (-1.0, 30)]), ("8", [(-2.0, 10), (None, 5)])])
    a, b = t.terminals()
    assert path_logprob(t, a) == pytest.approx(-3.0 / 40)
    assert path_logprob(t, b) is None  # a step without one: unknown, not a guess


def test_logprob_features_best_and_mean_per_answer_and_the_least_sure_for_unknown_paths():
    t = _lp_tree([("7", [(-4.0, 10), (-1.0, 10)]), ("7", [(-1.0, 10), (-1.0, 10)]), ("9", [(-0.5, 10), (-0.5, 10)]),
                  ("11", [(-0.1, 10), (None, 10)])])
    f = {g[0].answer: feats for g, feats in answer_features(t)}
    known = [-0.25, -0.1, -0.05]  # per-token means of the three paths that have one
    mu = sum(known) / 3
    sd = math.sqrt(sum((x - mu) ** 2 for x in known) / 3)
    z = {x: (x - mu) / sd for x in known}  # in standard deviations from the tree's mean
    assert f["7"]["lpmax"] == pytest.approx(z[-0.1]) and f["7"]["lpmean"] == pytest.approx((z[-0.25] + z[-0.1]) / 2)
    assert f["9"]["lpmax"] == f["9"]["lpmean"] == pytest.approx(z[-0.05])
    assert f["11"]["lpmax"] == pytest.approx(z[-0.25])  # unknown: the tree's least sure path
    assert Selector({"lpmax": 1.0}).choose(t)[0].answer == "9"


def test_trees_without_logprobs_give_every_answer_the_same_logprob_features():
    feats = [f for _, f in answer_features(_tree(TREE))]
    assert all(f["lpmax"] == f["lpmean"] == 0.0 for f in feats)
    # so a selector weighing them answers these trees as one without them
    t = _tree(TREE)
    assert Selector({"maxp": 1.0, "lpmax": 5.0, "lpmean": -3.0}).choose(t)[0].answer == "1200.5"
