"""Tree arithmetic (UCT, backup, vote) and search control flow with a scripted policy."""

import math

import pytest

from fakes import InProcessExecutor, ScriptedPolicy, TablePPM, answer, code, final
from rstar_app.config import SearchConfig
from rstar_app.search import run
from rstar_app.tree import DEAD, TERMINAL, Tree

PROBLEM = "Ann has 2 apples and gets 3 more. How many?"


def test_uct_is_value_plus_exploration_and_unvisited_first():
    t = Tree("p", "prompt")
    a = t.add(t.root, kind="code", status="ok")
    b = t.add(t.root, kind="code", status="ok")
    t.root.n = 4
    a.q, a.n = 1.0, 2
    assert t.uct(a, 2.0) == pytest.approx(0.5 + 2 * math.sqrt(math.log(4) / 2))
    assert t.uct(b, 2.0) == math.inf


def test_backup_adds_reward_and_visit_along_the_path():
    t = Tree("p", "prompt")
    a = t.add(t.root, kind="code", status="ok")
    b = t.add(a, kind="answer", status="terminal", answer="5")
    t.backup(b, 1.0)
    t.backup(b, -1.0)
    assert (t.root.n, t.root.q, a.n, a.q, b.value) == (2, 0.0, 2, 0.0, 0.0)
    assert [e.kind for e in t.events].count("update") == 6


def test_vote_takes_majority_of_top_k_by_value():
    t = Tree("p", "prompt")
    vals = [("5", 0.9), ("7", 0.8), ("7.0", 0.7), ("5", -0.5), ("9", 0.95)]
    for ans, v in vals:
        nd = t.add(t.root, kind="answer", status="terminal", answer=ans)
        nd.q, nd.n = v, 1
    assert t.vote(top_k=4) == "7"       # top 4: 9, 5, 7, 7.0 -> "7" twice
    assert t.vote(top_k=1) == "9"
    assert t.best_path[0] == 0 and t.nodes[t.best_path[-1]].answer == "9"


def test_ppm_weighted_vote_sums_terminal_scores_over_every_terminal():
    t = Tree("p", "prompt")
    # (answer, value, PPM): "9" leads by value and by count in the top 2, "5" by summed PPM weight
    for ans, v, ppm in [("9", 0.9, -0.2), ("9", 0.8, -0.4), ("5", 0.1, 0.9), ("5.0", 0.0, 0.8)]:
        nd = t.add(t.root, kind="answer", status="terminal", answer=ans, ppm=ppm)
        nd.q, nd.n = v, 1
    assert t.vote(2) == "9"                             # top-k: both top-2 terminals say 9
    assert t.vote(2, "ppm-weighted") == "5"             # weights 0.4 + 0.3 vs 0.95 + 0.9
    assert t.nodes[t.best_path[-1]].ppm == 0.9          # the best-ranked terminal of the winner
    with pytest.raises(ValueError, match="vote rule"):
        t.vote(2, "loudest")


def test_ppm_weighted_vote_without_ppm_scores_is_a_plain_vote_over_all_terminals():
    t = Tree("p", "prompt")
    for ans, v in [("1", 0.9), ("2", 0.1), ("2", 0.0)]:
        nd = t.add(t.root, kind="answer", status="terminal", answer=ans)
        nd.q, nd.n = v, 1
    assert t.vote(1) == "1" and t.vote(1, "ppm-weighted") == "2"
    with pytest.raises(ValueError, match="vote must be one of"):
        SearchConfig(vote="loudest")


def test_trace_round_trips_and_rejects_other_versions():
    t = Tree("p", "prompt", gold="5")
    t.add(t.root, kind="answer", status="terminal", answer="5")
    t.vote(4)
    t2 = Tree.from_json(t.to_json())
    assert [n.to_dict() for n in t2.nodes] == [n.to_dict() for n in t.nodes]
    bad = t.to_json() | {"version": 99}
    with pytest.raises(ValueError, match="version"):
        Tree.from_json(bad)
    with pytest.raises(ValueError, match="JSON"):
        Tree.from_json("{not json")


