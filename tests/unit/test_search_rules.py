"""The rules a search applies while it grows, with a policy that writes exactly the scripted steps:
MCTS closes what it has evaluated and stops when nothing is open, UCT follows the PPM's initial
values, the seed reaches the policy, every dead-end rule of an expansion, code-error tolerance and
beam search's cut."""

from __future__ import annotations

import pytest

from fakes import InProcessExecutor, ScriptedPolicy, TablePPM, answer, code, final
from rstar_app.config import SearchConfig
from rstar_app.search import run
from rstar_app.tree import DEAD, ERROR

PROBLEM = "Ann has 2 apples and gets 3 more. How many?"


class FixedPolicy(ScriptedPolicy):
    """The first n scripted candidates for the prefix's depth, whatever the seed."""

    def generate(self, prefix, *, n, **kw):
        super().generate(prefix, n=n, **kw)  # records the call
        depth = self.calls[-1][0]
        options = self.by_depth[min(depth, len(self.by_depth) - 1)]
        return [options[i % len(options)] for i in range(n)]


def search(script, *, strategy="mcts", ppm=None, gold=None, **config):
    config = {"rollouts": 10, "candidates": 1, "seed": 0, **config}
    pol = FixedPolicy(script)
    tree = run(PROBLEM, policy=pol, executor=InProcessExecutor(), ppm=ppm, gold=gold,
               config=SearchConfig(strategy=strategy, **config))
    return tree, pol


def children(tree, node):
    return [tree.nodes[i] for i in node.children]


# -- MCTS control flow --

def test_each_terminal_is_backed_up_once_and_the_search_ends_when_the_root_closes():
    script = [[code("# Step 1: start\na = 2\n")], [final("# Print it\nprint(a + 3)\n")], [answer(5), answer(6)]]
    tree, _ = search(script, candidates=2, gold="5", rollouts=10)
    assert tree.meta["stopped"] == "search space exhausted" and tree.meta["stats"]["rollouts"] == 2
    five, six = sorted(tree.terminals(), key=lambda nd: nd.answer)
    assert (five.n, five.q, six.n, six.q) == (1, 1.0, 1, -1.0)   # +1 / -1 against the gold, once each
    assert (tree.root.n, tree.root.q) == (2, 0.0)
    assert tree.answer == "5"


def test_uct_sends_the_first_rollout_down_the_branch_the_ppm_scores_higher():
    script = [[code("# Step 1: plan A\nx = 2\n"), code("# Step 1: plan B\nx = 2\n")],
              [final("# Print it\nprint(x + 3)\n")], [answer(5)]]
    for good, bad in (("plan A", "plan B"), ("plan B", "plan A")):
        tree, _ = search(script, candidates=2, rollouts=1, ppm=TablePPM({good: 0.9, bad: -0.9}))
        grown = [nd for nd in children(tree, tree.root) if nd.children]
        assert len(grown) == 1 and good in grown[0].text      # not simply the first child by id
        assert grown[0].ppm == 0.9 and grown[0].n == 2          # PPM init (1 visit) + the rollout


def test_the_search_seed_reaches_the_policy():
    def seeds(seed):
        pol = ScriptedPolicy([[code("# Step 1: start\na = 2\n")], [final("# Print\nprint(a + 3)\n")], [answer(5)]])
        run(PROBLEM, policy=pol, executor=InProcessExecutor(), config=SearchConfig(rollouts=2, candidates=2, seed=seed))
        return [s for _, _, s in pol.calls]
    assert seeds(3) == seeds(3) and seeds(3) != seeds(4)
    assert len(set(seeds(3))) == len(seeds(3))  # a different seed for every expansion


# -- dead ends of an expansion --

def test_an_answer_before_any_printed_result_is_dead_and_leaves_the_root_without_a_step():
    tree, _ = search([[answer(5)]])
    [guess] = children(tree, tree.root)
    assert guess.status == DEAD and guess.reason == "answer before the program printed a result"
    assert tree.root.status == DEAD and tree.root.reason == "no valid next step among the candidates"
    assert tree.answer is None and tree.meta["stopped"] == "search space exhausted"


def test_code_after_the_final_print_is_dead():
    tree, _ = search([[final("# Print\nprint(5)\n")], [code("# more\ny = 1\n")]], rollouts=1)
    [fin] = children(tree, tree.root)
    [after] = children(tree, fin)
    assert after.status == DEAD and after.reason == "code after the final answer was printed"
    assert fin.output == "5\n" and fin.reason == "no valid next step among the candidates"  # nothing left under it


