"""Classroom mode: walk through the chosen solution, spot the error in wrong branches, replay.

A teacher projects the page and reveals the solution one stage at a time: first a hint (the
step's reasoning in words), then its code and what the code printed. Stage s shows s // 2 full
steps, plus the hint of the next step when s is odd. The "find the error" gallery shows branches
the search rejected (code that crashed, wrong answers, dead ends) with the reason hidden behind a
"Reveal" toggle, for discussion. Replay redraws a recorded search after its first k events.
"""

from __future__ import annotations

import html
from typing import Iterator

from ..grading import same_answer
from ..solution import SolutionStep, solution_steps
from ..tree import DEAD, ERROR, TERMINAL, Node, Tree
from .events import TreeMirror, event_label, replay
from .figure import figure_json
from .mdtext import code_block, code_span, escape_dollars, step_title

MAX_GALLERY = 12


def steps_of(tree: Tree | None) -> list[SolutionStep]:
    if tree is None or not tree.best_path:
        return []
    return [s for s in solution_steps(tree) if s.kind != "answer"]


def stage_count(tree: Tree | None) -> int:
    """Number of stages: a hint and a reveal per step, then the answer."""
    return 2 * len(steps_of(tree)) + 1 if tree is not None and tree.best_path else 0


def reveal_markdown(tree: Tree | None, stage: int) -> str:
    """The classroom panel at `stage` (clamped): problem, revealed steps, next hint, answer."""
    if tree is None:
        return "## Classroom\n\nSolve a problem or open an example on the **Solve** tab first."
    lines = [f"## Problem\n\n{escape_dollars(tree.problem)}\n"]
    steps = steps_of(tree)
    if not steps:
        lines.append("_The search found no complete solution to walk through. Look at the "
                     "**find the error** gallery below to see where the branches went wrong._")
        return "\n".join(lines)
    total = stage_count(tree)
    stage = max(0, min(stage, total))
    full, hint = stage // 2, stage % 2 == 1
    for st in steps[:full]:
        lines.append(f"### Step {st.index}: {escape_dollars(step_title(st.comment)) or '(code)'}")
        if st.code:
            lines.append(code_block(st.code, "python"))
        if st.output:
            lines.append(f"**Printed:** {code_span(st.output[:300])}")
        lines.append("")
    if full < len(steps):
        nxt = steps[full]
        if hint:
            lines.append(f"### Step {nxt.index} — hint\n\n> {escape_dollars(step_title(nxt.comment)) or 'Write the code for this step.'}\n\n"
                         "_What code would do this? Press **Next** to reveal it._")
        else:
            lines.append(f"_Step {nxt.index} of {len(steps)}: press **Next** for a hint._")
    elif stage >= total:
        lines.append(f"## Answer\n\n$\\boxed{{{escape_dollars(tree.answer or '')}}}$")
    else:
        lines.append("_All steps shown: press **Next** for the final answer._")
    return "\n".join(lines)


def progress_text(tree: Tree | None, stage: int) -> str:
    total = stage_count(tree)
    if not total:
        return ""
    return f"Stage {max(0, min(stage, total))} of {total}"


# -- find the error --
def _why(node: Node, chosen: str | None) -> str:
    if node.status == TERMINAL:
        if node.correct is False:
            return f"The answer {node.answer} is wrong."
        if chosen is not None and not same_answer(node.answer, chosen):
            return f"The answer {node.answer} disagrees with the chosen answer {chosen}; the search trusted it less."
        return "This answer was not chosen."
    if node.error:
        return f"The code failed: {node.error}"
    return node.reason or "This branch ended here."


def error_cases(tree: Tree | None, limit: int = MAX_GALLERY) -> list[Node]:
    """Rejected branches worth discussing: failed code first, then wrong answers, then dead ends
    (format problems such as an answer without \\boxed{} come last: they teach less)."""
    if tree is None:
        return []
    chosen = tree.answer
    failed = [nd for nd in tree.nodes if nd.error and nd.status in (ERROR, DEAD)]
    wrong = [nd for nd in tree.terminals()
             if nd.correct is False or (chosen is not None and not same_answer(nd.answer, chosen))]
    dead = [nd for nd in tree.nodes if nd.status == DEAD and not nd.error and nd.kind != "invalid"]
    invalid = [nd for nd in tree.nodes if nd.kind == "invalid"]
    out, seen = [], set()
    for nd in failed + wrong + dead + invalid:
        if nd.id not in seen:
            seen.add(nd.id)
            out.append(nd)
    return out[:limit]


def gallery_html(tree: Tree | None) -> str:
    cases = error_cases(tree)
    if tree is None:
        return "<p class='rstar-muted'>No tree yet.</p>"
    if not cases:
        return "<p class='rstar-muted'>No rejected branches in this tree: every branch worked.</p>"
    cards = []
    for nd in cases:
        steps = []
        for p in tree.path(nd)[1:]:
            text = p.text.strip() if p.kind in ("answer", "invalid") else p.code.strip() or p.text.strip()
            lines = text.splitlines()
            text = "\n".join(lines[:8]) + ("\n…" if len(lines) > 8 else "")
            mark = " class='rstar-bad'" if p is nd else ""
            steps.append(f"<li{mark}><pre>{html.escape(text[:600])}</pre></li>")
        out = nd.output.strip().splitlines()[-1] if nd.output.strip() else ""
        printed = f"<p><b>Printed:</b> <code>{html.escape(out[:200])}</code></p>" if out and not nd.error else ""
        cards.append(
            f"<div class='rstar-card'><h4>Branch ending at node #{nd.id}</h4>"
            f"<ol>{''.join(steps)}</ol>{printed}"
            f"<details><summary>Reveal what went wrong</summary><p>{html.escape(_why(nd, tree.answer))}</p>"
            f"</details></div>")
    return (f"<p>{len(cases)} rejected branch(es). Can you find the mistake before revealing it?</p>"
            f"<div class='rstar-gallery'>{''.join(cards)}</div>")


# -- replay --
def replay_view(trace: Tree | None, k: int, revision: str = "replay",
                mirror: TreeMirror | None = None) -> tuple[str, str]:
    """(figure JSON, caption) of the recorded search after its first k events (continuing
    `mirror`, a replay of the same trace at an earlier k, when given)."""
    if trace is None:
        return figure_json(None, revision=revision), "No recorded search to replay yet."
    if not trace.events:
        return figure_json(trace, revision=revision), "This trace has no recorded events: showing the final tree."
    m = replay(trace, k, mirror)
    return figure_json(m.tree, revision=revision), event_label(trace, k) + f" ({len(m.tree.nodes)} nodes)"


def replay_frames(trace: Tree, ks: list[int], revision: str = "replay") -> Iterator[tuple[int, str, str]]:
    """(k, figure JSON, caption) for each k of an increasing list, as replay_view gives them, the
    events applied once for all frames."""
    m = TreeMirror(trace.problem, trace.prompt)
    for k in ks:
        yield (k, *replay_view(trace, k, revision, mirror=m))