def _script():
    return [
        [code("# Step 1: start\na = 2\n"), code("# Step 1: broken\na = 2 +\n"), code("# Step 1: start\na = 2\n")],
        [final("# Now print\nprint(a + 3)\n"), final("# wrong\nprint(a * 3)\n")],
        [answer(5), answer(6)],
    ]


def test_mcts_with_ground_truth_prefers_correct_branch_and_drops_duplicates():
    pol = ScriptedPolicy(_script())
    tree = run(PROBLEM, policy=pol, executor=InProcessExecutor(), gold="5",
               config=SearchConfig(rollouts=12, candidates=3, seed=0, max_code_errors=0))
    depth1 = [tree.nodes[i] for i in tree.root.children]
    assert len(depth1) == 2                      # the duplicate "a = 2" sibling was dropped
    assert any(n.status == DEAD and "SyntaxError" in n.reason for n in depth1)
    assert tree.answer == "5"
    correct = [n for n in tree.terminals() if n.correct]
    wrong = [n for n in tree.terminals() if n.correct is False]
    assert correct and all(n.value == 1.0 for n in correct)
    assert all(n.value == -1.0 for n in wrong)
    assert tree.meta["stopped"] in (None, "search space exhausted")


@pytest.mark.parametrize("strategy", ["mcts", "mcts_sim"])
def test_mcts_is_reproducible_for_a_seed(strategy):
    def go(seed):
        t = run(PROBLEM, policy=ScriptedPolicy(_script()), executor=InProcessExecutor(),
                config=SearchConfig(strategy=strategy, rollouts=6, candidates=2, seed=seed))
        return [(n.parent, n.text, n.q, n.n) for n in t.nodes]
    assert go(3) == go(3)


@pytest.mark.parametrize("strategy", ["mcts", "mcts_sim"])
def test_prefix_of_a_longer_search_is_the_tree_a_shorter_search_grows(strategy):
    def go(rollouts):
        return run(PROBLEM, policy=ScriptedPolicy(_script()), executor=InProcessExecutor(),
                   ppm=TablePPM({"a + 3": 0.8, "a * 3": -0.4, "start": 0.1}),
                   config=SearchConfig(strategy=strategy, rollouts=rollouts, candidates=3, seed=1))
    long, short = go(6), go(2)
    assert len(long.meta["rollout_nodes"]) == long.meta["stats"]["rollouts"]
    assert long.meta["rollout_nodes"] == sorted(long.meta["rollout_nodes"])
    assert long.meta["rollout_tokens"][-1] == long.meta["stats"]["tokens"]
    cut = long.prefix(2)
    assert len(cut.nodes) < len(long.nodes)  # the later rollouts grew more nodes
    assert [(n.parent, n.text, n.ppm, n.children) for n in cut.nodes] == [
        (n.parent, n.text, n.ppm, n.children) for n in short.nodes]
    assert [n.answer for n in cut.terminals()] == [n.answer for n in short.terminals()]
    assert cut.meta["rollout_nodes"] == short.meta["rollout_nodes"] and cut.answer is None
    assert cut.meta["rollout_tokens"] == short.meta["rollout_tokens"]
    assert len(long.prefix(99).nodes) == len(long.nodes)
    with pytest.raises(ValueError, match="rollouts"):
        long.prefix(0)
    old = Tree.from_json({**long.to_json(), "meta": {}})
    with pytest.raises(ValueError, match="does not record its rollouts"):
        old.prefix(1)


