"""Node / Tree: values and visits, UCT, backup, the final-answer vote, events, and the trace JSON.

Pure Python on purpose: a trace can be read, replayed and drawn without loading any model.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from .selector import Selector

TRACE_FORMAT = "rstar-app-trace"
TRACE_VERSION = 1
MAX_TRACE_BYTES = 20_000_000
MAX_TRACE_NODES = 20_000
EVENTS_PER_NODE = 100  # a search emits a few per node (created, scored, backed up ~depth times)

# Node.status values
ROOT, OK, ERROR, DEAD, TERMINAL = "root", "ok", "error", "dead", "terminal"
# Tree.vote rules: majority over the top-k terminals by value, every terminal weighted by its PPM score,
# the learned selector (rstar_app/selector.py), or "auto": the selector when one is given, else top-k
VOTE_RULES = ("auto", "top-k", "ppm-weighted", "learned")


def resolve_vote(rule: str, has_selector: bool) -> str:
    """The rule a vote setting stands for: "auto" is "learned" with a selector, else "top-k"."""
    return ("learned" if has_selector else "top-k") if rule == "auto" else rule


@dataclass
class Node:
    """One step of a trajectory. `q` is the summed reward and `n` the visits, so Q = q / n."""

    id: int
    parent: int | None
    depth: int
    kind: str = "root"          # root | code | final_code | answer | invalid
    text: str = ""              # the step as generated (comment + code, or the answer sentence)
    code: str = ""              # this step's code ('' for root/answer)
    output: str = ""            # stdout of the cumulative program up to this step
    error: str = ""             # the executor's or parser's message when the step failed
    status: str = ROOT          # root | ok | error | dead | terminal
    reason: str = ""            # why a branch died, in words
    answer: str | None = None   # boxed answer for terminals
    correct: bool | None = None # vs ground truth, when the problem has one
    ppm: float | None = None    # PPM score in [-1, 1] when a PPM scored this node
    q: float = 0.0
    n: int = 0
    tokens: int = 0             # tokens generated for this step
    logprob: float | None = None  # their summed log-probability under the policy (Candidate.logprob)
    errors_in_row: int = 0      # consecutive failing steps on the path ending here
    children: list[int] = field(default_factory=list)

    @property
    def value(self) -> float:
        return self.q / self.n if self.n else 0.0

    @property
    def is_terminal(self) -> bool:
        return self.status in (TERMINAL, DEAD)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value"] = round(self.value, 6)
        return d


@dataclass
class Event:
    """What a search reports as it goes: 'node' (created), 'update' (q/n changed), 'rollout' (one
    finished), 'done'. `data` holds the node dict or the running statistics."""

    kind: str
    node_id: int | None = None
    data: dict = field(default_factory=dict)


class Cancelled(Exception):
    """Raised inside a search when the caller's should_stop() returns True; the tree is kept."""


def group_by_answer(nodes: list[Node]) -> list[list[Node]]:
    """Terminals grouped by equivalent answer, groups and members in the order given."""
    from .grading import same_answer
    groups: list[list[Node]] = []
    for nd in nodes:
        for g in groups:
            if same_answer(g[0].answer, nd.answer):
                g.append(nd)
                break
        else:
            groups.append([nd])
    return groups


