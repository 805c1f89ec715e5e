"""The search tree as a Plotly figure (a plain JSON-able dict, drawn in the browser by plotly.js).

Layout: a tidy top-down tree (networkx holds the graph): leaves take consecutive x slots in
depth-first order with children sorted by id, each parent sits centred over its children, y is
minus the depth. New nodes get higher ids, so they are added to the right of their siblings and
nothing already drawn changes order while the search grows (a growing left subtree can only push
the subtrees right of it further right). The figure keeps a `uirevision`, so the user's zoom and
pan survive the streamed updates of the same search.

Encoding (the legend explains it):
  * colour = Q (mean backed-up value) on PuOr, a diverging scale safe for red/green colour
    blindness, centred at 0; unvisited nodes (no Q yet) are light grey;
  * size grows with visits N;
  * symbol = what the node is: root, a step whose code ran, failed code, another dead end, and
    answers graded correct / incorrect / not graded (no ground truth in the app);
  * the chosen path is drawn last (on top): thick edges and black rings round its nodes.
Large trees: subtrees under low-visit nodes are collapsed into one "+k" marker until at most
`max_nodes` nodes remain, and rarely visited nodes are faded.
"""

from __future__ import annotations

import html
import json
import math

import networkx as nx
from plotly.colors import diverging, sample_colorscale

from ..tree import DEAD, ROOT, TERMINAL, Node, Tree

# plotly.js knows only a few scales by name (PuOr is not one): pass the stops explicitly
COLORSCALE = [[i / (len(diverging.PuOr) - 1), c] for i, c in enumerate(diverging.PuOr)]
UNVISITED = "rgb(215,215,215)"
MAX_NODES = 150

# category -> (legend label, plotly symbol); order = drawing order (later on top)
CATEGORIES = {
    "root": ("problem (root)", "diamond"),
    "ok": ("step: code ran", "circle"),
    "failed": ("step: code failed", "x"),
    "dead": ("dead end", "triangle-down"),
    "collapsed": ("collapsed subtree (+k hidden)", "circle-dot"),
    "answer": ("answer (not graded)", "star"),
    "correct": ("answer: correct", "star-square"),
    "incorrect": ("answer: incorrect", "star-triangle-down"),
}


def category(node: Node) -> str:
    if node.status == ROOT:
        return "root"
    if node.status == TERMINAL:
        return {True: "correct", False: "incorrect"}.get(node.correct, "answer")
    if node.error:
        return "failed"
    if node.status == DEAD:
        return "dead"
    return "ok"  # OK, or ERROR without a message (should not happen)


def q_color(node: Node) -> str:
    if node.n <= 0:
        return UNVISITED
    v = max(-1.0, min(1.0, node.value))
    return sample_colorscale(COLORSCALE, [(v + 1) / 2])[0]


def marker_size(node: Node) -> float:
    return min(34.0, 9.0 + 5.0 * math.sqrt(max(node.n, 0)))


