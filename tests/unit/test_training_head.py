"""training.head: the value-head refit on within-tree terminal pairs (numpy, no model)."""

import json

import numpy as np
import pytest

from rstar_app.tree import Tree
from training.head import (FeatureCache, cross_validate, fit, key, pair_arrays, terminal_groups, transfer_scores,
                           tree_dir_groups)


def _rollout_row(pid: str, gold: str, answers: list[str]) -> dict:
    t = Tree("p", f"prompt {pid}\n", gold=gold)
    for i, ans in enumerate(answers):
        code = t.add(t.root, kind="final_code", status="ok", text=f"# try {i}\nprint({ans})",
                     code=f"print({ans})", output=ans)
        t.add(code, kind="answer", status="terminal", text=f"\\boxed{{{ans}}}", answer=ans)
    return {"id": pid, "gold": gold, "trace": t.to_json(events=False)}


def test_terminal_groups_keep_only_trees_with_right_and_wrong_terminals(tmp_path):
    f = tmp_path / "rollouts.jsonl"
    rows = [_rollout_row("a", "5", ["5", "7", "5.0"]), _rollout_row("b", "5", ["5"]), _rollout_row("c", "2", ["3", "4"])]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = terminal_groups([str(f)])
    assert [g["problem"] for g in groups] == ["a"]
    assert groups[0]["right"] == [True, False, True]
    assert groups[0]["group"] == [0, 1, 0]  # "5" and "5.0" are one answer
    # the whole solution, as the engine's PPM reads it: prompt, code step with output, answer
    for text, ans in zip(groups[0]["texts"], ["5", "7", "5.0"]):
        assert text.startswith("prompt a\n") and f"print({ans})" in text and f"<answer>\\boxed{{{ans}}}" in text


def test_terminal_groups_skip_failed_searches_and_leave_a_live_files_last_line_alone(tmp_path):
    f = tmp_path / "rollouts.jsonl"
    rows = [{"id": "x", "question": "q", "gold": "1", "error": "MemoryError: out of memory", "seconds": 1.0},
            _rollout_row("a", "5", ["5", "7"])]
    torn = b'{"id": "b", "gold": "5", "tra'  # a rollout run still appending
    f.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode() + torn)
    assert [g["problem"] for g in terminal_groups([str(f)])] == ["a"]
    assert f.read_bytes().endswith(torn)


def _memory_cache() -> FeatureCache:
    """A FeatureCache that never touches disk."""
    cache = FeatureCache.__new__(FeatureCache)
    cache.rows, cache.new, cache.every, cache.path = {}, 0, 10**9, None
    return cache


def _synthetic(n_trees: int, d: int, rng):
    """Trees whose right terminals sit along a hidden direction u; texts are their own keys."""
    u = rng.normal(size=d)
    groups, cache = [], _memory_cache()
    for i in range(n_trees):
        right = [True, False, False, True, False]
        texts = [f"t{i}-{j}" for j in range(len(right))]
        feats = rng.normal(size=(len(right), d)) + np.array([[1.5 if r else -1.5] for r in right]) * u / np.linalg.norm(u)
        for t, v in zip(texts, feats):
            cache.rows[key(t)] = v
        groups.append({"problem": f"p{i}", "prompt": "", "texts": texts, "right": right,
                       "group": [0, 1, 2, 0, 3]})
    return groups, cache


def test_pair_weights_give_every_tree_the_same_total():
    groups, cache = _synthetic(3, 4, np.random.default_rng(0))
    groups[0] = dict(groups[0], right=[True, False, True, True, True])  # 4 x 1 pairs vs 2 x 3
    Hp, Hn, wt, prob, term = pair_arrays(groups, [], cache, step_weight=1.0)
    assert len(Hp) == 4 + 6 + 6 and term.all()
    for p in ("p0", "p1", "p2"):
        assert wt[prob == p].sum() == pytest.approx(1.0)


def test_fit_learns_a_separating_head_and_strong_l2_keeps_the_start():
    rng = np.random.default_rng(1)
    groups, cache = _synthetic(40, 8, rng)
    Hp, Hn, wt, _, _ = pair_arrays(groups, [], cache, step_weight=1.0)
    w0, b0 = np.zeros(8), 0.0
    w, b = fit(Hp, Hn, wt, w0, b0, lam=1e-3)
    acc = float(np.mean(np.tanh(Hp @ w + b) > np.tanh(Hn @ w + b)))
    assert acc > 0.9  # the start (all zeros) ties every pair: 0.5
    w_far, _ = fit(Hp, Hn, wt, w0 + 0.01, b0, lam=1e4)
    assert np.abs(w_far - 0.01).max() < 0.005


