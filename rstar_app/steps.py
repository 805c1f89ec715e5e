"""The step format: prompt building, markers, parsing a generated chunk into a step, answer text.

A trajectory (rStar-Math's code-augmented chain of thought) looks like::

    <|user|>:
    {question}
    <|assistant|>: Let's think step by step and solve the problem with code.<code>
    # Step 1: <reasoning in words>
    x = 48 / 2
    <end_of_step>
    # Now print the final answer
    print(x + 48)
    <end_of_code>
    <output>72.0<end_of_output>
    <answer>The answer is \\boxed{72}<end_of_answer>

One tree node is one chunk the policy generated up to a stop marker. This module depends on
nothing heavy, so traces and training data can be read without a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CODE = "<code>"
END_STEP = "<end_of_step>"
END_CODE = "<end_of_code>"
OUTPUT = "<output>"
END_OUTPUT = "<end_of_output>"
ANSWER = "<answer>"
END_ANSWER = "<end_of_answer>"
MARKERS = (CODE, END_STEP, END_CODE, OUTPUT, END_OUTPUT, ANSWER, END_ANSWER)
STOP = (END_STEP, END_CODE, END_ANSWER)  # generation stops on these (excluded from the text)

USER = "<|user|>:"
ASSISTANT = "<|assistant|>:"
INSTRUCTION = "Let's think step by step and solve the problem with code."

MAX_PROBLEM_CHARS = 4000  # longer problems are refused: they would not fit the 135M model's context
MAX_OUTPUT_CHARS = 400    # executor output shown to the model after <end_of_code>

# Anything that could close the user turn or fake a step: our markers, the prompt's role tags, and
# chat-template tokens (ChatML, Llama, generic <|...|>).
_INJECTION = re.compile(
    r"<\s*/?\s*(code|end_of_step|end_of_code|output|end_of_output|answer|end_of_answer)\s*>"
    r"|<\|[^|<>]{0,40}\|>:?|\[/?INST\]|<</?SYS>>",
    re.IGNORECASE,
)

# Three worked examples for a base model that was never fine-tuned on the format.
FEW_SHOT = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "# Step 1: In May she sold half as many clips as in April.\nmay = 48 / 2\n" + END_STEP + "\n"
        "# Step 2: Add the clips sold in April and May.\ntotal = 48 + may\n" + END_STEP + "\n"
        "# Now print the final answer\nprint(total)\n" + END_CODE + "\n"
        + OUTPUT + "72.0" + END_OUTPUT + "\n" + ANSWER + "Natalia sold \\boxed{72} clips." + END_ANSWER,
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?",
        "# Step 1: Her pay per minute is the hourly rate divided by 60.\nper_minute = 12 / 60\n" + END_STEP + "\n"
        "# Step 2: Multiply the pay per minute by the minutes she worked.\nearned = per_minute * 50\n"
        + END_STEP + "\n# Now print the final answer\nprint(earned)\n" + END_CODE + "\n"
        + OUTPUT + "10.0" + END_OUTPUT + "\n" + ANSWER + "She earned \\boxed{10} dollars." + END_ANSWER,
    ),
    (
        "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
        "# Step 1: White fiber is half of the blue fiber.\nwhite = 2 / 2\n" + END_STEP + "\n"
        "# Step 2: Add blue and white fiber.\ntotal = 2 + white\n" + END_STEP + "\n"
        "# Now print the final answer\nprint(total)\n" + END_CODE + "\n"
        + OUTPUT + "3.0" + END_OUTPUT + "\n" + ANSWER + "It takes \\boxed{3} bolts." + END_ANSWER,
    ),
]


class ProblemError(ValueError):
    """A problem the app refuses, with a message meant for the user."""


def clean_problem(text: object) -> str:
    """Validate a user's problem and neutralise markers in it; raises ProblemError with a clear message."""
    if not isinstance(text, str):
        raise ProblemError("The problem must be text.")
    text = text.replace("\x00", "").replace("\r\n", "\n").strip()
    # drop other control characters (binary junk) but keep newlines and tabs
    text = "".join(ch for ch in text if ch in "\n\t" or ord(ch) >= 32)
    if not text:
        raise ProblemError("The problem is empty: type a math word problem first.")
    if len(text) > MAX_PROBLEM_CHARS:
        raise ProblemError(
            f"The problem is {len(text):,} characters long; the limit is {MAX_PROBLEM_CHARS:,}. "
            "Shorten it to the question itself."
        )
    # "<end_of_step>" -> "[end_of_step]": the model still reads the words, but no marker survives;
    # a stray "<|" (half a chat-template tag, e.g. one cut by the 40-character bound) is spaced apart.
    return _INJECTION.sub(lambda m: "[" + m.group(0).strip("<>").replace("|", "") + "]", text).replace("<|", "< |")


