"""training.rescore: another PPM's scores replace the terminals' (and only theirs), then the source's
own answer rule chooses again; the output is a run that the other tools read."""

import json

from rstar_app.tree import Tree
from training.rescore import rescore_tree, revote_rows


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
    assert all(nd.ppm == 0.2 for nd in t.nodes if nd.kind == "final_code")
    # one call, prompt as the shared prefix, each continuation the rest of the terminal's text
    (prefix, steps), = ppm.calls
    assert prefix == "<prompt>" and [prefix + s for s in steps] == [t.text(nd) for nd in t.terminals()]


def test_a_tree_without_terminals_costs_no_ppm_call():
    t = Tree("Q?", "<prompt>")
    t.add(t.root, kind="code", status="dead", text="# x")
    ppm = TextPPM({})
    assert rescore_tree(t, ppm) == {"terminals": 0, "max_abs_change": 0.0} and ppm.calls == []


def test_revote_answers_each_row_again_by_the_rule_on_the_new_scores(tmp_path):
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
    got = revote_rows(src_rows, trees, "ppm-weighted", None)
    # p/1: the new PPM prefers 7 -> right; p2: it prefers 9 -> wrong; the search's cost is kept
    assert [(r["id"], r["answer"], r["correct"]) for r in got] == [("p/1", "7", True), ("p2", "9", False)]
    assert all(r["in_tree"] and r["tokens"] == 5 for r in got)
