"""training.bootstrap: GSM8K calculator marks -> verified code steps in the rstar_app.steps format."""

import json
import re

import pytest

from rstar_app.steps import END_ANSWER, END_CODE, END_STEP, STOP, build_prompt, parse_step, render_step
from training import bootstrap as B
from training.common import run_programs

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                "in May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}
TRIVIAL_MARK = {  # a mark that only restates a number: the written expression before it is recovered
    "question": "A team scored 287 points in each of 4 rounds. How many points is that?",
    "answer": "The old team per round record is 1,148 because 287 x 4 = <<1148=1148>>1,148\n#### 1148",
}
NO_MARKS = {
    "question": "A pack has 12 cans for $6.00. How much is one can?",
    "answer": "The store has 12 cans for $6.00 so that's 6/12 = $0.50 a can\n#### 0.5",
}
EQUATION = {  # algebra in words, no checkable arithmetic: skipped
    "question": "x plus 3 is 5. What is x?",
    "answer": "Let x be the number. x + 3 = 5\nx = <<2=2>>2\n#### 2",
}


def split_chunks(text):
    """Cut a solution text the way generation does: at each stop marker (excluded)."""
    chunks, rest = [], text
    while rest:
        hits = [(rest.find(m), m) for m in STOP if rest.find(m) != -1]
        if not hits:
            assert rest.strip() == "", rest
            break
        i, m = min(hits)
        chunks.append((rest[:i], m))
        rest = rest[i + len(m):]
        if m == END_CODE:  # the executor's output block is not generated
            assert rest.startswith("\n<output>")
            rest = rest[rest.index("<end_of_output>") + len("<end_of_output>"):]
        rest = rest.lstrip("\n") if m != END_ANSWER else rest
    return chunks


def build_one(item, **kw):
    out, stats = B.build([item], executor="local", **kw)
    return out, stats


def test_natalia_two_steps_reuse_variable_and_verified():
    out, stats = build_one(NATALIA)
    assert stats["kept"] == 1
    rec = out[0]
    assert rec["gold"] == "72" and rec["n_steps"] == 3
    text = rec["text"]
    assert text.startswith("# Step 1: Natalia sold 48/2 = 24 clips in May.\nclips = 48 / 2\n" + END_STEP)
    # the second expression reads the earlier result from its variable, not the literal 24
    assert re.search(r"\n(\w+) = 48 \+ clips\n", text)
    assert "# Now print the final answer\nprint(" in text
    assert "<output>72.0<end_of_output>" in text
    assert text.endswith("<answer>The answer is \\boxed{72}.<end_of_answer>")


def test_text_parses_back_with_the_step_format():
    rec = build_one(NATALIA)[0][0]
    chunks = split_chunks(rec["text"])
    steps = [parse_step(t, stop) for t, stop in chunks]
    assert [s.kind for s in steps] == ["code", "code", "final_code", "answer"]
    assert steps[-1].answer == "72"
    # re-rendering reproduces the text exactly (what tree.text would build from the nodes)
    codes = [s.code for s in steps if s.code]
    ok, stdout, _ = run_programs([codes], executor="local")[0]
    assert ok and stdout.strip() == "72.0"
    rebuilt = "".join(render_step(s, stdout if s.kind == "final_code" else None) for s in steps)
    assert rebuilt == rec["text"]
    assert build_prompt(rec["question"]).endswith("<code>\n")


def test_trivial_mark_recovers_written_expression():
    rec = build_one(TRIVIAL_MARK)[0][0]
    assert "= 287 * 4\n" in rec["text"]
    assert "<output>1148<end_of_output>" in rec["text"]


def test_unmarked_arithmetic_is_recovered_when_it_checks():
    rec = build_one(NO_MARKS)[0][0]
    assert "= 6 / 12\n" in rec["text"] and "\\boxed{0.5}" in rec["text"]


def test_unverifiable_solutions_are_dropped():
    out, stats = build_one(EQUATION)
    assert out == [] and stats["no_trajectory"] == 1
    wrong = dict(NATALIA, answer=NATALIA["answer"].replace("#### 72", "#### 73"))
    out, stats = build_one(wrong)
    assert out == [] and stats["kept"] == 0


def test_steps_after_the_answer_are_dropped():
    item = dict(NATALIA, answer=NATALIA["answer"].replace(
        "\n#### 72", "\nShe has 72 - 2 = <<72-2=70>>70 left over.\n#### 72"))
    rec = build_one(item)[0][0]
    assert "70" not in rec["text"].split("# Now print")[0]


def test_literal_given_in_question_is_not_replaced():
    item = {"question": "Tom has 24 apples and buys 24 more, then doubles them. How many?",
            "answer": "He has 24+24 = <<24+24=48>>48 apples.\nDoubled: 48*2 = <<48*2=96>>96 apples.\n#### 96"}
    text = build_one(item)[0][0]["text"]
    assert "= 24 + 24\n" in text and "apples * 2" in text


def test_symbolic_input_refused(tmp_path):
    p = tmp_path / "gsm_symbolic.jsonl"
    p.write_text(json.dumps(NATALIA) + "\n")
    with pytest.raises(SystemExit):
        B.main(["--input", str(p), "--out", str(tmp_path / "o.jsonl")])


def test_input_holding_an_evaluation_problem_is_refused_whatever_its_name(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    (data / "gsm8k" / "test.jsonl").write_text(json.dumps(NATALIA) + "\n")  # NATALIA as a test problem
    monkeypatch.setenv("RSTAR_DATA", str(data))
    p = tmp_path / "my_train.jsonl"
    p.write_text(json.dumps(EQUATION) + "\n" + json.dumps({**NATALIA, "question": "  " + NATALIA["question"]}) + "\n")
    with pytest.raises(SystemExit, match=r"evaluation problems \{'gsm8k': 1\}"):
        B.main(["--input", str(p), "--out", str(tmp_path / "o.jsonl"), "--executor", "local"])
    assert not (tmp_path / "o.jsonl").exists()
    assert B.benchmark_overlap([EQUATION]) == {"gsm8k": 0}  # svamp / multiarith absent here: not checked


def test_cli_writes_jsonl(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [NATALIA, EQUATION, TRIVIAL_MARK]) + "\n")
    B.main(["--input", str(p), "--out", str(tmp_path / "o.jsonl"), "--executor", "local"])
    rows = [json.loads(l) for l in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["gsm8k-train-00000", "gsm8k-train-00002"]
    assert set(rows[0]) == {"id", "question", "gold", "text", "n_steps"}


def test_variable_names_are_identifiers_and_not_builtins():
    item = {"question": "q", "answer": "The sum is 3+4 = <<3+4=7>>7 print.\nThen 7*3 = <<7*3=21>>21 list.\n#### 21"}
    text = build_one(item)[0][0]["text"]
    names = re.findall(r"\n(\w+) = ", "\n" + text)
    assert names and all(n.isidentifier() and n not in ("print", "list") for n in names)