def test_greedy_first_asks_for_a_greedy_sibling_only_when_sampling():
    for strategy, temperature, want in (("mcts", 0.7, True), ("mcts", 0.0, False), ("greedy", 0.7, False)):
        pol = ScriptedPolicy(_script())
        run(PROBLEM, policy=pol, executor=InProcessExecutor(),
            config=SearchConfig(strategy=strategy, rollouts=3, candidates=2, temperature=temperature,
                                greedy_first=True))
        assert pol.greedy_first and set(pol.greedy_first) == {want}, (strategy, temperature)
    pol = ScriptedPolicy(_script())
    run(PROBLEM, policy=pol, executor=InProcessExecutor(), config=SearchConfig(rollouts=3, candidates=2))
    assert set(pol.greedy_first) == {False}  # off by default
    with pytest.raises(ValueError, match="greedy_first"):
        SearchConfig(greedy_first="yes")


def test_ppm_score_is_initial_value_counting_one_visit():
    pol = ScriptedPolicy(_script())
    ppm = TablePPM({"a + 3": 0.8, "a * 3": -0.4, "start": 0.1})
    tree = run(PROBLEM, policy=pol, ppm=ppm, executor=InProcessExecutor(),
               config=SearchConfig(rollouts=1, candidates=3, seed=0))
    first = tree.nodes[tree.root.children[0]]
    assert first.ppm == pytest.approx(0.1)
    # one rollout: the first child got its PPM visit, then the terminal's PPM reward was backed up
    assert first.n == 2


def test_answer_without_program_output_is_dead():
    pol = ScriptedPolicy([[answer(5)]])
    tree = run(PROBLEM, policy=pol, executor=InProcessExecutor(), config=SearchConfig(rollouts=2, candidates=1))
    assert tree.answer is None
    assert tree.nodes[1].status == DEAD and "before the program" in tree.nodes[1].reason


def test_depth_limit_kills_branch():
    pol = ScriptedPolicy([[code("# Step: loop\nx = 1\n")]])
    tree = run(PROBLEM, policy=pol, executor=InProcessExecutor(),
               config=SearchConfig(rollouts=1, candidates=1, max_depth=3))
    assert max(n.depth for n in tree.nodes) == 3
    assert any("depth limit" in n.reason for n in tree.nodes)


def test_cancel_returns_partial_tree():
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3
    tree = run(PROBLEM, policy=ScriptedPolicy(_script()), executor=InProcessExecutor(),
               config=SearchConfig(rollouts=50, candidates=3), should_stop=stop)
    assert tree.meta["stopped"] == "cancelled"
    assert tree.events[-1].kind == "done"


@pytest.mark.parametrize("strategy,answers,answer", [
    ("greedy", ["5"], "5"),                  # one path: the first candidate at every step
    ("majority", ["5", "6", "6"], "6"),      # 4 samples, one dies on the broken step; most say 6
    ("best_of_n", ["5", "6", "6"], "6"),     # the same samples; no selector: top-4 vote by value
    ("beam", ["5", "5", "6", "6"], "5"),     # both beams' answers; the PPM-preferred branch wins
])
def test_baselines_share_the_interface(strategy, answers, answer):
    ppm = TablePPM({"a + 3": 0.8, "a * 3": -0.4})
    tree = run(PROBLEM, policy=ScriptedPolicy(_script()), ppm=ppm, executor=InProcessExecutor(),
               config=SearchConfig(strategy=strategy, rollouts=4, candidates=2, seed=0))
    assert sorted(nd.answer for nd in tree.terminals()) == answers and tree.answer == answer
    assert tree.meta["strategy"] == strategy and tree.nodes[tree.best_path[-1]].answer == answer
    assert all(tree.nodes[i].status != DEAD for i in tree.best_path)


def test_token_budget_stops_search():
    tree = run(PROBLEM, policy=ScriptedPolicy(_script()), executor=InProcessExecutor(),
               config=SearchConfig(rollouts=100, candidates=2, max_tokens=12))
    assert tree.meta["stopped"] == "token budget"


def test_time_limit_stops_in_the_middle_of_a_rollout():
    import time

    class Slow(ScriptedPolicy):
        def generate(self, *a, **k):
            time.sleep(0.05)
            return super().generate(*a, **k)
    tree = run(PROBLEM, policy=Slow([[code("# Step: x\nx = 1\n")]]), executor=InProcessExecutor(),
               config=SearchConfig(rollouts=1, candidates=1, max_depth=60, time_limit=0.2))
    assert tree.meta["stopped"] == "time limit"
    assert tree.meta["stats"]["rollouts"] == 0 and len(tree.nodes) < 10


