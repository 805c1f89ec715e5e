"""Independent samples (majority, best-of-N) drawn in waves: one policy call per step for all live
samples of a wave, and a tree identical to sampling one trajectory after another (scripted policy;
the real batched llama.cpp call is tested in tests/integration/test_llama_backend.py)."""

import json

import pytest

from fakes import InProcessExecutor, ScriptedPolicy, TablePPM, answer, code, final
from rstar_app.config import SearchConfig
from rstar_app.search import run
from rstar_app.tree import DEAD, TERMINAL, Tree

PROBLEM = "Ann has 2 apples and gets 3 more. How many?"
PPM = {"a + 3": 0.8, "a * 3": -0.4, "start": 0.1}


def script():
    return [
        [code("# Step 1: start\na = 2\n"), code("# Step 1: broken\na = 2 +\n"), code("# Step 1: other\na = 2.0\n")],
        [final("# Now print\nprint(a + 3)\n"), final("# wrong\nprint(a * 3)\n"), code("# more\nb = a\n")],
        [answer(5), answer(6), final("# late\nprint(a + 3)\n")],
        [answer(5), answer(6)],
    ]


class BatchedPolicy(ScriptedPolicy):
    """The scripted policy with a generate_many that records each batch: (rows, temperatures)."""

    def __init__(self, by_depth, max_candidates):
        super().__init__(by_depth)
        self.max_candidates, self.batches = max_candidates, []

    def generate_many(self, prefixes, *, temperatures, seeds, max_tokens, top_p, top_k, stop):
        assert len(prefixes) <= self.max_candidates
        self.batches.append((len(prefixes), list(temperatures)))
        return [self.generate(p, n=1, max_tokens=max_tokens, temperature=t, top_p=top_p, top_k=top_k,
                              seed=s, stop=stop)[0] for p, t, s in zip(prefixes, temperatures, seeds)]


def search(policy, strategy="best_of_n", rollouts=7, **kw):
    return run(PROBLEM, policy=policy, executor=InProcessExecutor(),
               ppm=TablePPM(PPM) if strategy == "best_of_n" else None,
               config=SearchConfig(strategy=strategy, rollouts=rollouts, seed=4, **kw))


def shape(tree):
    return [n.to_dict() for n in tree.nodes]


@pytest.mark.parametrize("strategy", ["best_of_n", "majority"])
def test_waves_grow_the_same_tree_as_one_sample_after_another(strategy):
    batched = BatchedPolicy(script(), max_candidates=3)
    one, waves = search(ScriptedPolicy(script()), strategy), search(batched, strategy)
    assert shape(waves) == shape(one) and waves.answer == one.answer
    assert waves.meta["rollout_nodes"] == one.meta["rollout_nodes"]
    assert waves.meta["rollout_tokens"] == one.meta["rollout_tokens"]
    # 7 samples in waves of 3, 3, 1; a wave's first call carries every sample, later ones the live
    rows = [n for n, _ in batched.batches]
    assert rows[0] == 3 and max(rows) == 3 and 1 in rows
    assert sum(rows) == len(one.nodes) - 1 == len(batched.calls)  # one row per node made
    assert waves.meta["stats"]["rollouts"] == 7 and len({n.parent for n in waves.nodes[1:]}) > 1


def test_each_sample_is_contiguous_so_a_prefix_is_the_shorter_search():
    long = search(BatchedPolicy(script(), max_candidates=4), rollouts=8)
    for r in (1, 3, 4, 6):
        short = search(BatchedPolicy(script(), max_candidates=4), rollouts=r)
        cut = long.prefix(r)
        # every node but the root (its visits count the later samples too) is the same
        assert shape(cut)[1:] == shape(short)[1:], r
        assert cut.meta["rollout_tokens"] == short.meta["rollout_tokens"], r
    ends = long.meta["rollout_nodes"]
    for a, b in zip([1] + ends, ends):  # the nodes of rollout i hang off the root as one path
        path = long.nodes[a:b]
        assert path[0].parent == 0 and all(n.parent == path[i].id for i, n in enumerate(path[1:]))
    assert long.meta["rollout_tokens"][-1] == long.meta["stats"]["tokens"]
    assert long.root.n == sum(1 for n in long.terminals())  # each terminal's reward reached the root


def test_best_of_n_backs_up_terminal_rewards_and_majority_does_not():
    bon = search(BatchedPolicy(script(), 4))
    maj = search(BatchedPolicy(script(), 4), "majority")
    assert bon.terminals() and all(n.value == n.ppm for n in bon.terminals())
    assert bon.root.q == pytest.approx(sum(n.ppm for n in bon.terminals()))
    assert all(n.n == 0 for n in maj.terminals()) and maj.root.n == 0
    assert maj.answer == max(maj.answer_counts().items(), key=lambda kv: kv[1])[0]


