"""training.rescore: another PPM's scores replace the terminals' (and only theirs), then the source's
own answer rule chooses again; the output is a run that the other tools read."""

import json

import pytest

from rstar_app.steps import OUTPUT, Step, render_step
from rstar_app.tree import Tree
from training.rescore import record_logprobs, rescore_tree, revote_rows


class TextPPM:
    """Scores a continuation by the boxed answer in it: {answer: score}."""

    def __init__(self, table: dict[str, float]):
        self.table, self.calls = table, []

    def score(self, prefix: str, steps):
        self.calls.append((prefix, list(steps)))
        return [next(v for k, v in self.table.items() if f"\\boxed{{{k}}}" in s) for s in steps]


def _tree() -> Tree:
    """Three best-of-N samples: answers 7, 7, 9; the old PPM prefers 9."""
    t = Tree("Q?", "<prompt>", gold="7")
    t.meta["config"] = {"strategy": "best_of_n", "rollouts": 3}
    for ans, old in (("7", -0.5), ("7", -0.4), ("9", 0.9)):
        c = t.add(t.root, kind="final_code", status="ok", text="# sum", code="print(1)", output="1\n", ppm=0.2)
        t.add(c, kind="answer", status="terminal", text=f"\\boxed{{{ans}}}", answer=ans, ppm=old)
    return t


def test_terminals_get_the_new_scores_in_one_call_and_inner_nodes_keep_theirs():
    t = _tree()
    ppm = TextPPM({"7": 0.6, "9": -0.8})
    r = rescore_tree(t, ppm)
    assert r["terminals"] == 3 and abs(r["max_abs_change"] - 1.7) < 1e-9
    assert [nd.ppm for nd in t.terminals()] == [0.6, 0.6, -0.8]
    assert [nd.value for nd in t.terminals()] == [0.6, 0.6, -0.8]  # a terminal's value is its PPM score
    assert all(nd.ppm == 0.2 for nd in t.nodes if nd.kind == "final_code")
    # one call, prompt as the shared prefix, each continuation the rest of the terminal's text
    (prefix, steps), = ppm.calls
    assert prefix == "<prompt>" and [prefix + s for s in steps] == [t.text(nd) for nd in t.terminals()]


def test_a_tree_without_terminals_costs_no_ppm_call():
    t = Tree("Q?", "<prompt>")
    t.add(t.root, kind="code", status="dead", text="# x")
    ppm = TextPPM({})
    assert rescore_tree(t, ppm) == {"terminals": 0, "max_abs_change": 0.0} and ppm.calls == []


def test_a_rescored_terminal_keeps_the_searchs_value_equals_ppm_rule_whatever_its_visits():
    t = _tree()
    for nd, visits in zip(t.terminals(), (2, 1, 3)):  # as best-of-N (init + backup) or MCTS left them
        nd.n, nd.q = visits, nd.ppm * visits
    rescore_tree(t, TextPPM({"7": 0.6, "9": -0.8}))
    assert [(nd.n, round(nd.value, 9)) for nd in t.terminals()] == [(2, 0.6), (1, 0.6), (3, -0.8)]


@pytest.mark.parametrize("rule, top_k", [("ppm-weighted", 4), ("top-k", 1)])
def test_revote_answers_each_row_again_by_the_rule_on_the_new_scores(tmp_path, rule, top_k):
    trees = tmp_path / "run-x.trees"
    trees.mkdir()
    src_rows = tmp_path / "run.jsonl"
    rows = []
    for pid, table in (("p/1", {"7": 0.6, "9": -0.8}), ("p2", {"7": -0.9, "9": 0.95})):
        t = _tree()
        rescore_tree(t, TextPPM(table))
        (trees / f"{pid.replace('/', '_')}.json").write_text(json.dumps(t.to_json(events=False)))
        rows.append({"id": pid, "gold": "7", "answer": "9", "correct": False, "in_tree": True, "tokens": 5, "seconds": 1.0})
    src_rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = revote_rows(src_rows, trees, rule, None, top_k=top_k)
    # p/1: the new PPM prefers 7 -> right; p2: it prefers 9 -> wrong; the search's cost is kept
    assert [(r["id"], r["answer"], r["correct"]) for r in got] == [("p/1", "7", True), ("p2", "9", False)]
    assert all(r["in_tree"] and r["tokens"] == 5 for r in got)