def test_final_code_that_prints_nothing_is_dead():
    tree, _ = search([[final("# Compute\nx = 5\n")]], rollouts=1)
    [fin] = children(tree, tree.root)
    assert fin.status == DEAD and fin.reason == "the final code printed nothing"


def test_sibling_answers_that_are_equal_numbers_are_kept_once():
    script = [[final("# Print\nprint(5)\n")], [answer(5), answer("5.0"), answer(6)]]
    tree, _ = search(script, candidates=3, rollouts=1)
    [fin] = children(tree, tree.root)
    assert sorted(nd.answer for nd in children(tree, fin)) == ["5", "6"]


def test_a_failed_step_stays_open_up_to_max_code_errors_and_its_code_is_not_rerun():
    script = [[code("# Step 1: oops\na = 1 / 0\n")], [code("# Step 2: fix\na = 2\n")],
              [final("# Print\nprint(a + 3)\n")], [answer(5)]]
    tree, _ = search(script, max_code_errors=1, rollouts=1)
    [err] = children(tree, tree.root)
    assert err.status == ERROR and err.errors_in_row == 1 and "ZeroDivisionError" in err.error
    assert tree.answer == "5"  # the program after it runs without the failed line
    tree, _ = search(script, max_code_errors=0, rollouts=1)
    [err] = children(tree, tree.root)
    assert err.status == DEAD and err.reason.startswith("code failed: ZeroDivisionError")


def test_a_second_failure_in_a_row_and_a_failing_final_step_are_dead():
    bad = [code("# Step: oops\na = 1 / 0\n")]
    tree, _ = search([bad, bad], max_code_errors=1, rollouts=1)
    [first] = children(tree, tree.root)
    [second] = children(tree, first)
    assert second.status == DEAD and second.errors_in_row == 2 and second.reason.startswith("code failed")
    assert first.errors_in_row == 1 and first.reason == "no valid next step among the candidates"
    tree, _ = search([[final("# Print\nprint(1 / 0)\n")]], max_code_errors=3, rollouts=1)
    [fin] = children(tree, tree.root)
    assert fin.status == DEAD and fin.errors_in_row == 1   # a final step gets no second chance


# -- MCTS finishing rollouts by simulation (mcts_sim) --

def _plans(k):
    return [code(f"# Step 1: plan {i}\nx = {i}\n") for i in range(k)]


class CyclingPolicy(ScriptedPolicy):
    """Each call at a depth continues where the last call at that depth stopped in the scripted
    options, as a sampler drawing new steps would."""

    def generate(self, prefix, *, n, **kw):
        super().generate(prefix, n=n, **kw)  # records the call
        depth = self.calls[-1][0]
        options = self.by_depth[min(depth, len(self.by_depth) - 1)]
        self.next = getattr(self, "next", {})
        start = self.next.get(depth, 0)
        self.next[depth] = start + n
        return [options[(start + i) % len(options)] for i in range(n)]


def sim_search(script, **config):
    pol = CyclingPolicy(script)
    tree = run(PROBLEM, policy=pol, executor=InProcessExecutor(), gold=config.pop("gold", None),
               config=SearchConfig(strategy="mcts_sim", seed=0, **config))
    return tree, pol


def test_mcts_sim_expands_one_node_fully_and_samples_the_rest_of_the_rollout():
    script = [_plans(4), [final("# Print\nprint(x + 1)\n")], [answer(1)]]
    tree, pol = search(script, strategy="mcts_sim", candidates=4, rollouts=1)
    assert [(depth, n) for depth, n, _ in pol.calls] == [(0, 4), (1, 1), (2, 1)]
    assert len(children(tree, tree.root)) == 4
    [t] = tree.terminals()
    assert [len(nd.children) for nd in tree.path(t)] == [4, 1, 1, 0]   # one child below the root's level
    tree, pol = search(script, strategy="mcts", candidates=4, rollouts=1)
    assert [(depth, n) for depth, n, _ in pol.calls] == [(0, 4), (1, 4), (2, 4)]  # K at every level


