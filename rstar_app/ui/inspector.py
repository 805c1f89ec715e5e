"""Node inspector: everything about one node of the tree, as Markdown / code / text for the page.

Pure functions of (tree, node id) so the click handler, the keyboard picker, the tests and the
classroom view all show the same thing. Nothing here changes the tree.
"""

from __future__ import annotations

import math

from ..tree import DEAD, ERROR, ROOT, TERMINAL, Node, Tree
from .figure import CATEGORIES, category
from .mdtext import code_block, escape_dollars, prose, step_title

STATUS_WORDS = {
    ROOT: "the problem (root)",
    "ok": "step: its code ran",
    ERROR: "step: its code failed (the branch may still recover)",
    DEAD: "dead end",
    TERMINAL: "final answer",
}


def _comment(node: Node) -> str:
    return "\n".join(l.strip().lstrip("#").strip() for l in node.text.splitlines() if l.strip().startswith("#"))


def node_label(node: Node) -> str:
    """One line per node for the keyboard picker: id, depth, what it is, Q/N, first words."""
    what = CATEGORIES[category(node)][0]
    words = _comment(node) or (f"answer {node.answer}" if node.answer is not None else node.text)
    words = " ".join(words.split())[:60]
    q = f"Q {node.value:+.2f} N {node.n}" if node.n else "unvisited"
    return f"#{node.id} · depth {node.depth} · {what} · {q}" + (f" · {words}" if words else "")


def node_choices(tree: Tree | None) -> list[tuple[str, int]]:
    if tree is None:
        return []
    return [(node_label(nd), nd.id) for nd in tree.nodes]


def program(tree: Tree, node: Node) -> str:
    """The cumulative program the sandbox ran for this node, one block per step.

    Failed steps earlier on the path are shown commented out: the executor drops them (only the
    code of steps that ran is re-executed), so the program reads exactly as it was run."""
    parts = []
    path = tree.path(node)[1:]
    for k, nd in enumerate(path, 1):
        if not nd.code:
            continue
        head = f"# ── step {k} (node #{nd.id}) "
        if nd.status == ERROR and nd is not node:
            body = "\n".join("# " + l for l in nd.code.rstrip("\n").splitlines())
            parts.append(head + "failed: not part of the program ──\n" + body)
        else:
            parts.append(head.rstrip() + " ──\n" + nd.code.rstrip("\n"))
    return "\n\n".join(parts) if parts else "# (no code: this node is the problem or an answer sentence)"


def _fmt(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "–"
    if math.isinf(x):
        return "∞"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def inspect(tree: Tree | None, node_id: int | None, c_puct: float = 2.0) -> tuple[str, str, str, str]:
    """(header Markdown, step Markdown, program code, output-or-error text) for one node."""
    if tree is None:
        return ("_No tree yet: solve a problem or open an example._", "", "", "")
    try:
        node = tree.nodes[int(node_id)]
    except (TypeError, ValueError, IndexError):
        return (f"_Node {node_id!r} is not in this tree._", "", "", "")
    uct = tree.uct(node, c_puct) if node.parent is not None else None
    uct_txt = "∞ (not visited yet: tried first)" if uct is not None and math.isinf(uct) else _fmt(uct)
    on_path = node.id in tree.best_path
    header = [
        f"### Node #{node.id} · {STATUS_WORDS.get(node.status, node.status)}"
        + (" · on the chosen path" if on_path else ""),
        "",
        "| Q (mean value) | N (visits) | PPM score | UCT score | depth | kind | tokens | policy log-prob / token |",
        "|---|---|---|---|---|---|---|---|",
        f"| {_fmt(node.value) if node.n else '–'} | {node.n} | {_fmt(node.ppm)} | {uct_txt} | {node.depth} "
        f"| {node.kind} | {node.tokens} | {_fmt(node.logprob / node.tokens if node.logprob is not None and node.tokens else None)} |",
    ]
    if node.status == TERMINAL:
        graded = {True: " (correct)", False: " (incorrect)"}.get(node.correct, "")
        header += ["", f"**Answer:** ${escape_dollars(node.answer)}${graded}" if node.answer is not None
                   else "**Answer:** –"]
    if node.reason:
        header += ["", f"**Why this branch ended:** {escape_dollars(node.reason)}"]
    elif node.status == ERROR:
        header += ["", "**The code failed**, but the branch may continue: the next step can fix it "
                       "(the failed code is left out of the program)."]
    if node.status == ROOT:
        step = f"**Problem.** {escape_dollars(tree.problem)}"
    elif node.kind == "answer":
        step = f"**Answer sentence.** {prose(node.text.strip())}"
    else:
        comment = escape_dollars(step_title(_comment(node)))
        step = f"**Step {node.depth}.** " + (comment or "_(no comment: code only)_")
        if node.kind == "invalid":
            step += "\n\n_The model's text could not be read as a step:_\n\n" + code_block(node.text[:1500], "text")
    if node.error:
        out = f"Error:\n{node.error}" + (f"\n\nPrinted before the error:\n{node.output}" if node.output.strip() else "")
    elif node.output.strip():
        out = node.output
    elif node.status == ROOT:
        out = ""
    elif node.kind == "answer":
        printed = next((nd.output for nd in reversed(tree.path(node)[:-1]) if nd.output.strip()), "")
        out = ("(an answer sentence runs no code; the program above printed:)\n" + printed) if printed \
            else "(an answer sentence runs no code, and the program printed nothing)"
    else:
        out = "(nothing printed yet: only the final step prints)" if node.kind == "code" else "(no output)"
    return "\n".join(header), step, program(tree, node), out[-4000:]