def test_a_branch_that_fills_the_context_window_ends_and_the_search_goes_on():
    from rstar_app.steps import build_prompt
    wordy = code("# Step 1: " + "think it over once more, " * 20 + "\na = 2\n")  # ~130 tokens (len / 4)
    pol = ScriptedPolicy([[wordy, code("# Step 1: start\na = 2\n")], [final("# Now print\nprint(a + 3)\n")],
                          [answer(5)]])
    cfg = SearchConfig(rollouts=8, candidates=2, seed=0, max_step_tokens=32)
    # room for the prompt, the short steps and one more step; the wordy step leaves no room
    pol.n_ctx = pol.count_tokens(build_prompt(PROBLEM)) + cfg.max_step_tokens + 60
    tree = run(PROBLEM, policy=pol, executor=InProcessExecutor(), config=cfg)
    full = [n for n in tree.nodes if n.reason.startswith("context window full")]
    assert [n.text for n in full] == [wordy.text] and full[0].status == DEAD and full[0].value == -1.0
    assert tree.answer == "5" and tree.meta["stats"]["rollouts"] >= 2  # the other branch went on
    assert tree.meta["stopped"] in (None, "search space exhausted")


def test_steps_too_long_for_the_ppms_context_die_and_the_search_goes_on():
    from rstar_app.models.base import ContextFull

    class ShortPPM(TablePPM):  # a window the wordy step does not fit
        def score(self, prefix, steps):
            if any("once more" in st for st in steps):
                raise ContextFull("12 tokens do not fit")
            return super().score(prefix, steps)
    wordy = code("# Step 1: " + "think it over once more, " * 20 + "\na = 2\n")
    pol = ScriptedPolicy([[wordy, code("# Step 1: start\na = 2\n")], [final("# Now print\nprint(a + 3)\n")], [answer(5)]])
    tree = run(PROBLEM, policy=pol, ppm=ShortPPM({}), executor=InProcessExecutor(),
               config=SearchConfig(rollouts=4, candidates=2, seed=0))
    full = [n for n in tree.nodes if "context window is full" in n.reason]
    assert [n.text for n in full] == [wordy.text] and full[0].status == DEAD and full[0].value == -1.0
    assert tree.answer == "5"  # its sibling, scored alone, went on


def test_a_prompt_longer_than_the_context_window_returns_a_tree_without_answer():
    pol = ScriptedPolicy(_script())
    pol.n_ctx = 20
    tree = run(PROBLEM, policy=pol, executor=InProcessExecutor(), config=SearchConfig(rollouts=4, candidates=2))
    assert tree.answer is None and pol.calls == []
    assert tree.root.status == DEAD and tree.root.reason == "context window full (20 tokens)"
    assert Tree.from_json(tree.to_json()).root.reason == tree.root.reason


@pytest.mark.parametrize("strategy", ["mcts", "mcts_sim", "majority", "greedy"])
def test_every_step_keeps_the_logprob_its_candidate_was_generated_with(strategy):
    from dataclasses import replace
    script = [[replace(c, logprob=-0.5 * (i + 1) - d) for i, c in enumerate(opts)] for d, opts in enumerate(_script())]
    tree = run(PROBLEM, policy=ScriptedPolicy(script), executor=InProcessExecutor(), gold="5",
               config=SearchConfig(strategy=strategy, rollouts=4, candidates=2, seed=0))
    made = {(c.text, c.logprob) for opts in script for c in opts}
    steps = tree.nodes[1:]
    assert steps and all(nd.logprob is not None for nd in steps)
    assert all(any(nd.text in text and nd.logprob == lp for text, lp in made) for nd in steps)
    assert Tree.from_json(tree.to_json()).nodes[1].logprob == steps[0].logprob  # saved with the trace
