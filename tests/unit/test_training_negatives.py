"""Synthetic one-slip step pairs: the slip changes code and comment consistently, the comment's
value is the wrong code's executed value (replayed here independently), and a slip that leaves
the value unchanged or a comment that cannot be kept consistent gives no pair."""

import re

from rstar_app.steps import END_STEP, build_prompt
from training.negatives import fmt_value, make_pairs, slips, split_steps

Q = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did she sell?"
TEXT = ("# Step 1: Natalia sold 48/2 = 24 clips in May.\nclips = 48 / 2\n<end_of_step>\n"
        "# Step 2: Natalia sold 48+24 = 72 clips altogether in April and May.\nclips_2 = 48 + clips\n<end_of_step>\n"
        "# Now print the final answer\nprint(clips_2)\n<end_of_code>\n<output>72.0<end_of_output>\n"
        "<answer>The answer is \\boxed{72}.<end_of_answer>")


def _eval(codes: list[str]) -> dict:
    env: dict = {}
    for c in codes:
        exec(c, {}, env)  # noqa: S102 - fixed test strings
    return env


def test_split_steps_keeps_intermediate_code_steps_only():
    steps, rest = split_steps(TEXT)
    assert len(steps) == 2 and steps[0].startswith("# Step 1") and "print(clips_2)" in rest


def test_operator_slip_is_made_in_code_and_comment_formula():
    steps, _ = split_steps(TEXT)
    got = dict((d, t) for t, d in slips(steps[1], Q))
    t = got["operator 0 -> -"]
    assert "clips_2 = 48 - clips" in t and "48-24 = 72" in t  # value fixed later, after execution


def test_operand_slip_uses_another_number_from_the_problem():
    steps, _ = split_steps(TEXT)
    descs = [d for _, d in slips(steps[0], Q)]
    assert "operand 2 -> 48" in descs
    assert all(d.split(" -> ")[-1] in {"48", "-", "+", "*", "/"} for d in descs)


def test_comment_with_numbers_but_no_matching_formula_gives_no_slip():
    step = "# Step 1: She has 3 bags of 5 apples each.\napples = 3 * 5\n"
    assert slips(step, "She has 3 bags with 5 apples in each bag.") == []
    # no digits in the comment at all: the code slip alone is consistent with it
    plain = "# Step 1: Multiply the bags by the apples per bag.\napples = 3 * 5\n"
    assert {d for _, d in slips(plain, "3 bags, 5 apples each")} >= {"operator 0 -> /"}


def test_pairs_carry_the_executed_wrong_value_and_the_true_prefix():
    rows = [{"id": f"g{i}", "question": Q, "text": TEXT} for i in range(12)]
    pairs = make_pairs(rows, 50, seed=3, executor="local")
    assert 0 < len(pairs) <= 12
    steps, _ = split_steps(TEXT)
    for p in pairs:
        k = p["node"]
        assert p["prefix"] == build_prompt(Q) + "".join(s + END_STEP + "\n" for s in steps[:k])
        assert p["pos"] == steps[k] + END_STEP + "\n" and p["neg"] != p["pos"]
        assert p["kind"] == "synthetic" and p["q_pos"] > p["q_neg"]
        code = [s for s in steps[:k]] + [p["neg"].replace(END_STEP, "")]
        env = _eval(code)
        name = p["neg"].split("\n")[1].split("=")[0].strip()
        shown = re.search(r"= \$?([\d.]+)", p["neg"].split("\n")[0]).group(1)
        assert shown == fmt_value(float(env[name]))
        assert float(env[name]) != float(_eval(code[:-1] + [p["pos"].replace(END_STEP, "")])[name])


def test_a_slip_that_keeps_the_value_gives_no_pair():
    text = "# Step 1: One box of 7 is 7*1 = 7 pens.\npens = 7 * 1\n<end_of_step>\nprint(pens)\n<end_of_code>\n"
    rows = [{"id": "a", "question": "One box holds 7 pens.", "text": text}]
    # the only slips: 7/1 (same value) and operands from the problem (7 -> 7 is skipped)
    assert make_pairs(rows, 5, seed=0, executor="local") == []


def test_fmt_value():
    assert fmt_value(24.0) == "24" and fmt_value(0.25) == "0.25" and fmt_value(1 / 3) == "0.33"
    assert fmt_value(0.0005) == "0.0005"
