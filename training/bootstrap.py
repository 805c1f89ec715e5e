"""Round 0: GSM8K train solutions -> verified code-augmented trajectories in the rstar_app.steps format.

GSM8K's worked solutions carry calculator marks `<<48/2=24>>`. Each sentence with a mark becomes one
code step: the sentence (mark removed) is the `# Step k:` comment and each mark in it one assignment
to a named variable. A later literal that equals exactly one earlier result (and is not a number
given in the question, nor a small everyday constant) is replaced by that variable, so the program
carries values forward like code would. Sentences whose arithmetic is written out without a mark
(`287 x 4 = 1,148`) are recovered when the expression evaluates to the stated number. Sentences
without arithmetic are folded into the next step's comment. The last step prints the variable that
equals the gold answer; the whole program is executed and kept only if its printed value equals
the gold `#### N`.

    python -m training.bootstrap --out training/data/bootstrap_gsm8k.jsonl
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import keyword
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.steps import ANSWER, END_ANSWER, Step, build_prompt, render_step  # noqa: E402
from training.common import REPO, executor_name, run_programs, write_jsonl  # noqa: E402

GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")
if not GSM8K_TRAIN.exists():
    GSM8K_TRAIN = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"

MARK = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# a number as written in GSM8K text: $1,148.50, 20%, .5
_NUMCORE = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUM_STRICT = rf"\$?{_NUMCORE}%?"
_OP = r"[-+*/x×÷−–]"
_TERM = rf"\(*{_NUM_STRICT}\)*"   # unambiguous on purpose: no nested optional spaces (backtracking)
INLINE = re.compile(rf"(?<![\w.])({_TERM}(?:\s*{_OP}\s*{_TERM})+)\s*=\s*(-?{_NUM_STRICT})")
VALUE_TEXT = re.compile(rf"^\s*-?{_NUM_STRICT}")
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z$(\d])")
QUESTION_NUM = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")

# literals that mean something by themselves (half, percent...): never replaced; unit constants
# (dozen, hours, minutes...) are replaced only by the result of the step just before
SMALL_CONSTANTS = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 1000}
UNIT_CONSTANTS = {12, 24, 30, 31, 52, 60, 365}

STOP = set("""a an the of in on at to for from by with and or but per each every is are was were be
been being will would can could should may might must has have had do does did done that this these
those it its he she they them his her their him we you i our your my me there here so then than as
if into out up down about after before over under all some any both total which who whom what when
where how many much more less left remaining now also just only still each other another one two
because therefore thus since hence amount number altogether across among between through around
during within without toward towards onto upon via against along beyond near off until while
three four five six seven eight nine ten half twice times same new old whole rest such own""".split())
VERBS = set("""sold sells sell buys buy bought pays pay paid costs cost earns earn earned makes make
made needs need spends spend spent gets get got gives give gave takes take took uses use used has
have had saves save saved adds add added eats eat ate reads read runs ran walks walked works worked
drives drove sees saw found finds find keeps kept collects collected received receives charges
charged owes owed won wins lost loses starts started ends ended means leaves leaving take multiply
divide subtract""".split())
RATE = {"every", "per", "each", "a", "an"}
RESERVED = set(keyword.kwlist) | set(dir(builtins)) | {"math", "answer", "print"}


@dataclass
class Calc:
    expr: ast.expr           # parsed expression (literals only)
    value: float             # value of the expression as Python computes it
    stated: str              # the number the text states
    after: str               # text right after the stated value (for naming)
    before: str              # text before the expression (for naming)


@dataclass
class Var:
    name: str
    value: float


@dataclass
class Trajectory:
    steps: list[tuple[str, list[str]]] = field(default_factory=list)  # (comment, code lines)
    final: str = ""          # variable printed at the end
    program: list[str] = field(default_factory=list)  # step codes, cumulative program
    text: str = ""


# ---------------------------------------------------------------------------------------------
# parsing arithmetic
# ---------------------------------------------------------------------------------------------

def to_float(text: str) -> float | None:
    t = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    pct = t.endswith("%")
    t = t.rstrip("%")
    try:
        v = float(t)
    except ValueError:
        return None
    return v / 100 if pct else v


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult,
            ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Load)


def parse_arith(src: str) -> tuple[ast.expr, float] | None:
    """Parse a pure-number arithmetic expression; (ast, value) or None."""
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            return None
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            if not (isinstance(node.right, ast.Constant) and abs(node.right.value) <= 10):
                return None
    try:
        value = eval(compile(tree, "<calc>", "eval"), {"__builtins__": {}}, {})  # literals only
    except (ArithmeticError, ValueError):
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return tree.body, float(value)


def normalize_written(src: str) -> str:
    """'$1,148 x 2' -> '1148 * 2'; '20%' -> '(20/100)'."""
    s = re.sub(r"(?<=\d),(?=\d{3})", "", src)
    s = s.replace("$", "").replace("×", "*").replace("÷", "/").replace("−", "-").replace("–", "-")
    s = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", s)
    s = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", s)
    while s.count("(") > s.count(")") and s.lstrip().startswith("("):
        s = s.lstrip()[1:]
    while s.count(")") > s.count("(") and s.rstrip().endswith(")"):
        s = s.rstrip()[:-1]
    return s


def is_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant))


def sentence_calcs(sentence: str) -> tuple[str, list[Calc]]:
    """The sentence with marks removed, and its calculations in order."""
    calcs: list[Calc] = []
    clean_parts, pos, clean_len = [], 0, 0
    marks = list(MARK.finditer(sentence))
    for m in marks:
        clean_parts.append(sentence[pos:m.start()])
        clean_len += m.start() - pos
        pos = m.end()
        before_clean = "".join(clean_parts)
        after = sentence[m.end():]
        vt = VALUE_TEXT.match(after)
        stated = vt.group(0).strip() if vt else m.group(2)
        after_words = after[vt.end():] if vt else after
        parsed = parse_arith(m.group(1))
        if parsed is None:
            continue
        node, value = parsed
        sv = to_float(m.group(2))
        if sv is None or not close(value, sv, 1e-6):
            continue
        if is_literal(node):
            # `287 x 4 = <<1148=1148>>1,148`: recover the written expression before the mark
            tail = re.search(rf"({_TERM}(?:\s*{_OP}\s*{_TERM})+)\s*=\s*\$?\s*$", before_clean)
            if not tail:
                continue
            rec = parse_arith(normalize_written(tail.group(1)))
            if rec is None or not close(rec[1], value, 1e-6) or is_literal(rec[0]):
                continue
            node, value = rec
            before_clean = before_clean[:tail.start()]
        else:
            # the expression written in words before the mark ("48/2 = ") is not part of the name
            before_clean = re.sub(rf"({_TERM}(?:\s*{_OP}\s*{_TERM})*)\s*=\s*\$?\s*$", "", before_clean)
        calcs.append(Calc(node, value, stated, after_words, before_clean))
    clean_parts.append(sentence[pos:])
    clean = "".join(clean_parts)
    if not marks:
        for m in INLINE.finditer(clean):
            rec = parse_arith(normalize_written(m.group(1)))
            sv = to_float(m.group(2))
            if rec is None or sv is None or is_literal(rec[0]) or not close(rec[1], sv, 1e-6):
                continue
            calcs.append(Calc(rec[0], rec[1], m.group(2), clean[m.end():], clean[:m.start()]))
    return clean, calcs


# ---------------------------------------------------------------------------------------------
# naming and substitution
# ---------------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z]+(?:'s)?", text)]


def name_for(calc: Calc, used: set[str], k: int) -> str:
    """A variable name from the words after the stated value ('24 clips in May' -> clips), else
    from the words before the expression, else v{k}."""
    after = re.split(r"[.,;:!?()\n]", calc.after, maxsplit=1)[0]
    after_words = _words(after)
    picked: list[str] = []
    if after_words and after_words[0] in RATE and len(after_words) > 1 and after_words[1] not in STOP:
        # '$0.2 per minute' -> weng_per_minute
        subject = [w for w in _words(re.split(r"[.,;:!?()\n]", calc.before)[-1])
                   if w not in STOP and w not in VERBS and len(w) > 2]
        picked = ([subject[-1].removesuffix("'s")] if subject else []) + ["per", after_words[1]]
        after_words = []
    for w in after_words[:4]:
        w = w.removesuffix("'s")
        if w in STOP or w in VERBS or len(w) < 2:
            if picked:
                break
            continue
        picked.append(w)
        if len(picked) == 2:
            break
    if not picked:
        before = re.split(r"[.,;:!?()\n]", calc.before)[-1]
        for w in reversed(_words(before)):
            w = w.removesuffix("'s")
            if w in STOP or w in VERBS or len(w) < 3 or w.endswith("ed") or w.endswith("ing"):
                if picked:
                    break
                continue
            picked.insert(0, w)
            if len(picked) == 2:
                break
    name = "_".join(picked)[:28].strip("_")
    name = re.sub(r"[^a-z_]", "", name)
    if not name or name in RESERVED or not name.isidentifier():
        name = f"v{k}" if not name else name + "_value"
    base, i = name, 2
    while name in used or name in RESERVED:
        name = f"{base}_{i}"
        i += 1
    used.add(name)
    return name


class _Substitute(ast.NodeTransformer):
    def __init__(self, variables: list[Var], question_numbers: set[float]):
        self.variables = variables
        self.question_numbers = question_numbers
        self.replaced = 0

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        v = node.value
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return node
        if float(v).is_integer() and int(v) in SMALL_CONSTANTS:
            return node
        if any(close(v, q) for q in self.question_numbers):
            return node  # a given quantity: ambiguous
        matches = [var for var in self.variables if close(var.value, v)]
        if len(matches) != 1:
            return node
        if float(v).is_integer() and int(v) in UNIT_CONSTANTS and matches[0] is not self.variables[-1]:
            return node
        self.replaced += 1
        return ast.copy_location(ast.Name(id=matches[0].name, ctx=ast.Load()), node)


def question_numbers(question: str) -> set[float]:
    out = set()
    for m in QUESTION_NUM.finditer(question):
        v = to_float(m.group(0))
        if v is not None:
            out.add(v)
            out.add(v / 100)  # "20%" may appear as 0.2
    return out


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------

def gold_of(answer: str) -> str | None:
    m = re.search(r"####\s*(.+?)\s*$", answer.strip())
    return m.group(1).replace(",", "").strip() if m else None


def split_sentences(solution: str) -> list[str]:
    out = []
    for line in solution.split("\n"):
        line = line.strip()
        if not line or line.startswith("####"):
            continue
        out.extend(s.strip() for s in SENTENCE_SPLIT.split(line) if s.strip())
    return out


def tidy_comment(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= 300 else text[:297].rstrip() + "..."


def convert(question: str, answer: str, *, strip_results: bool = False) -> Trajectory | None:
    """One GSM8K item -> a Trajectory (not yet executed), or None when nothing is checkable."""
    gold = gold_of(answer)
    gold_v = to_float(gold) if gold else None
    if gold_v is None:
        return None
    solution = answer.strip().rsplit("####", 1)[0]
    qnums = question_numbers(question)
    variables: list[Var] = []
    used: set[str] = set()
    traj = Trajectory()
    pending: list[str] = []      # sentences without arithmetic, folded into the next step
    for sentence in split_sentences(solution):
        clean, calcs = sentence_calcs(sentence)
        if not calcs:
            pending.append(clean)
            continue
        if strip_results:
            clean = re.sub(rf"\s*=\s*-?{_NUM_STRICT}", "", clean)
        lines = []
        for calc in calcs:
            sub = _Substitute(variables, qnums)
            expr = sub.visit(ast.fix_missing_locations(calc.expr))
            name = name_for(calc, used, len(variables) + 1)
            lines.append(f"{name} = {ast.unparse(expr)}")
            variables.append(Var(name, calc.value))
        comment = tidy_comment(" ".join([p if p[-1:] in ".!?:" else p + "." for p in pending] + [clean]))
        pending = []
        traj.steps.append((comment, lines))
    if not traj.steps:
        return None
    # print the last variable equal to the gold answer; steps after it are dropped
    for vi in range(len(variables) - 1, -1, -1):
        if close(variables[vi].value, gold_v, 1e-6):
            break
    else:
        return None
    final = variables[vi].name
    kept, seen = [], 0
    for comment, lines in traj.steps:
        kept.append((comment, lines))
        seen += len(lines)
        if seen > vi:
            kept[-1] = (comment, lines[: len(lines) - (seen - vi - 1)])
            break
    traj.steps, traj.final = kept, final
    traj.program = []
    for k, (comment, lines) in enumerate(traj.steps, 1):
        traj.program.append(f"# Step {k}: {comment}\n" + "\n".join(lines) + "\n")
    traj.program.append(f"# Now print the final answer\nprint({final})\n")
    return traj


def render(traj: Trajectory, output: str, gold: str) -> str:
    """The solution text that follows build_prompt(question), built with rstar_app.steps."""
    parts = [render_step(Step("code", code, code=code)) for code in traj.program[:-1]]
    final = traj.program[-1]
    parts.append(render_step(Step("final_code", final, code=final), output))
    parts.append(render_step(Step("answer", f"The answer is \\boxed{{{gold}}}.", answer=gold)))
    text = "".join(parts)
    assert text.endswith(END_ANSWER) and ANSWER in text
    return text


def matches_gold(stdout: str, gold: str) -> bool:
    lines = stdout.strip().splitlines()
    if not lines:
        return False
    got, want = to_float(lines[-1]), to_float(gold)
    return got is not None and want is not None and close(got, want, 1e-6)


def build(rows: list[dict], *, executor: str = "auto", strip_results: bool = False,
          id_prefix: str = "gsm8k-train-", offset: int = 0) -> tuple[list[dict], dict]:
    """Convert + execute + verify. Returns (records, stats)."""
    stats = {"items": len(rows), "no_trajectory": 0, "exec_error": 0, "wrong_output": 0, "kept": 0}
    cands = []
    for i, row in enumerate(rows):
        traj = convert(row["question"], row["answer"], strip_results=strip_results)
        if traj is None:
            stats["no_trajectory"] += 1
            continue
        cands.append((i, row, traj))
    results = run_programs([t.program for _, _, t in cands], executor=executor)
    out = []
    for (i, row, traj), (ok, stdout, err) in zip(cands, results):
        gold = gold_of(row["answer"])
        if not ok:
            stats["exec_error"] += 1
            continue
        if not matches_gold(stdout, gold):
            stats["wrong_output"] += 1
            continue
        build_prompt(row["question"])  # raises for a problem the app would refuse
        text = render(traj, stdout, gold)
        out.append({"id": f"{id_prefix}{offset + i:05d}", "question": row["question"], "gold": gold,
                    "text": text, "n_steps": len(traj.program)})
    stats["kept"] = len(out)
    return out, stats


def benchmark_overlap(rows: list[dict], data_dir: str | Path | None = None) -> dict[str, int]:
    """{benchmark: how many of `rows`' questions are its evaluation problems} (whitespace-normalised
    text; GSM8K test, SVAMP, MultiArith where the data directory has them): training on one would
    contaminate the table, whatever the input file is called."""
    from rstar_app.eval import load_bench
    norm = lambda q: " ".join(str(q).split()).lower()  # noqa: E731
    ours = {norm(r.get("question", "")) for r in rows}
    out = {}
    for bench in ("gsm8k", "svamp", "multiarith"):
        try:
            theirs = {norm(r["question"]) for r in load_bench(bench, data_dir)}
        except FileNotFoundError:
            continue
        out[bench] = len(ours & theirs)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=str(GSM8K_TRAIN), help="GSM8K-format JSONL (question, answer)")
    ap.add_argument("--out", default=str(REPO / "training" / "data" / "bootstrap_gsm8k.jsonl"))
    ap.add_argument("--limit", type=int, default=0, help="first N items only (0 = all)")
    ap.add_argument("--executor", default="auto", choices=["auto", "sandbox", "local"])
    ap.add_argument("--strip-results", action="store_true",
                    help="drop '= <value>' from comments (the step states intent, the code computes)")
    args = ap.parse_args(argv)
    if "symbolic" in Path(args.input).name.lower():
        sys.exit("refusing GSM-Symbolic data: it is built from GSM8K test problems (contamination)")
    rows = [json.loads(l) for l in open(args.input) if l.strip()]
    if args.limit:
        rows = rows[: args.limit]
    if any((overlap := benchmark_overlap(rows)).values()):
        sys.exit(f"refusing {args.input}: its questions include evaluation problems {overlap} (contamination)")
    t0 = time.time()
    out, stats = build(rows, executor=args.executor, strip_results=args.strip_results)
    n = write_jsonl(args.out, out)
    stats.update(seconds=round(time.time() - t0, 1), executor=executor_name(args.executor),
                 out=args.out, bytes=Path(args.out).stat().st_size,
                 mean_steps=round(sum(r["n_steps"] for r in out) / max(1, n), 2))
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