def test_cross_validation_reports_the_old_head_and_every_lambda_on_held_out_trees():
    groups, cache = _synthetic(30, 6, np.random.default_rng(2))
    cv = cross_validate(groups, [], cache, np.zeros(6), 0.0, folds=3, seed=0, step_weight=1.0)
    assert cv["old"]["terminal_pairs"] == 0.5  # a zero head ties everything
    assert all(s["trees"] == 30 for s in cv.values())
    # a zero head makes every terminal weigh 1/2: the vote picks the biggest group, the right one (2 of 5)
    assert cv["old"]["vote_right"] == 30
    assert max(s["terminal_pairs"] for k, s in cv.items() if k != "old") > 0.85


def test_feature_cache_saves_and_resumes(tmp_path):
    c = FeatureCache(tmp_path / "f.npz", every=2)
    c.put(["a", "b"], np.ones((2, 3)))
    assert (tmp_path / "f.npz").is_file()
    c.put(["c"], np.zeros((1, 3)))
    c.save()
    again = FeatureCache(tmp_path / "f.npz")
    assert again.missing(["a", "c", "d"]) == ["d"]
    assert again["a"].tolist() == [1.0, 1.0, 1.0]


def test_feature_cache_of_another_model_is_refused_not_mixed_in(tmp_path):
    c = FeatureCache(tmp_path / "f.npz", model="base 1, adapter r3")
    c.put(["a"], np.ones((1, 3)))
    c.save()
    assert FeatureCache(tmp_path / "f.npz", model="base 1, adapter r3").missing(["a"]) == []
    with pytest.raises(SystemExit, match="another model"):
        FeatureCache(tmp_path / "f.npz", model="base 1, adapter r4")
    assert FeatureCache(tmp_path / "f.npz").missing(["a"]) == []  # reading only: any cache


def test_tree_dir_groups_read_eval_trees_and_count_the_all_right_ones(tmp_path):
    d = tmp_path / "run.trees"
    d.mkdir()
    for pid, gold, answers in [("a", "5", ["5", "7"]), ("b", "5", ["5", "5.0"]), ("c", "2", ["3"]), ("d", "4", [])]:
        (d / f"{pid}.json").write_text(json.dumps(_rollout_row(pid, gold, answers)["trace"]))
    groups, all_right = tree_dir_groups([str(d)])
    assert [g["right"] for g in groups] == [[True, False]] and groups[0]["problem"].endswith(":a")
    assert all_right == 1  # b; c is all wrong, d has no terminal


def test_tree_dir_groups_refuse_a_directory_without_graded_trees(tmp_path):
    (tmp_path / "empty.trees").mkdir()
    for d in (tmp_path / "empty.trees", tmp_path / "typo.trees"):  # a mistyped path must not read as "0 trees"
        with pytest.raises(SystemExit, match="no search tree with a gold answer"):
            tree_dir_groups([str(d)])


def test_transfer_scores_a_head_on_unseen_trees():
    groups, cache = _synthetic(20, 6, np.random.default_rng(3))
    zero = transfer_scores(groups, cache, np.zeros(6), 0.0)
    assert zero["terminal_pairs_per_tree"] == 0.5 and zero["trees"] == 20
    Hp, Hn, wt, _, _ = pair_arrays(groups, [], cache, step_weight=1.0)
    w, b = fit(Hp, Hn, wt, np.zeros(6), 0.0, lam=1e-3)
    fitted = transfer_scores(groups, cache, w, b)
    flipped = transfer_scores(groups, cache, -w, -b)  # a head that ranks backwards
    assert fitted["terminal_pairs_per_tree"] > 0.85 and flipped["terminal_pairs_per_tree"] < 0.15
    assert fitted["top1_right"] >= 18 and flipped["top1_right"] <= 2


def test_transfer_scores_pool_pairs_like_the_selection_replay():
    # tree A: one right beats one wrong; tree B: one right loses to three wrong.
    # Per tree that is (1 + 0) / 2 = 0.5; pooled over the 4 pairs, 1 / 4 (training.selection's figure).
    cache = _memory_cache()
    feats = {"a1": 1.0, "a2": 0.0, "b1": 0.0, "b2": 1.0, "b3": 0.5, "b4": 0.2}
    for t, x in feats.items():
        cache.rows[key(t)] = np.array([x], np.float32)
    groups = [{"problem": "A", "prompt": "", "texts": ["a1", "a2"], "right": [True, False], "group": [0, 1]},
              {"problem": "B", "prompt": "", "texts": ["b1", "b2", "b3", "b4"], "right": [True, False, False, False],
               "group": [0, 1, 2, 3]}]
    s = transfer_scores(groups, cache, np.array([1.0]), 0.0)
    assert s["terminal_pairs_per_tree"] == 0.5 and s["terminal_pairs_pooled"] == 0.25 and s["pairs"] == 4
    assert s["top1_right"] == 1 and s["vote_right"] == 1