class CharPolicy:
    """One token per character: log p = -1 for a digit, -0.1 for anything else."""

    def __init__(self):
        self.calls = []

    def token_logprobs(self, prefix: str, continuation: str):
        self.calls.append((prefix, continuation))
        return [(ch.encode(), -1.0 if ch.isdigit() else -0.1) for ch in continuation]


def test_record_logprobs_gives_each_step_its_mean_per_token_times_its_tokens_without_the_program_output():
    t = Tree("Q?", "<prompt>", gold="7")
    c = t.add(t.root, kind="final_code", status="ok", text="# x", code="print(7777)", output="7777\n", tokens=4)
    a = t.add(c, kind="answer", status="terminal", text="\\boxed{7}", answer="7", tokens=3)
    b = t.add(c, kind="answer", status="terminal", text="\\boxed{9}", answer="9", tokens=3)  # shares the code step
    policy = CharPolicy()
    assert record_logprobs(t, policy) == 3
    code_text = render_step(Step("final_code", "# x", code="print(7777)"), "7777\n")
    own = code_text[:code_text.find(OUTPUT)]  # the output block is the executor's, not the policy's
    digits = sum(ch.isdigit() for ch in own)
    assert c.logprob == pytest.approx((-1.0 * digits - 0.1 * (len(own) - digits)) / len(own) * 4)
    answer_text = render_step(Step("answer", "\\boxed{7}"))
    assert a.logprob == pytest.approx((-1.0 - 0.1 * (len(answer_text) - 1)) / len(answer_text) * 3)
    # the second terminal's pass starts after the step it shares with the first
    assert policy.calls[0][0] == "<prompt>" and policy.calls[1] == (t.text(c), render_step(Step("answer", "\\boxed{9}")))
    assert record_logprobs(t, policy) == 0 and len(policy.calls) == 2  # all recorded: nothing to do
    assert b.logprob is not None


def test_rescore_rollouts_file_records_logprobs_resumes_by_id_and_keeps_the_rows(tmp_path, monkeypatch):
    import training.rescore as rescore
    rows = []
    for i in range(3):
        t = _tree()
        rows.append({"id": f"train-{i}", "gold": "7", "answer": "9", "correct": False, "trace": t.to_json(events=False)})
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(rescore, "load_policy", lambda a: type("P", (CharPolicy,), {"name": "chars"})())
    out = tmp_path / "o"
    assert rescore.main([str(src), "--out", str(out), "--tag", "lp", "--keep-ppm", "--policy-logprob"]) == 0
    got = [json.loads(line) for line in (out / "rollouts-lp.jsonl").read_text().splitlines()]
    assert [r["id"] for r in got] == ["train-0", "train-1", "train-2"]
    assert all(r["answer"] == "9" and r["gold"] == "7" for r in got)
    trees = [Tree.from_json(r["trace"]) for r in got]
    assert all(nd.logprob is not None for tr in trees for term in tr.terminals() for nd in tr.path(term)[1:])
    assert [nd.ppm for nd in trees[0].terminals()] == [-0.5, -0.4, 0.9]  # --keep-ppm
    # a second run finds every id done and appends nothing
    assert rescore.main([str(src), "--out", str(out), "--tag", "lp", "--keep-ppm", "--policy-logprob"]) == 0
    assert len((out / "rollouts-lp.jsonl").read_text().splitlines()) == 3
    # resuming into the same output with another model is refused, not mixed in
    monkeypatch.setattr(rescore, "load_policy", lambda a: type("P", (CharPolicy,), {"name": "other"})())
    with pytest.raises(SystemExit, match="pass another --tag"):
        rescore.main([str(src), "--out", str(out), "--tag", "lp", "--keep-ppm", "--policy-logprob"])


def test_keep_ppm_alone_is_refused(tmp_path, capsys):
    from training.rescore import main
    assert main([str(tmp_path), "--out", str(tmp_path / "o"), "--tag", "x", "--keep-ppm"]) == 2
    assert "nothing to do" in capsys.readouterr().err
