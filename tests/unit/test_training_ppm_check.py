"""ppm_check's tabulation: per-kind accuracy with ties at half, on training.ppm's problem split."""

from training.ppm_check import check, pair_accuracy


def _score_by_length(prefix, texts):
    return [float(len(t)) for t in texts]


def test_pair_accuracy_counts_ties_half_and_groups_by_kind():
    ps = [{"prefix": "", "pos": "long one", "neg": "x", "kind": "step"},
          {"prefix": "", "pos": "y", "neg": "longer", "kind": "final"},
          {"prefix": "", "pos": "ab", "neg": "cd"}]  # tie, no kind -> step
    acc = pair_accuracy(ps, _score_by_length)
    assert acc["step"] == {"pairs": 2, "accuracy": 0.75}
    assert acc["final"] == {"pairs": 1, "accuracy": 0.0}
    assert acc["all"] == {"pairs": 3, "accuracy": 0.5}


def test_check_scores_held_out_problems_only_from_the_same_split():
    ps = [{"prefix": "", "pos": "aa", "neg": "a", "problem_id": f"p{i}"} for i in range(40)]
    extra = [dict(p, kind="synthetic") for p in ps]
    out = check(ps, extra, _score_by_length, eval_frac=0.25, seed=0, train_sample=100)
    n_ev = out["held_out_mcts"]["all"]["pairs"]
    assert 0 < n_ev < 40 and out["held_out_problems"] == n_ev
    assert out["held_out_extra"]["synthetic"]["pairs"] == n_ev  # same problems held out
    assert out["train_mcts_sample"]["all"]["pairs"] == 40 - n_ev