def test_mcts_sim_gives_a_simulated_node_its_other_candidates_when_selection_reaches_it():
    script = [[code("# Step 1: start\na = 2\n")], [final("# Print\nprint(a + 3)\n"), final("# Print\nprint(a + 4)\n"),
                                                   final("# Print\nprint(a * 3)\n")], [answer(5), answer(6)]]
    tree, pol = sim_search(script, candidates=3, rollouts=2)
    # rollout 1: the root gets its one distinct step, below it one sampled final step, then an answer;
    # rollout 2: selection reaches the sampled node ("start") and draws its other 2 candidates
    assert [(depth, n) for depth, n, _ in pol.calls][:4] == [(0, 3), (1, 1), (2, 1), (1, 2)]
    [start] = children(tree, tree.root)
    assert sorted(nd.output for nd in children(tree, start)) == ["5\n", "6\n", "6\n"]  # the first one not drawn twice
    texts = [" ".join(nd.text.split()) for nd in children(tree, start)]
    assert len(texts) == len(set(texts))


def test_mcts_sim_backs_up_a_dead_sample_and_keeps_its_parent_open():
    script = [[code("# Step 1: start\na = 2\n")],
              [final("# Print\nprint(1 / 0)\n"), final("# Print\nprint(a + 3)\n")], [answer(5)]]
    tree, pol = sim_search(script, candidates=2, rollouts=3, gold="5")
    [start] = children(tree, tree.root)
    dead, good = children(tree, start)
    assert dead.status == DEAD and good.status != DEAD          # the second rollout drew the other one
    assert tree.answer == "5" and tree.terminals()[0].correct
    assert tree.root.n == 2 and tree.root.q == 0.0   # the dead sample backed up -1, the answer +1


def test_mcts_sim_never_samples_the_greedy_step_below_its_full_expansions():
    script = [_plans(4), [final("# Print\nprint(x + 1)\n")], [answer(1)]]
    _, pol = search(script, strategy="mcts_sim", candidates=4, rollouts=1, greedy_first=True)
    assert [(n, g) for (_, n, _), g in zip(pol.calls, pol.greedy_first)] == [(4, True), (1, False), (1, False)]


def test_every_mcts_sim_rollout_backs_up_one_reward_even_where_samples_repeat():
    """A final step whose answers all agree: re-drawing under it adds nothing, and the rollout walks
    again from the root instead of ending without a reward."""
    script = [_plans(3), [final("# Print\nprint(1)\n"), final("# Print\nprint(1) \n")], [answer(1)]]
    tree, _ = search(script, strategy="mcts_sim", candidates=3, rollouts=6, gold="1")
    # three rollouts, one answer each; the fourth walk finds nothing left to draw and ends the search
    assert tree.meta["stopped"] == "search space exhausted" and tree.meta["stats"]["rollouts"] == 4
    assert tree.root.n == 3 and len(tree.terminals()) == 3
    assert all(len(nd.children) <= 3 for nd in tree.nodes)


def test_mcts_sim_ends_when_every_candidate_is_drawn_and_closed():
    script = [_plans(2), [final("# Print\nprint(x + 1)\n")], [answer(1)]]
    tree, _ = sim_search(script, candidates=2, rollouts=50, gold="1")
    assert tree.meta["stopped"] == "search space exhausted"
    assert len(tree.terminals()) == 2 and all(nd.n >= 1 for nd in tree.nodes)
    # a fixed policy repeats itself: a node's later draws add nothing new, and it closes
    tree, _ = search(script, strategy="mcts_sim", candidates=2, rollouts=50, gold="1")
    assert tree.meta["stopped"] == "search space exhausted" and len(tree.terminals()) == 2


# -- beam search --

def test_beam_keeps_the_best_children_by_ppm_and_needs_a_ppm():
    script = [[code(f"# Step 1: option {k}\nx = {k}\n") for k in "123"], [final("# Print\nprint(x + 2)\n")],
              [answer(3), answer(4), answer(5)]]
    ppm = TablePPM({"option 1": -0.5, "option 2": 0.2, "option 3": 0.7})
    tree, _ = search(script, strategy="beam", ppm=ppm, candidates=3, beam_width=2)
    level1 = children(tree, tree.root)
    expanded = sorted(nd.text.split("option ")[1][0] for nd in level1 if nd.children)
    assert expanded == ["2", "3"]                                 # option 1 (lowest PPM) was cut
    kept = {nd.id for nd in level1 if nd.children}
    assert len(tree.terminals()) == 6 and all(tree.path(t)[1].id in kept for t in tree.terminals())
    with pytest.raises(ValueError, match="beam search needs a PPM"):
        search(script, strategy="beam", candidates=3, beam_width=2)
