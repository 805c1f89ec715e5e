"""training.extract on hand-built trees: SFT selection and PPM pair rules."""

import json

from rstar_app.steps import build_prompt
from rstar_app.tree import DEAD, ERROR, OK, TERMINAL, Tree
from training import extract as X

Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def add(tree, parent, kind, text, *, q, n=1, status=OK, correct=None, answer=None, code="", output="", error=""):
    nd = tree.add(parent, kind=kind, text=text, code=code, status=status, correct=correct, answer=answer,
                  output=output, error=error)
    nd.q, nd.n = q, n
    return nd


def code_step(k, body):
    return f"# Step {k}: {body}\nx{k} = {k} + 1000000 * {k}"


def build_tree():
    """root -> a (good), b (bad), c (error then good), d (dead)
    a -> a1 final -> a1x answer 7 (correct); a -> a2 final -> a2x answer 8 (wrong)
    b -> b1 final -> b1x answer 9 (wrong)
    c (error step) -> c1 final -> c1x answer 7 (correct)"""
    t = Tree(Q, build_prompt(Q, few_shot=True), gold="7")
    r = t.root
    a = add(t, r, "code", "# Step 1: Add the apples he has and the apples he buys together.\ntotal = 3 + 4", q=0.5, n=2, code="total = 3 + 4\n")
    b = add(t, r, "code", "# Step 1: Multiply the apples by the number bought, which is wrong.\ntotal = 3 * 4", q=-1, n=1, code="total = 3 * 4\n")
    c = add(t, r, "code", "# Step 1: Try something that fails first.\ntotal = 3 / 0", q=0.8, n=1, status=ERROR, code="total = 3 / 0\n", error="ZeroDivisionError")
    d = add(t, r, "invalid", "garbage with no marker at all", q=-1, n=1, status=DEAD)
    a1 = add(t, a, "final_code", "# Now print the final answer\nprint(total)", q=1, n=1, code="print(total)\n", output="7\n")
    a1x = add(t, a1, "answer", "The answer is \\boxed{7}.", q=1, n=1, status=TERMINAL, correct=True, answer="7")
    a2 = add(t, a, "final_code", "# Now print the final answer, plus one for good measure\nprint(total + 1)", q=-1, n=1, code="print(total + 1)\n", output="8\n")
    a2x = add(t, a2, "answer", "The answer is \\boxed{8}.", q=-1, n=1, status=TERMINAL, correct=False, answer="8")
    b1 = add(t, b, "final_code", "# Now print the final answer\nprint(total)", q=-1, n=1, code="print(total)\n", output="12\n")
    b1x = add(t, b1, "answer", "The answer is \\boxed{12}.", q=-1, n=1, status=TERMINAL, correct=False, answer="12")
    c1 = add(t, c, "final_code", "# Now print the final answer\nprint(7)", q=1, n=1, code="print(7)\n", output="7\n")
    c1x = add(t, c1, "answer", "The answer is \\boxed{7}.", q=1, n=1, status=TERMINAL, correct=True, answer="7")
    return t, dict(a=a, b=b, c=c, d=d, a1=a1, a1x=a1x, a2=a2, a2x=a2x, b1=b1, b1x=b1x, c1=c1, c1x=c1x)


def test_outcomes_propagate_up():
    t, n = build_tree()
    o = X.outcomes(t)
    assert o[0] == (True, True)
    assert o[n["a"].id] == (True, True)
    assert o[n["b"].id] == (False, True)
    assert o[n["d"].id] == (False, True)


def test_sft_takes_best_correct_and_drops_error_paths():
    t, n = build_tree()
    out = X.sft_examples(t, problem_id="p1")
    assert len(out) == 1  # the c-path is correct but has an error step
    ex = out[0]
    assert ex["question"] == Q and ex["gold"] == "7" and ex["n_steps"] == 3
    assert ex["text"].startswith("# Step 1: Add the apples")
    assert ex["text"].endswith("<answer>The answer is \\boxed{7}.<end_of_answer>")
    assert "<output>7<end_of_output>" in ex["text"]
    assert "<|user|>" not in ex["text"]  # prompt (few-shot here) is not part of the solution text