class Tree:
    def __init__(self, problem: str, prompt: str, *, gold: str | None = None) -> None:
        self.problem = problem
        self.prompt = prompt
        self.gold = gold
        self.nodes: list[Node] = [Node(id=0, parent=None, depth=0)]
        self.meta: dict[str, Any] = {}        # strategy, config, models, timings, statistics
        self.events: list[Event] = []         # recorded for replay
        self.listeners: list[Callable[[Event], None]] = []
        self.answer: str | None = None
        self.best_path: list[int] = []

    # -- structure --
    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add(self, parent: Node, **fields) -> Node:
        node = Node(id=len(self.nodes), parent=parent.id, depth=parent.depth + 1, **fields)
        self.nodes.append(node)
        parent.children.append(node.id)
        self.emit(Event("node", node.id, node.to_dict()))
        return node

    def path(self, node: Node) -> list[Node]:
        """Root-first list of nodes from the root to `node` (inclusive)."""
        out = []
        cur: Node | None = node
        while cur is not None:
            out.append(cur)
            cur = self.nodes[cur.parent] if cur.parent is not None else None
        return out[::-1]

    def text(self, node: Node) -> str:
        """prompt + rendered steps up to `node`: what the policy continues and the PPM scores."""
        from .steps import Step, render_step
        parts = [self.prompt]
        for nd in self.path(node)[1:]:
            parts.append(render_step(Step(nd.kind, nd.text, code=nd.code), nd.output))
        return "".join(parts)

    def codes(self, node: Node) -> list[str]:
        """The code of every step on the path: what the executor runs cumulatively."""
        return [nd.code for nd in self.path(node)[1:] if nd.code and nd.status != ERROR]

    def terminals(self) -> list[Node]:
        return [nd for nd in self.nodes if nd.status == TERMINAL and nd.answer is not None]

    def emit(self, event: Event) -> None:
        self.events.append(event)
        for fn in self.listeners:
            fn(event)

    # -- MCTS arithmetic --
    def uct(self, node: Node, c: float) -> float:
        """UCT = Q + c * sqrt(ln N_parent / N); the exploration term is 0 while the parent's count is
        0. An unvisited node (N = 0) scores +inf, so it is tried before any sibling is revisited:
        here we depart from the reference, which scores it Q = 0 with no exploration term (a sibling
        that earned +1 would be revisited first). It matters only without a PPM (terminal-guided
        rounds, --no-ppm): with one, every live child starts with its score as one visit."""
        parent = self.nodes[node.parent] if node.parent is not None else node
        if node.n == 0:
            return math.inf
        explore = c * math.sqrt(math.log(parent.n) / node.n) if parent.n > 0 else 0.0
        return node.value + explore

    def backup(self, node: Node, reward: float) -> None:
        """Add `reward` to q and one visit to every node from `node` up to the root."""
        for nd in self.path(node):
            nd.q += reward
            nd.n += 1
            self.emit(Event("update", nd.id, {"q": nd.q, "n": nd.n, "value": nd.value}))

    # -- the answer --
    def vote(self, top_k: int, rule: str = "top-k", selector: "Selector | None" = None) -> str | None:
        """The final answer; sets best_path and meta["vote"] (the rule that chose). Terminals are
        ranked by value (ties: PPM score).
        rule "top-k": a majority vote over the top_k ranked terminals' equivalent answers.
        rule "ppm-weighted": every terminal votes with weight (PPM + 1) / 2, its score on [0, 1]
        (0.5 without a PPM, i.e. a plain vote over all terminals). Ties go to the answer whose
        best terminal ranks higher; best_path ends at that terminal.
        rule "learned": the answer `selector` scores highest; best_path ends at its best-PPM terminal.
        rule "auto": "learned" when a selector is given, else "top-k"."""
        rule = resolve_vote(rule, selector is not None)
        self.meta["vote"] = rule
        ranked = sorted(self.terminals(), key=lambda nd: (nd.value, nd.ppm or 0.0, -nd.id), reverse=True)
        if not ranked:
            self.answer, self.best_path = None, []
            return None
        if rule == "learned":
            if selector is None:
                raise ValueError('vote rule "learned" needs a selector (weights with ppm.selector in the manifest)')
            best = selector.choose(self)[0]
        else:
            if rule == "top-k":
                groups = group_by_answer(ranked[:top_k])
                weight: Callable[[list[Node]], float] = len
            elif rule == "ppm-weighted":
                groups = group_by_answer(ranked)
                weight = lambda g: sum(((nd.ppm if nd.ppm is not None else 0.0) + 1.0) / 2.0 for nd in g)  # noqa: E731
            else:
                raise ValueError(f"unknown vote rule {rule!r}; use one of {VOTE_RULES}")
            best = max(groups, key=lambda g: (weight(g), -ranked.index(g[0])))[0]
        self.answer = best.answer
        self.best_path = [nd.id for nd in self.path(best)]
        return self.answer

    def answer_counts(self) -> Counter:
        return Counter(nd.answer for nd in self.terminals())

    # -- trace JSON --
    def to_json(self, *, events: bool = True) -> dict:
        """The trace; events=False leaves the event log out (a tree to analyse, not to replay)."""
        return {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "problem": self.problem,
            "prompt": self.prompt,
            "gold": self.gold,
            "answer": self.answer,
            "best_path": self.best_path,
            "meta": self.meta,
            "nodes": [nd.to_dict() for nd in self.nodes],
            "events": [asdict(e) for e in self.events] if events else [],
        }

    @classmethod
    def read(cls, path: str | Path) -> "Tree":
        """Load a trace file; a malformed one raises ValueError naming the file."""
        try:
            return cls.from_json(Path(path).read_text())
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_json(cls, obj: dict | str | bytes) -> "Tree":
        """Load a trace; raises ValueError with a message a user can act on for anything malformed."""
        if isinstance(obj, (str, bytes)):
            if len(obj) > MAX_TRACE_BYTES:
                raise ValueError(f"trace is {len(obj):,} bytes; the limit is {MAX_TRACE_BYTES:,}")
            try:
                obj = json.loads(obj)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                raise ValueError(f"not a JSON trace: {e}") from None
        if not isinstance(obj, dict) or obj.get("format") != TRACE_FORMAT:
            raise ValueError(f"not an rstar-app trace (expected \"format\": \"{TRACE_FORMAT}\")")
        if obj.get("version") != TRACE_VERSION:
            raise ValueError(f"trace version {obj.get('version')!r} is not supported (this app reads version {TRACE_VERSION})")
        nodes = obj.get("nodes")
        if not isinstance(nodes, list) or not nodes or len(nodes) > MAX_TRACE_NODES:
            raise ValueError(f"trace must have 1..{MAX_TRACE_NODES} nodes")
        try:
            for key in ("answer", "gold"):
                if not isinstance(obj.get(key), (str, _OPT)):
                    raise ValueError(f"the trace's {key!r} must be text or null, got {str(obj.get(key))[:40]!r}")
            tree = cls(str(obj["problem"]), str(obj["prompt"]), gold=obj.get("gold"))
            names = set(Node.__dataclass_fields__)
            tree.nodes = []
            for i, d in enumerate(nodes):
                _check_fields(d, f"node {i}")
                nd = Node(**{k: v for k, v in d.items() if k in names})
                # the root has no parent, every other node an earlier one: paths end at the root
                if nd.id != i or (nd.parent is not None if i == 0 else not (isinstance(nd.parent, int) and 0 <= nd.parent < i)):
                    raise ValueError(f"node {i} has a bad id or parent")
                if not all(isinstance(c, int) and i < c < len(nodes) for c in nd.children):
                    raise ValueError(f"node {i} has bad children")
                tree.nodes.append(nd)
            tree.answer = obj.get("answer")
            tree.best_path = [int(i) for i in obj.get("best_path") or []]
            if tree.best_path and (tree.best_path[0] != 0 or any(
                    not 0 <= b < len(nodes) or tree.nodes[b].parent != a for a, b in zip(tree.best_path, tree.best_path[1:]))):
                raise ValueError("best_path is not a path down from the root")
            meta = obj.get("meta") or {}
            if not isinstance(meta, dict):
                raise ValueError("the trace's meta must be an object")
            # keys the app reads, of another type than it writes, are dropped rather than trusted
            tree.meta = {k: v for k, v in meta.items() if isinstance(v, _META_TYPES.get(k, object))}
            events = obj.get("events") or []
            if len(events) > EVENTS_PER_NODE * len(nodes):  # a replay would rebuild far more than the tree
                raise ValueError(f"{len(events):,} events for {len(nodes):,} nodes (at most {EVENTS_PER_NODE} a node)")
            tree.events = [_event(e, len(nodes), i) for i, e in enumerate(events)]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed trace: {e!r}") from None
        return tree

    def prefix(self, rollouts: int) -> "Tree":
        """The tree as it stood after its first `rollouts` rollouts (from meta["rollout_nodes"]), with
        no answer voted. Nodes keep their PPM scores and text; q, n and the status of inner nodes
        keep their final state (later backups are not undone, a node a later rollout found to be a
        dead end shows as dead), so only rules that read terminals and PPM scores are exact on a prefix."""
        ends = self.meta.get("rollout_nodes")
        if not ends:
            raise ValueError("this tree does not record its rollouts (saved before rollout_nodes was kept)")
        if rollouts < 1:
            raise ValueError(f"rollouts must be >= 1, got {rollouts}")
        keep = ends[min(rollouts, len(ends)) - 1]
        out = Tree(self.problem, self.prompt, gold=self.gold)
        out.nodes = [replace(nd, children=[c for c in nd.children if c < keep]) for nd in self.nodes[:keep]]
        out.meta = {**self.meta, "rollout_nodes": ends[:rollouts], "prefix_of": len(ends)}
        if self.meta.get("rollout_tokens"):
            out.meta["rollout_tokens"] = self.meta["rollout_tokens"][:rollouts]
        return out

    def walk(self) -> Iterator[Node]:
        yield from self.nodes


