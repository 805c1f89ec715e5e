"""A search cancelled at every kind of event it emits: the cancel lands before the policy is asked
for another step, nothing raises, and the partial tree is a valid trace (scripted policy)."""

import json

import pytest

from fakes import InProcessExecutor, ScriptedPolicy, TablePPM, answer, code, final
from rstar_app.config import SearchConfig
from rstar_app.search import run
from rstar_app.tree import Tree

PROBLEM = "Ann has 2 apples and gets 3 more. How many?"
# every Event.kind a search emits (tree.Event); checked against a full run below
EVENT_KINDS = ("node", "update", "rollout", "done")
STRATEGIES = ("mcts", "mcts_sim", "majority", "best_of_n", "beam")  # tree searches, independent samples, levels
# events per strategy: samples are grafted onto the tree with their final values, so a majority
# vote (no PPM, no backups) changes no node after it appears
KINDS = {st: EVENT_KINDS if st != "majority" else ("node", "rollout", "done") for st in STRATEGIES}


def script():
    return [
        [code("# Step 1: start\na = 2\n"), code("# Step 1: broken\na = 2 +\n"), code("# Step 1: other\na = 2.0\n")],
        [code("# Step 2: more\nb = a + 3\n"), code("# Step 2: also\nb = 3 + a\n")],
        [final("# Now print\nprint(b)\n"), final("# wrong\nprint(b * 3)\n")],
        [answer(5), answer(15)],
    ]


def search(strategy, policy=None, should_stop=None, on_event=None):
    policy = policy or ScriptedPolicy(script())
    ppm = TablePPM({"print(b)": 0.8, "b * 3": -0.4, "start": 0.2}) if strategy in ("beam", "best_of_n") else None
    tree = run(PROBLEM, policy=policy, ppm=ppm, executor=InProcessExecutor(),
               config=SearchConfig(strategy=strategy, rollouts=20, candidates=3, seed=0),
               should_stop=should_stop, on_event=on_event)
    return tree, policy


def events(tree):
    """The event stream without its wall-clock figures (those differ from run to run)."""
    return [(e.kind, e.node_id, json.dumps({k: v for k, v in e.data.items() if not k.endswith("seconds")},
                                           sort_keys=True)) for e in tree.events]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_full_run_emits_every_event_kind_listed_here(strategy):
    full, _ = search(strategy)
    assert {e.kind for e in full.events} == set(KINDS[strategy]) <= set(EVENT_KINDS)
    assert full.meta["stopped"] != "cancelled" and full.meta["stats"]["rollouts"] >= 2


def cancelled_at(strategy, index):
    """Run again and cancel at the full run's event number `index`; returns (tree, policy calls
    made when the cancel was requested, policy calls made in all)."""
    policy = ScriptedPolicy(script())
    seen = {"events": 0, "calls": None}

    def on_event(_):
        seen["events"] += 1
        if seen["events"] == index + 1:
            seen["calls"] = len(policy.calls)

    tree, _ = search(strategy, policy, should_stop=lambda: seen["calls"] is not None, on_event=on_event)
    return tree, seen["calls"], len(policy.calls)


@pytest.mark.parametrize("strategy,kind", [(st, k) for st in STRATEGIES for k in KINDS[st]])
def test_cancel_at_every_event_of_each_kind_returns_a_valid_partial_tree(strategy, kind):
    """Cancel at the first event of this kind, and at every later one too."""
    policy = ScriptedPolicy(script())
    calls_at = []  # policy calls made when each event of the full run came
    full, _ = search(strategy, policy, on_event=lambda _: calls_at.append(len(policy.calls)))
    want = events(full)
    at = [i for i, e in enumerate(full.events) if e.kind == kind]
    assert at
    for i in at:
        tree, calls_at_cancel, calls = cancelled_at(strategy, i)  # nothing raises
        got = events(tree)
        # the cancel lands before the policy is asked for another step
        assert calls == calls_at_cancel, (i, kind)
        # what was recorded is the uncancelled run up to the cancel (and a little after: a backup
        # in progress completes), then "done"
        assert got[-1][0] == "done" and got[:-1] == want[:len(got) - 1] and len(got) > i, (i, kind)
        if got != want:  # partial
            assert tree.meta["stopped"] == "cancelled" and len(got) < len(want), (i, kind)
        else:  # the cancel came with the last rollout's final bookkeeping, or with "done"
            assert tree.meta["stopped"] == full.meta["stopped"], (i, kind)
        if calls_at[i] < len(policy.calls):
            assert got != want, (i, kind)  # with steps still to generate, the cancel is honoured
        # a valid trace: it survives JSON text and the trace validation, node for node
        back = Tree.from_json(json.dumps(tree.to_json()))
        assert [n.to_dict() for n in back.nodes] == [n.to_dict() for n in tree.nodes]
        assert back.meta["stopped"] == tree.meta["stopped"] and back.answer == tree.answer
        assert all(tree.nodes[j].status != "dead" for j in tree.best_path)


def test_a_budget_spent_mid_batch_leaves_no_unscored_terminal_to_win_the_vote():
    # the batch that crosses the token budget is still PPM-scored before the search ends: an unscored
    # terminal (value 0) would otherwise beat every scored one with a negative PPM score
    from rstar_app.models.base import Candidate

    class TwoWays:
        name, n_ctx = "two ways", 100_000

        def count_tokens(self, text):
            return len(text) // 4

        def generate(self, prefix, n, **kw):
            if "print(" not in prefix:
                return [Candidate("print(5)", "<end_of_code>", 10), Candidate("print(7)", "<end_of_code>", 10)][:n]
            ans = "5" if "print(5)" in prefix else "7"
            return [Candidate(f"<answer>\\boxed{{{ans}}}", "<end_of_answer>", 10),
                    Candidate(f"<answer>so \\boxed{{{ans}}}", "<end_of_answer>", 10)][:n]
    ppm = TablePPM({"boxed{5}": -0.5, "boxed{7}": -0.9, "print(5)": 0.1, "print(7)": 0.0})
    for budget in (0, 50):  # 50 tokens: spent by the batch that reaches the second answer
        tree = run("What is 5?", policy=TwoWays(), ppm=ppm, executor=InProcessExecutor(),
                   config=SearchConfig(strategy="mcts", rollouts=4, candidates=2, max_tokens=budget, vote="top-k"))
        assert all(nd.ppm is not None for nd in tree.terminals()), budget
        assert tree.answer == "5", budget
    assert tree.meta["stopped"] == "token budget"