def test_sft_ranks_by_avg_q_then_min_q_and_keeps_top_k():
    t = Tree(Q, build_prompt(Q), gold="7")
    finals = []
    for i, (q1, q2) in enumerate([(0.2, 1.0), (0.6, 0.6), (1.0, 0.2), (0.9, 0.9)]):
        s = add(t, t.root, "code", code_step(1, f"variant {i} " * 3), q=q1, code=f"x = {i}\n")
        f = add(t, s, "final_code", f"# Now print the final answer\nprint(7 + 0 * {i})", q=q2, code="print(7)\n", output="7\n")
        finals.append(add(t, f, "answer", "The answer is \\boxed{7}.", q=1, status=TERMINAL, correct=True, answer="7"))
    out = X.sft_examples(t, X.ExtractConfig(sft_top_k=2))
    # avg Q: 0.733, 0.733, 0.733, 0.933 -> variant 3 first; ties broken by the higher min Q (variant 1)
    assert ["variant 3" in o["text"] for o in out] == [True, False]
    assert "variant 1" in out[1]["text"]


def test_step_pairs_same_prefix_best_vs_worst_with_filters():
    t, n = build_tree()
    pairs = X.ppm_pairs(t, problem_id="p1")
    step_pairs = [p for p in pairs if p["kind"] == "step"]
    by_node = {}
    for p in step_pairs:
        by_node.setdefault(p["node"], []).append(p)
    # at the root: correct-leading a vs wrong-only b, d; c leads to a correct answer too, but its
    # code failed: a step that raises is not a valid node, so it is no positive
    root = by_node[0]
    assert {(p["pos_node"], p["neg_node"]) for p in root} == {(n["a"].id, n["b"].id), (n["a"].id, n["d"].id)}
    plain = build_prompt(Q)
    for p in root:
        assert p["prefix"] == plain  # rebuilt without the few-shot examples
        assert p["q_pos"] - p["q_neg"] >= 0.5
    # at a: a1 (correct) vs a2 (wrong), prefix = prompt + a's step
    (pa,) = by_node[n["a"].id]
    assert pa["prefix"] == plain + X.rendered(n["a"])
    assert pa["pos"] == X.rendered(n["a1"]) and pa["neg"] == X.rendered(n["a2"])
    # a1 -> only one child: no pairs there; b has no correct outcome: no pairs
    assert n["b"].id not in by_node and n["a1"].id not in by_node


def test_margin_and_edit_distance_filters():
    t, n = build_tree()
    # answers "\\boxed{7}." vs "\\boxed{8}." differ by < 20 characters: filtered at node a1? (one child only)
    strict = X.ppm_pairs(t, X.ExtractConfig(q_margin=2.5))
    assert strict == []
    n["a2"].q = 0.4  # Q(a1) - Q(a2) = 0.6 -> still kept with margin 0.5, dropped with 0.7
    assert any(p["node"] == n["a"].id for p in X.ppm_pairs(t, X.ExtractConfig(q_margin=0.5)))
    assert not any(p["node"] == n["a"].id for p in X.ppm_pairs(t, X.ExtractConfig(q_margin=0.7)))
    near = X.ppm_pairs(t, X.ExtractConfig(min_edit=10_000))
    assert near == []


def test_final_pairs_are_whole_trajectories():
    t, n = build_tree()
    final = [p for p in X.ppm_pairs(t) if p["kind"] == "final"]
    assert final
    for p in final:
        assert p["prefix"] == build_prompt(Q)
        assert p["pos"].endswith("\\boxed{7}.<end_of_answer>") and p["pos"].startswith("# Step 1")
        assert "<end_of_answer>" in p["neg"] and "\\boxed{7}" not in p["neg"]
    # highest-avg-Q correct without a failed step (the a-path; the c-path has the highest Q but an
    # error step) vs lowest-avg-Q wrong (b-path at -1)
    assert {p["pos_node"] for p in final} == {n["a1x"].id}
    assert {p["neg_node"] for p in final} <= {n["b1x"].id, n["a2x"].id}
    assert final[0]["neg_node"] == n["b1x"].id


def test_edit_distance():
    assert X.edit_distance("kitten", "sitting") == 3
    assert X.edit_distance("", "abc") == 3
    assert X.edit_distance("same", "same") == 0
    assert X.edit_distance("a" * 50, "b" * 50, cap=20) >= 20


def test_extract_cli_roundtrip(tmp_path):
    t, _ = build_tree()
    p = tmp_path / "roll.jsonl"
    p.write_text(json.dumps({"id": "p1", "gold": "7", "trace": t.to_json()}) + "\n" + '{"id": "p2", "tra')
    stats = X.main(["--traces", str(p), "--sft-out", str(tmp_path / "s.jsonl"), "--pairs-out", str(tmp_path / "p.jsonl")])
    assert stats["problems"] == 1 and stats["solved"] == 1 and stats["sft"] == 1
    rows = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert rows and all({"prefix", "pos", "neg"} <= set(r) for r in rows)
    assert all(r["problem_id"] == "p1" for r in rows)