# -- which nodes to show --
def visible_nodes(tree: Tree, max_nodes: int = MAX_NODES) -> tuple[set[int], dict[int, int]]:
    """Ids to draw and, for collapsed nodes, how many descendants they hide.

    A node with fewer than t visits (and not on the chosen path) is drawn but its subtree is
    hidden; t is the smallest threshold that brings the drawing down to `max_nodes`."""
    nodes = tree.nodes
    if len(nodes) <= max_nodes:
        return set(range(len(nodes))), {}
    keep = set(tree.best_path)
    size = [1] * len(nodes)          # subtree sizes (children always have larger ids)
    for nd in reversed(nodes):
        if nd.parent is not None:
            size[nd.parent] += size[nd.id]

    def cut(t: int) -> tuple[set[int], dict[int, int]]:
        shown, hidden = set(), {}
        for nd in nodes:             # parents come before children
            if nd.parent is not None and (nd.parent not in shown or nd.parent in hidden):
                continue
            shown.add(nd.id)
            if nd.children and nd.n < t and nd.id not in keep and nd.id != 0:
                hidden[nd.id] = size[nd.id] - 1
        return shown, hidden
    # a higher threshold never shows more nodes: bisect for the smallest that fits (a linear scan
    # over every distinct visit count was quadratic, ~70 s for a 20,000-node uploaded trace)
    ts = sorted({nd.n for nd in nodes} | {10**9})
    lo, hi = 0, len(ts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(cut(ts[mid])[0]) <= max_nodes:
            hi = mid
        else:
            lo = mid + 1
    return cut(ts[lo])


def tidy_positions(tree: Tree, shown: set[int] | None = None) -> dict[int, tuple[float, float]]:
    """x, y for each shown node: leaves in depth-first order (children by id), parents centred."""
    g = nx.DiGraph()
    g.add_node(0)
    for nd in tree.nodes:  # in id order, so each node's successors are sorted by id
        if nd.parent is not None and (shown is None or nd.id in shown):
            g.add_edge(nd.parent, nd.id)
    pos: dict[int, tuple[float, float]] = {}
    next_x = 0.0
    for nid in nx.dfs_postorder_nodes(g, 0):
        kids = list(g.successors(nid))
        if kids:
            x = (pos[kids[0]][0] + pos[kids[-1]][0]) / 2
        else:
            x, next_x = next_x, next_x + 1.0
        pos[nid] = (x, -float(tree.nodes[nid].depth))
    return pos


# -- hover text --
def _short(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def hover(node: Node, hidden: int = 0) -> str:
    label = CATEGORIES[category(node)][0]
    q = f"{node.value:+.2f}" if node.n else "–"
    ppm = f"{node.ppm:+.2f}" if node.ppm is not None else "–"
    lines = [f"<b>#{node.id}</b> · {label} · depth {node.depth}", f"Q {q} · N {node.n} · PPM {ppm}"]
    comment = "\n".join(l.strip().lstrip("#").strip() for l in node.text.splitlines() if l.strip().startswith("#"))
    if node.status == TERMINAL or node.kind == "answer":
        lines.append("answer: " + html.escape(_short(str(node.answer if node.answer is not None else node.text))))
    elif comment:
        lines.append(html.escape(_short(comment)))
    if node.error:
        lines.append("error: " + html.escape(_short(node.error, 70)))
    elif node.output.strip():
        lines.append("printed: " + html.escape(_short(node.output.strip().splitlines()[-1], 60)))
    if node.reason:
        lines.append("died: " + html.escape(_short(node.reason, 70)))
    if hidden:
        lines.append(f"+{hidden} nodes hidden below (few visits)")
    lines.append("<i>click to inspect</i>")
    return "<br>".join(lines)


# -- the figure --
def tree_figure(tree: Tree | None, *, revision: str = "tree", title: str = "",
                max_nodes: int = MAX_NODES, height: int = 520) -> dict:
    """Plotly figure dict of `tree` (None: an empty placeholder figure)."""
    layout = {
        "uirevision": revision,  # same revision -> plotly.js keeps the user's zoom/pan
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 36 if title else 10, "b": 10},
        "xaxis": {"visible": False, "zeroline": False},
        "yaxis": {"visible": False, "zeroline": False},
        "showlegend": True,
        "legend": {"orientation": "h", "y": -0.02, "yanchor": "top", "x": 0, "font": {"size": 11}},
        "hovermode": "closest", "clickmode": "event", "dragmode": "pan",
        "plot_bgcolor": "white", "paper_bgcolor": "white",
    }
    if title:
        layout["title"] = {"text": html.escape(title), "x": 0.01, "font": {"size": 14}}
    if tree is None:
        layout["annotations"] = [{"text": "Type a problem and press Solve, or open an example.",
                                  "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper",
                                  "font": {"size": 15, "color": "#666"}}]
        return {"data": [], "layout": layout}
    shown, hidden = visible_nodes(tree, max_nodes)
    pos = tidy_positions(tree, shown)
    nodes = [tree.nodes[i] for i in sorted(pos)]
    path = [i for i in tree.best_path if i in pos]
    on_path = set(path)
    max_n = max((nd.n for nd in nodes), default=1) or 1

    data: list[dict] = []
    ex, ey = [], []
    for nd in nodes:
        if nd.parent is not None and nd.parent in pos:
            (x0, y0), (x1, y1) = pos[nd.parent], pos[nd.id]
            ex += [x0, x1, None]
            ey += [y0, y1, None]
    data.append({"type": "scatter", "mode": "lines", "x": ex, "y": ey, "hoverinfo": "skip",
                 "line": {"color": "rgba(120,120,120,0.55)", "width": 1.2}, "showlegend": False})
    if len(path) > 1:
        data.append({"type": "scatter", "mode": "lines", "name": "chosen path", "legendgroup": "path",
                     "x": [pos[i][0] for i in path], "y": [pos[i][1] for i in path], "hoverinfo": "skip",
                     "line": {"color": "#111", "width": 4}, "showlegend": False})

    for cat, (label, symbol) in CATEGORIES.items():
        group = [nd for nd in nodes if (("collapsed" if nd.id in hidden else category(nd)) == cat)]
        if not group:
            continue
        trace = {
            "type": "scatter", "mode": "markers", "name": label,
            "x": [pos[nd.id][0] for nd in group], "y": [pos[nd.id][1] for nd in group],
            "customdata": [nd.id for nd in group],
            "hovertext": [hover(nd, hidden.get(nd.id, 0)) for nd in group], "hoverinfo": "text",
            "marker": {
                "symbol": symbol,
                "size": [marker_size(nd) + (4 if cat in ("answer", "correct", "incorrect", "root") else 0)
                         for nd in group],
                "color": [q_color(nd) for nd in group],
                # fade rarely visited nodes so the well-explored part of a big tree stands out
                "opacity": [1.0 if (nd.id in on_path or len(nodes) < 40)
                            else round(0.35 + 0.65 * min(1.0, math.sqrt(nd.n / max_n) * 2), 3) for nd in group],
                "line": {"color": "#333", "width": 1},
            },
        }
        if cat == "collapsed":
            trace["mode"] = "markers+text"
            trace["text"] = [f"+{hidden[nd.id]}" for nd in group]
            trace["textposition"] = "bottom center"
            trace["textfont"] = {"size": 10, "color": "#555"}
        data.append(trace)

    if path:
        data.append({
            "type": "scatter", "mode": "markers", "name": "chosen path", "legendgroup": "path",
            "x": [pos[i][0] for i in path], "y": [pos[i][1] for i in path],
            "customdata": path, "hovertext": [hover(tree.nodes[i]) for i in path], "hoverinfo": "text",
            "marker": {"symbol": "circle-open", "color": "#111", "line": {"width": 3, "color": "#111"},
                       "size": [marker_size(tree.nodes[i]) + 9 for i in path]},
        })
    # colour bar for Q: an invisible trace that only carries the scale
    data.append({
        "type": "scatter", "mode": "markers", "x": [None], "y": [None], "showlegend": False,
        "hoverinfo": "skip",
        "marker": {"color": [0], "cmin": -1, "cmax": 1, "cmid": 0, "colorscale": COLORSCALE, "showscale": True,
                   "colorbar": {"title": {"text": "Q", "side": "top"}, "thickness": 10, "len": 0.6,
                                "tickvals": [-1, 0, 1], "ticktext": ["-1 bad", "0", "+1 good"], "x": 1.0}},
    })
    if hidden:
        layout["annotations"] = [{
            "text": f"{len(tree.nodes)} nodes: {sum(hidden.values())} in rarely visited subtrees are collapsed",
            "showarrow": False, "xref": "paper", "yref": "paper", "x": 0, "y": 1, "xanchor": "left",
            "font": {"size": 11, "color": "#555"}}]
    return {"data": data, "layout": layout}


def figure_json(tree: Tree | None, **kw) -> str:
    """The figure as the JSON string the tree view component draws."""
    return json.dumps(tree_figure(tree, **kw), separators=(",", ":"), allow_nan=False)


__all__ = ["tree_figure", "figure_json", "tidy_positions", "visible_nodes", "category", "CATEGORIES"]
