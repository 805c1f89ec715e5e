"""Rebuild a tree from search events: the live view while a search runs, and replay of a trace.

The engine's search runs in a worker thread and owns its Tree; the UI never touches it until the
search returns. Instead the UI mirrors the tree from the events the search emits (`node` adds a
node, `update` changes q/n/status/...), which is exactly what replay of a recorded trace needs
too: replaying the first k events of `tree.events` gives the tree as it was after k events.
"""

from __future__ import annotations

from dataclasses import fields

from ..tree import Event, Node, Tree
from .mdtext import escape_dollars

_NODE_FIELDS = {f.name for f in fields(Node)}
# fields an `update` event may change; anything else in its data (e.g. "value") is derived
_UPDATABLE = {"q", "n", "status", "reason", "ppm", "answer", "correct", "error", "output"}


class TreeMirror:
    """A Tree rebuilt event by event; `stats` holds the latest rollout statistics."""

    def __init__(self, problem: str, prompt: str = "") -> None:
        self.tree = Tree(problem, prompt)
        self.stats: dict = {}
        self.rollouts = 0
        self.done = False
        self.count = 0  # events applied

    def apply(self, event: Event) -> None:
        tree, data = self.tree, event.data or {}
        self.count += 1
        if event.kind == "node" and event.node_id is not None:
            nid = int(event.node_id)
            if nid != len(tree.nodes):  # out of order or duplicate: ignore rather than corrupt
                return
            kw = {k: v for k, v in data.items() if k in _NODE_FIELDS and k != "children"}
            node = Node(**{**kw, "id": nid, "children": []})
            tree.nodes.append(node)
            if node.parent is not None and 0 <= node.parent < nid:
                tree.nodes[node.parent].children.append(nid)
        elif event.kind == "update" and event.node_id is not None:
            nid = int(event.node_id)
            if 0 <= nid < len(tree.nodes):
                node = tree.nodes[nid]
                for k, v in data.items():
                    if k in _UPDATABLE:
                        setattr(node, k, v)
        elif event.kind == "rollout":
            self.rollouts += 1
            self.stats = dict(data)
        elif event.kind == "done":
            self.done = True
            self.stats = {k: v for k, v in data.items() if k not in ("answer", "best_path")}
            tree.answer = data.get("answer")
            n = len(tree.nodes)
            tree.best_path = [int(i) for i in data.get("best_path") or [] if 0 <= int(i) < n]


def replay(trace: Tree, k: int, mirror: TreeMirror | None = None) -> TreeMirror:
    """The tree of a recorded search after its first k events (k is clamped to the event count).
    With `mirror` (a replay of this trace at an earlier k), only the events since are applied to
    it: Play's frames cost one pass over the events, not one each."""
    k = max(0, min(k, len(trace.events)))
    m = mirror if mirror is not None and mirror.count <= k else TreeMirror(trace.problem, trace.prompt)
    for ev in trace.events[m.count:k]:
        m.apply(ev)
    if k >= len(trace.events):
        # the full replay shows the final tree exactly (older traces may lack a 'done' event)
        m.tree.answer, m.tree.best_path = trace.answer, list(trace.best_path)
    return m


def event_label(trace: Tree, k: int) -> str:
    """A one-line description of event k (1-based: the event that the slider just applied), as
    Markdown-safe text (a shared trace's reasons and answers are untrusted)."""
    return escape_dollars(_event_words(trace, k))


def _event_words(trace: Tree, k: int) -> str:
    if k <= 0 or not trace.events:
        return "Start: only the problem (the root) exists."
    ev = trace.events[min(k, len(trace.events)) - 1]
    d = ev.data or {}
    if ev.kind == "node":
        what = d.get("kind", "step")
        st = d.get("status", "")
        return f"Event {k}: new node #{ev.node_id} ({what}, {st}) under #{d.get('parent')}"
    if ev.kind == "update":
        if "status" in d:
            return f"Event {k}: node #{ev.node_id} marked {d['status']}: {d.get('reason', '')}"
        v = d.get("value")
        return f"Event {k}: node #{ev.node_id} now Q={v:+.2f}, N={d.get('n')}" if v is not None \
            else f"Event {k}: node #{ev.node_id} updated"
    if ev.kind == "rollout":
        return f"Event {k}: rollout {d.get('rollouts', '?')} finished ({d.get('nodes', '?')} nodes)"
    if ev.kind == "done":
        return f"Event {k}: search done, answer {d.get('answer')!r}"
    return f"Event {k}: {ev.kind}"