def test_greedy_first_makes_sample_zero_greedy_at_every_step():
    pol = BatchedPolicy(script(), max_candidates=4)
    search(pol, rollouts=6, greedy_first=True, temperature=0.7)
    assert pol.batches[0][1] == [0.0, 0.7, 0.7, 0.7]
    zeros = [t for _, ts in pol.batches for t in ts if t == 0.0]
    assert 1 <= len(zeros) <= 4  # sample 0's steps only: first in the first wave's calls, at most 4 deep
    assert all(ts[1:].count(0.0) == 0 for _, ts in pol.batches)
    pol = BatchedPolicy(script(), max_candidates=4)
    search(pol, rollouts=6)
    assert {t for _, ts in pol.batches for t in ts} == {0.7}


def test_a_cancel_in_the_middle_of_a_wave_keeps_its_unfinished_samples():
    pol = BatchedPolicy(script(), max_candidates=4)
    tree = run(PROBLEM, policy=pol, executor=InProcessExecutor(), ppm=TablePPM(PPM),
               config=SearchConfig(strategy="best_of_n", rollouts=8, seed=4),
               should_stop=lambda: len(pol.batches) >= 6)  # inside the second wave
    assert tree.meta["stopped"] == "cancelled" and tree.meta["stats"]["rollouts"] == 4
    assert len(pol.batches) == 6
    # every step generated before the cancel is in the tree; of the last call's rows, the cancel
    # lands after the first is added (as between the siblings of an expansion)
    assert len(pol.calls) - pol.batches[-1][0] < len(tree.nodes) - 1 <= len(pol.calls)
    assert len(tree.nodes) > tree.meta["rollout_nodes"][-1]  # the cut-off wave's steps too
    back = Tree.from_json(json.dumps(tree.to_json()))
    assert shape(back) == shape(tree) and back.answer == tree.answer is not None


def test_a_prompt_that_fills_the_context_kills_the_root_once():
    pol = BatchedPolicy(script(), max_candidates=4)
    pol.n_ctx = 20
    tree = search(pol, rollouts=8)
    assert pol.calls == [] and tree.answer is None and tree.root.status == DEAD
    assert tree.root.n == 1 and tree.root.q == -1.0 and tree.root.reason.startswith("context window full")


def test_dead_and_terminal_samples_stop_while_the_others_go_on():
    pol = BatchedPolicy([[code("# Step 1: broken\na = 2 +\n"), code("# Step 1: start\na = 2\n")],
                         [final("# Now print\nprint(a + 3)\n")], [answer(5)]], max_candidates=4)
    tree = search(pol, rollouts=4, max_code_errors=0)
    sizes = [n for n, _ in pol.batches]
    assert sizes[0] == 4 and sizes[1] < 4 and sizes == sorted(sizes, reverse=True)
    assert any(n.status == DEAD for n in tree.nodes) and any(n.status == TERMINAL for n in tree.nodes)
    assert tree.answer == "5"


def test_rows_are_packed_into_batches_that_fit_the_context():
    from types import SimpleNamespace

    from rstar_app.models.llama_cpp import LlamaPolicy
    policy = SimpleNamespace(max_candidates=3, cx=SimpleNamespace(n_ctx=1000))
    prompt = list(range(100))
    rows = [prompt + [1000 + i] * own for i, own in enumerate([10, 10, 10, 10, 300, 300, 50])]
    # cells = 2 x 100 shared + (own + 64 new) per row, at most 3 rows: [3, 4, 5] needs 200 + 74 + 2 * 364
    policy.cx.n_ctx = 1002
    assert LlamaPolicy._groups(policy, rows, 64) == [[0, 1, 2], [3, 4, 5], [6]]
    policy.cx.n_ctx = 1001  # now [3, 4, 5] does not fit and row 5 starts a batch: 200 + 364 + 114 = 678
    assert LlamaPolicy._groups(policy, rows, 64) == [[0, 1, 2], [3, 4], [5, 6]]
    policy.cx.n_ctx = 677
    assert LlamaPolicy._groups(policy, rows, 64) == [[0, 1, 2], [3, 4], [5], [6]]
    policy.cx.n_ctx = 637  # 200 + 74 + 364 = 638
    assert LlamaPolicy._groups(policy, rows, 64) == [[0, 1, 2], [3], [4], [5], [6]]
    assert LlamaPolicy._groups(policy, [prompt] * 2, 64) == [[0, 1]]  # identical rows keep one own token
