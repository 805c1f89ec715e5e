"""The chosen solution as readable steps and Markdown (CLI output, app answer card, downloads)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .tree import Tree


_STEP_LABEL = re.compile(r"^Step\s*\d+\s*[:.]\s*", re.IGNORECASE)


@dataclass(frozen=True)
class SolutionStep:
    index: int
    node_id: int
    kind: str
    comment: str
    code: str
    output: str
    text: str


def solution_steps(tree: Tree, path: list[int] | None = None) -> list[SolutionStep]:
    """The steps along `path` (default: the chosen best path), root excluded. Output is what the
    cumulative program printed new at this step."""
    ids = tree.best_path if path is None else path
    out, prev = [], ""
    for k, i in enumerate(ids[1:], 1):
        nd = tree.nodes[i]
        new = nd.output[len(prev):] if nd.output.startswith(prev) else nd.output
        prev = nd.output or prev
        comment = "\n".join(l.strip().lstrip("#").strip() for l in nd.text.splitlines() if l.strip().startswith("#"))
        comment = _STEP_LABEL.sub("", comment, count=1)  # "Step 2: ..." -> "...": the index is shown apart
        code = "\n".join(l for l in nd.code.splitlines() if not l.strip().startswith("#")).strip()
        out.append(SolutionStep(k, nd.id, nd.kind, comment if nd.kind != "answer" else nd.text.strip(),
                                code, new.strip(), nd.text))
    return out


def solution_markdown(tree: Tree) -> str:
    lines = [f"**Problem.** {tree.problem}", ""]
    if not tree.best_path:
        lines.append("_No answer was found: every branch ended before printing a result._")
        return "\n".join(lines)
    for st in solution_steps(tree):
        if st.kind == "answer":
            lines += [f"**Answer.** {st.comment}", ""]
            continue
        lines.append(f"{st.index}. {st.comment or '(code)'}")
        if st.code:
            lines += ["", "   ```python", *("   " + l for l in st.code.splitlines()), "   ```"]
        if st.output:
            lines += ["", f"   Output: `{st.output[:300]}`"]
        lines.append("")
    lines.append(f"**Final answer:** $\\boxed{{{tree.answer}}}$")
    return "\n".join(lines)