# -- trace validation: a shared trace file is untrusted input --
_NUM, _OPT = (int, float), type(None)
_FIELD_TYPES: dict[str, tuple] = {
    **{k: (str,) for k in ("kind", "text", "code", "output", "error", "status", "reason")},
    "answer": (str, _OPT), "correct": (bool, _OPT), "ppm": (*_NUM, _OPT), "logprob": (*_NUM, _OPT), "q": _NUM,
    **{k: (int,) for k in ("id", "depth", "n", "tokens", "errors_in_row")}, "parent": (int, _OPT), "children": (list,),
    "value": _NUM}  # "value" only in update events (Node.value is derived)
_COUNTS = ("depth", "n", "tokens", "errors_in_row")  # never negative
_META_TYPES: dict[str, type | tuple] = {"stats": dict, "config": dict, "vote": str, "stopped": (str, _OPT),
                                         "engine": str, "title": str, "strategy": str}
EVENT_KINDS = ("node", "update", "rollout", "done")


_CHOICES = {"kind": ("root", "code", "final_code", "answer", "invalid"),
            "status": (ROOT, OK, ERROR, DEAD, TERMINAL)}


def _check_fields(d: dict, where: str) -> None:
    """Node fields of the types a Tree holds, numbers finite, kinds and statuses the known ones: a
    figure or a replay must not fail on them, nor show a made-up status as text."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} is not an object")
    for k, allowed in _CHOICES.items():
        if k in d and d[k] not in allowed:
            raise ValueError(f"{where} has a bad {k!r}: {str(d[k])[:40]!r}")
    for k, types in _FIELD_TYPES.items():
        v = d.get(k)
        if k in d and (not isinstance(v, types) or isinstance(v, bool) and bool not in types
                       or (isinstance(v, float) and not math.isfinite(v)) or (k in _COUNTS and v < 0)):
            raise ValueError(f"{where} has a bad {k!r}: {str(v)[:40]!r}")


def _event(e: dict, n_nodes: int, i: int) -> Event:
    """One recorded event, checked: a known kind, a node it may touch ("node" events create the trace's
    own nodes 1..n-1, so a replay never grows past the tree), field types as for nodes."""
    kind, nid, data = e["kind"], e.get("node_id"), e.get("data") or {}
    if kind not in EVENT_KINDS or not (nid is None or isinstance(nid, int)) or not isinstance(data, dict):
        raise ValueError(f"event {i} is malformed")
    if kind in ("node", "update") and not (isinstance(nid, int) and (1 if kind == "node" else 0) <= nid < n_nodes):
        raise ValueError(f"event {i} names node {nid!r}, not one of the trace's")
    if kind in ("node", "update"):
        _check_fields(data, f"event {i}")
    if kind == "node" and not (data.get("id", nid) == nid and isinstance(data.get("parent"), int)
                               and 0 <= data["parent"] < nid):
        raise ValueError(f"event {i} adds node {nid} under a parent that does not precede it")
    return Event(kind, nid, dict(data))