def build_prompt(problem: str, *, few_shot: bool = False) -> str:
    """The policy/PPM prompt up to and including `<code>`: the root of every tree."""
    shots = ""
    if few_shot:
        shots = "".join(_turn(q) + a + "\n\n" for q, a in FEW_SHOT)
    return shots + _turn(clean_problem(problem))


def _turn(question: str) -> str:
    return f"{USER}\n{question}\n{ASSISTANT} {INSTRUCTION}{CODE}\n"


@dataclass(frozen=True)
class Step:
    """One parsed chunk. kind: 'code' (intermediate), 'final_code' (ends the program), 'answer'
    (terminal) or 'invalid' (could not be parsed: the branch dies with `reason`)."""

    kind: str
    text: str             # the chunk as generated, without its stop marker
    code: str = ""        # Python to execute ('' for answers)
    comment: str = ""     # the reasoning in words (the '# ...' lines)
    answer: str | None = None  # contents of \boxed{...} for answers
    reason: str = ""


def parse_step(text: str, stop: str | None) -> Step:
    """Turn a generated chunk and the stop marker that ended it (None: length limit or EOS) into a Step."""
    body = text
    if body.lstrip().startswith(CODE):  # a model may repeat <code> at the start of its first step
        body = body.lstrip()[len(CODE):]
    if ANSWER in body or stop == END_ANSWER:
        inner = body.split(ANSWER, 1)[-1]
        if any(m in inner for m in (CODE, END_STEP, END_CODE, ANSWER)):
            return Step("invalid", text, reason="answer mixed with code markers")
        box = extract_boxed(inner)
        if box is None:
            return Step("invalid", text, reason="answer without \\boxed{}")
        if stop != END_ANSWER and stop is not None:
            return Step("invalid", text, reason="answer not closed")
        return Step("answer", inner, answer=box, comment=inner.strip())
    if stop is None:
        return Step("invalid", text, reason="step did not end with a marker (too long or end of text)")
    if any(m in body for m in MARKERS):
        return Step("invalid", text, reason="stray marker inside a step")
    if not body.strip():
        return Step("invalid", text, reason="empty step")
    lines = body.strip("\n").splitlines()
    if lines[0].lstrip().startswith("#"):  # " # Step 1" after "<code>" would be an IndentationError
        lines[0] = lines[0].lstrip()
    comment = "\n".join(l.strip()[1:].strip() for l in lines if l.strip().startswith("#"))
    kind = "final_code" if stop == END_CODE else "code"
    return Step(kind, body, code="\n".join(lines) + "\n", comment=comment)


def render_step(step: Step, output: str | None = None) -> str:
    """The text a step contributes to the trajectory (what the next generation is conditioned on)."""
    if step.kind == "answer":
        return ANSWER + step.text + END_ANSWER
    if step.kind == "final_code":
        out = (output or "")[-MAX_OUTPUT_CHARS:]
        return step.text.rstrip("\n") + "\n" + END_CODE + "\n" + OUTPUT + out.strip() + END_OUTPUT + "\n"
    return step.text.rstrip("\n") + "\n" + END_STEP + "\n"


def extract_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (balanced braces), or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = text.find("{", start)
        if i != -1 and text[start + len("\\boxed"):i].strip() == "":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j].strip()
        start = text.rfind("\\boxed", 0, start)
    return None
