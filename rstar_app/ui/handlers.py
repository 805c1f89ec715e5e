"""What the page's events do, and the public `solve` API. No search logic: the engine searches,
session.stream_search runs it; these functions turn trees into what the components show.

Handlers return dicts {component: value}, so each one only names the components it changes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import gradio as gr

from ..config import STRATEGIES, SearchConfig
from ..solution import solution_markdown, solution_steps
from ..tree import MAX_TRACE_BYTES, Tree
from . import classroom, inspector
from .figure import figure_json
from .mdtext import code_block, code_span, escape_dollars, prose, step_title
from .session import EngineHolder, SearchLine, Session, SessionStore, stream_search

log = logging.getLogger("rstar_app.ui")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

# Budgets a public server accepts (the engine's SearchConfig allows more; one slow CPU does not).
LIMITS = {"rollouts": (1, 64), "candidates": (1, 8), "c_puct": (0.0, 10.0), "temperature": (0.0, 1.5),
          "seed": (0, 2**31 - 1), "time_limit": (0.0, float(os.environ.get("RSTAR_APP_MAX_SECONDS", 600)))}
DEFAULTS = {"strategy": "mcts", "rollouts": 8, "candidates": 4, "c_puct": 2.0, "temperature": 0.7, "seed": 0,
            "time_limit": min(180.0, LIMITS["time_limit"][1])}
# An uploaded trace is held in memory while its tab is open (~15x its file size once loaded): the
# page takes smaller files than the CLI (a search at the page's largest settings writes ~4 MB), and
# all sessions together hold at most UPLOADS_BUDGET bytes of them.
APP_TRACE_BYTES = min(MAX_TRACE_BYTES, 8_000_000)
UPLOADS_BUDGET = int(os.environ.get("RSTAR_APP_UPLOADS_MB", 100)) * 1_000_000
PICKER_EVERY_S = 2.0  # the node picker's choice list is refreshed less often than the figure


def make_config(strategy="mcts", rollouts=8, candidates=4, c_puct=2.0, temperature=0.7, seed=0,
                time_limit=DEFAULTS["time_limit"]) -> SearchConfig:
    """Validated settings; ValueError with a message a user can act on."""
    vals = {}
    for name, v in (("rollouts", rollouts), ("candidates", candidates), ("seed", seed)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a whole number, got {v!r}") from None
        if not f.is_integer():
            raise ValueError(f"{name} must be a whole number, got {v!r}")
        vals[name] = int(f)
    for name, v in (("c_puct", c_puct), ("temperature", temperature), ("time_limit", time_limit)):
        try:
            vals[name] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {v!r}") from None
    if vals["time_limit"] == 0:  # "unlimited" on a shared server means the server's cap
        vals["time_limit"] = LIMITS["time_limit"][1]
    for name, (lo, hi) in LIMITS.items():
        if not lo <= vals[name] <= hi:
            raise ValueError(f"{name} must be between {lo:g} and {hi:g} on this server, got {vals[name]:g}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return SearchConfig(strategy=strategy, **vals)


RULE_WORDS = {"learned": "the learned answer selector (PPM scores, answer counts, use of the problem's numbers)",
              "top-k": "a vote of the best terminals by value", "ppm-weighted": "a vote weighted by PPM score"}


def answer_card(tree: Tree | None) -> str:
    if tree is None:
        return "### Answer\n\n_No answer yet._"
    if tree.answer is None:
        return "### Answer\n\n_No answer found: every branch ended before printing a result "\
               "(try more rollouts or another seed)._"
    # every text here may come from a shared trace file: escaped (see mdtext.escape_dollars)
    counts = tree.answer_counts()
    votes = ", ".join(f"{escape_dollars(a)} ×{c}" for a, c in counts.most_common(5))
    st = tree.meta.get("stats", {})
    extra = f"  \nTerminal answers found: {votes}" if votes else ""
    rule = RULE_WORDS.get(tree.meta.get("vote", ""))
    if rule and votes:
        extra += f"  \nChosen by {rule}"
    if tree.gold is not None:
        extra += f"  \nGround truth: ${escape_dollars(tree.gold)}$"
    return (f"### Answer: $\\boxed{{{escape_dollars(tree.answer)}}}$\n\n"
            f"{_count(st.get('rollouts'))} rollouts · {len(tree.nodes)} nodes · {_count(st.get('tokens'))} tokens"
            f"{extra}")


def _count(x: object) -> str:
    return str(x) if isinstance(x, int) and not isinstance(x, bool) else "?"


def solution_view(tree: Tree | None) -> str:
    """The chosen solution for the page, built from its steps (not by re-reading solution_markdown,
    whose lines a step's text can make look like code fences): prose made LaTeX-safe and inert
    ('$12' stays money, a bare \\boxed{} renders, no HTML tag or image), code and output in blocks
    and spans their text cannot close."""
    if tree is None:
        return ""
    lines = [f"**Problem.** {prose(tree.problem)}", ""]
    if not tree.best_path:
        return "\n".join(lines + ["_No answer was found: every branch ended before printing a result._"])
    for st in solution_steps(tree):
        if st.kind == "answer":
            lines += [f"**Answer.** {prose(st.comment)}", ""]
            continue
        lines.append(f"{st.index}. {prose(step_title(st.comment)) or '(code)'}")
        if st.code:  # indented: the block belongs to the list item
            lines += ["", *("   " + line for line in code_block(st.code, "python").split("\n"))]
        if st.output:
            lines += ["", f"   Output: {code_span(st.output[:300])}"]
        lines.append("")
    lines.append(f"**Final answer:** $\\boxed{{{escape_dollars(tree.answer or '')}}}$")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:40].strip("-") or "problem"


class UI:
    """Holds the process-wide pieces (engine, line, sessions, examples) and the event handlers.

    `c` is the namespace of components built by layout.build; handlers refer to them by name."""

    def __init__(self, holder: EngineHolder, *, max_waiting: int = 4) -> None:
        self.holder = holder
        self.line = SearchLine(max_waiting)
        self.store = SessionStore()
        self.examples = load_examples()
        self.c = None  # set by layout.build

    # -- helpers --
    def session(self, request: gr.Request | None) -> Session:
        return self.store.get(getattr(request, "session_hash", None))

    def revision(self, s: Session) -> str:
        return f"{s.id}-{s.revision}"

    def inspector_out(self, tree: Tree | None, node_id, c_puct: float | None = None) -> dict:
        """The inspector for one node; UCT with the c the tree was searched with (else `c_puct`,
        the settings' slider, else 2)."""
        c = self.c
        used = (tree.meta.get("config") or {}).get("c_puct") if tree is not None else None
        if isinstance(used, (int, float)) and not isinstance(used, bool):
            c_puct = float(used)
        header, step, code, out = inspector.inspect(tree, node_id, 2.0 if c_puct is None else c_puct)
        return {c.insp_header: header, c.insp_step: step, c.insp_code: code, c.insp_output: out}

    def full_views(self, s: Session, tree: Tree | None, status: str, c_puct: float | None = None) -> dict:
        """Every view of a finished tree: figure, picker, inspector, answer, downloads, classroom."""
        c = self.c
        s.stage = 0
        select = tree.best_path[-1] if tree is not None and tree.best_path else (0 if tree is not None else None)
        out = {
            c.status: status,
            c.tree_view: figure_json(tree, revision=self.revision(s)),
            c.picker: gr.update(choices=inspector.node_choices(tree), value=select),
            c.answer: answer_card(tree),
            c.solution: solution_view(tree),
            **self.inspector_out(tree, select, c_puct),
            **self.download_out(s, tree),
            **self.classroom_out(s, tree),
        }
        out.update(self.replay_out(s, tree))
        return out

    def replay_out(self, s: Session, tree: Tree | None) -> dict:
        """The replay at its end (the finished tree), its slider spanning the tree's events."""
        c = self.c
        n_events = len(tree.events) if tree is not None else 0
        fig, caption = classroom.replay_view(tree, n_events, revision=self.revision(s) + "-replay")
        return {c.replay_slider: gr.update(maximum=max(1, n_events), value=n_events),
                c.replay_view: fig, c.replay_caption: caption}

    def download_out(self, s: Session, tree: Tree | None) -> dict:
        c = self.c
        if tree is None:
            return {c.dl_trace: gr.update(value=None, interactive=False),
                    c.dl_md: gr.update(value=None, interactive=False)}
        d = s.file_dir()
        name = _slug(tree.problem)
        trace = d / f"trace-{name}.json"
        trace.write_text(json.dumps(tree.to_json(), ensure_ascii=False), encoding="utf-8")
        md = d / f"solution-{name}.md"
        md.write_text(solution_markdown(tree) + "\n", encoding="utf-8")
        return {c.dl_trace: gr.update(value=str(trace), interactive=True),
                c.dl_md: gr.update(value=str(md), interactive=True)}

    def classroom_out(self, s: Session, tree: Tree | None) -> dict:
        c = self.c
        return {c.class_md: classroom.reveal_markdown(tree, s.stage),
                c.class_progress: classroom.progress_text(tree, s.stage),
                c.gallery: classroom.gallery_html(tree)}

    # -- solve (the page) --
    def solve(self, problem, strategy, rollouts, candidates, c_puct, temperature, seed, time_limit,
              request: gr.Request):
        c = self.c
        s = self.session(request)
        if s.running:
            yield {c.status: "A search is already running in this tab: press Stop first."}
            return
        try:
            config = make_config(strategy, rollouts, candidates, c_puct, temperature, seed, time_limit)
        except ValueError as e:
            yield {c.status: f"⚠️ {e}"}
            return
        s.running, s.stop = True, threading.Event()
        s.revision += 1
        last_picker, n_picker = 0.0, -1
        # once the search runs, nothing of the previous tree stays beside the new one: its node ids
        # in the picker, the inspector, answer and downloads would describe another problem's tree
        # (a refused problem leaves them all as they were)
        stale = {c.picker: gr.update(choices=[], value=None), c.answer: answer_card(None),
                 c.solution: solution_view(None), **self.inspector_out(None, None), **self.download_out(s, None),
                 **self.classroom_out(s, None), **self.replay_out(s, None)}
        try:
            for p in stream_search(self.holder, self.line, problem or "", config, s.stop,
                                   on_live=lambda m: setattr(s, "live", m)):
                msg = p.message + (f"  \n{p.notice}" if p.notice else "")
                if p.phase == "running" and stale:
                    yield {c.status: msg, c.tree_view: figure_json(p.tree, revision=self.revision(s)), **stale}
                    stale = {}
                elif p.phase == "running" and not p.changed:
                    yield {c.status: msg}
                elif p.phase == "running":
                    out = {c.status: msg, c.tree_view: figure_json(p.tree, revision=self.revision(s))}
                    if len(p.tree.nodes) != n_picker and time.monotonic() - last_picker > PICKER_EVERY_S:
                        out[c.picker] = gr.update(choices=inspector.node_choices(p.tree))
                        last_picker, n_picker = time.monotonic(), len(p.tree.nodes)
                    yield out
                elif p.phase == "done" and p.tree is not None:
                    s.tree, s.live, s.running, s.upload_bytes = p.tree, None, False, 0
                    yield self.full_views(s, p.tree, msg, config.c_puct)
                elif p.phase == "failed" and p.tree is not None:
                    # the partial tree becomes the open one, so the inspector reads what is drawn
                    s.tree, s.live, s.running, s.upload_bytes = p.tree, None, False, 0
                    yield self.full_views(s, p.tree, "⚠️ " + msg, config.c_puct)
                elif p.final:
                    yield {c.status: ("" if p.phase == "done" else "⚠️ ") + msg}
                else:
                    yield {c.status: msg}
        finally:
            s.running, s.live = False, None

    def stop(self, request: gr.Request):
        s = self.session(request)
        s.stop.set()
        return {self.c.status: "Stopping after the current step…" if s.running else "Nothing is running."}

    # -- inspector --
    def click_node(self, c_puct, evt: gr.EventData, request: gr.Request):
        s = self.session(request)
        node_id = (getattr(evt, "_data", None) or {}).get("node_id")
        tree = s.current()
        return {self.c.picker: gr.update(value=node_id), **self.inspector_out(tree, node_id, c_puct)}

    def pick_node(self, node_id, c_puct, request: gr.Request):
        s = self.session(request)
        return self.inspector_out(s.current(), node_id, c_puct)

    # -- examples, upload --
    def busy(self, s: Session) -> dict | None:
        """The refusal while a search runs in this tab (also a toast: the search's next progress
        line overwrites the status within a second), else None."""
        if not s.running:
            return None
        msg = ("The search is stopping: wait for its partial tree." if s.stop.is_set()
               else "A search is running in this tab: press Stop first.")
        gr.Warning(msg)
        return {self.c.status: msg}

    def open_example(self, index, request: gr.Request):
        s = self.session(request)
        if (refused := self.busy(s)) is not None:
            return refused
        try:
            title, tree = self.examples[int(index)]
        except (TypeError, ValueError, IndexError):
            return {self.c.status: "⚠️ No such example."}
        s.tree, s.upload_bytes = tree, 0
        s.revision += 1
        who = tree.meta.get("engine")
        out = self.full_views(s, tree, f"Opened the recorded example “{title}” (no search was run"
                                       + (f"; recorded with {who}" if who else "") + "). Press Solve to search it live.")
        out[self.c.problem] = tree.problem
        return out

    def upload_trace(self, path, request: gr.Request):
        s = self.session(request)
        c = self.c
        if (refused := self.busy(s)) is not None:
            return refused
        if not path:
            return {c.status: "⚠️ No file received."}
        try:
            size = os.path.getsize(path)
            if size > APP_TRACE_BYTES:
                raise ValueError(f"the file is {size:,} bytes; this page opens traces up to {APP_TRACE_BYTES:,} "
                                 "(`rstar-app` on the command line reads larger ones)")
            if self.store.upload_bytes() - s.upload_bytes + size > UPLOADS_BUDGET:
                raise ValueError("this server holds as many uploaded traces as it has room for; "
                                 "try again later, or run the app on your own machine")
            with open(path, "rb") as f:
                tree = Tree.from_json(f.read())
        except (OSError, ValueError) as e:  # the message may quote the file's content: escaped
            return {c.status: f"⚠️ Could not open this trace: {escape_dollars(str(e))}"}
        before = (s.tree, s.revision, s.stage, s.upload_bytes)
        s.tree, s.upload_bytes = tree, size
        s.revision += 1
        try:
            out = self.full_views(s, tree, f"Opened an uploaded trace ({len(tree.nodes)} nodes, "
                                           f"{len(tree.events)} events).")
        except Exception as e:  # noqa: BLE001 - a trace that loads but cannot be drawn: keep what was open
            s.tree, s.revision, s.stage, s.upload_bytes = before
            return {c.status: f"⚠️ Could not open this trace: {type(e).__name__}: {escape_dollars(str(e))}"}
        out[c.problem] = tree.problem
        return out

    # -- classroom --
    def step(self, delta, request: gr.Request):
        s = self.session(request)
        tree = None if s.running else s.tree  # the page shows no old walkthrough beside a new search
        total = classroom.stage_count(tree)
        s.stage = 0 if delta is None else max(0, min(total, s.stage + delta))
        return {self.c.class_md: classroom.reveal_markdown(tree, s.stage),
                self.c.class_progress: classroom.progress_text(tree, s.stage)}

    def step_next(self, request: gr.Request):
        return self.step(1, request)

    def step_back(self, request: gr.Request):
        return self.step(-1, request)

    def step_reset(self, request: gr.Request):
        return self.step(None, request)

    REPLAY_WAITS = "A search is running: its replay opens when it ends."

    def replay_at(self, k, request: gr.Request):
        s = self.session(request)
        if s.running:
            return {self.c.replay_caption: self.REPLAY_WAITS}
        try:
            fig, caption = classroom.replay_view(s.tree, int(k or 0), revision=self.revision(s) + "-replay")
        except Exception as e:  # noqa: BLE001 - a recorded event the figure cannot draw: say so, keep the page
            return {self.c.replay_caption: f"⚠️ Cannot show event {k} of this trace: {type(e).__name__}: {e}"}
        return {self.c.replay_view: fig, self.c.replay_caption: caption}

    def replay_play(self, request: gr.Request):
        """Animate the replay: about 12 frames per second of wall time, at most ~150 frames, each
        frame applying only the events since the last one. Stops when another tree opens."""
        s = self.session(request)
        tree, revision = s.tree, s.revision
        if s.running:
            yield {self.c.replay_caption: self.REPLAY_WAITS}
            return
        if tree is None or not tree.events:
            yield {self.c.replay_caption: "Nothing to replay yet."}
            return
        n = len(tree.events)
        stride = max(1, n // 150)
        try:
            for k, fig, caption in classroom.replay_frames(tree, list(range(0, n, stride)) + [n],
                                                          revision=self.revision(s) + "-replay"):
                if s.revision != revision or s.running or s.tree is not tree:
                    return  # a search started, or an example or upload replaced the tree
                yield {self.c.replay_view: fig, self.c.replay_caption: caption, self.c.replay_slider: k}
                time.sleep(0.08)
        except Exception as e:  # noqa: BLE001 - as in replay_at
            yield {self.c.replay_caption: f"⚠️ The replay stopped: {type(e).__name__}: {e}"}

    def status_api(self) -> dict:
        """Server figures: the search line, sessions, engine state and memory (including the
        models' KV-snapshot caches, bounded LRUs that legitimately grow the RSS until full)."""
        snap = 0
        for model in (getattr(self.holder.engine, "policy", None), getattr(self.holder.engine, "ppm", None)):
            snap += getattr(getattr(model, "cx", None), "snapshot_bytes", 0) or 0
        return {**self.line.snapshot(), "sessions": len(self.store), "engine_ready": self.holder.engine is not None,
                "engine_error": self.holder.error, "kv_snapshots_mb": round(snap / 2**20, 1), **server_status()}

    def page_status(self) -> str:
        """The status line when a page opens: say at once if the model failed to load."""
        if self.holder.error:
            return f"⚠️ {self.holder.error}"
        if not self.holder.ready:
            return "Ready (the model is loading in the background; the first search may wait for it)."
        return "Ready. Type a problem and press Solve, or open an example."

    def unload(self, request: gr.Request):
        self.store.drop(getattr(request, "session_hash", None))

    # -- the public API --
    def api_solve(self, problem: str, rollouts: int = 8, candidates: int = 4, c_puct: float = 2.0,
                  temperature: float = 0.7, seed: int = 0, time_limit: float = DEFAULTS["time_limit"],
                  strategy: str = "mcts") -> Iterator[tuple[str, str, dict]]:
        """Solve a math word problem by tree search over code steps.

        Returns (answer, solution as Markdown, the search tree as trace JSON). The answer is '' when
        no branch reached one. While the search waits or runs, about one intermediate result per second
        is ('', a status line, {}).
        Bad input, settings out of range or a full line raise an error with a message."""
        try:
            config = make_config(strategy, rollouts, candidates, c_puct, temperature, seed, time_limit)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        stop = threading.Event()
        for p in stream_search(self.holder, self.line, problem or "", config, stop):
            if p.phase in ("refused", "busy", "failed"):
                raise gr.Error(p.message)
            if p.phase == "done":
                tree = p.tree
                if tree is None:
                    raise gr.Error(p.message)
                md = solution_markdown(tree)
                if p.notice:
                    md = f"> {p.notice}\n\n{md}"
                trace = tree.to_json()
                trace["meta"] = {**trace["meta"], "queue_wait_s": round(p.waited, 3)}
                yield (tree.answer or "", md, trace)
                return
            # progress for streaming clients; these yields are also where a cancel can land
            yield ("", p.message + (f"\n{p.notice}" if p.notice else ""), {})


def server_status() -> dict:
    """Process figures for monitoring and the load test (an undocumented endpoint). psutil is
    optional (a dev dependency): without it only this process's RSS is read from /proc."""
    try:
        import psutil
    except ImportError:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return {"rss_mb": round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)}
        except (OSError, ValueError, IndexError):
            return {}
    me = psutil.Process()
    kids, n = 0, 0
    for ch in me.children(recursive=True):
        try:
            kids += ch.memory_info().rss
            n += 1
        except psutil.Error:
            pass
    return {"rss_mb": round(me.memory_info().rss / 2**20, 1), "children_rss_mb": round(kids / 2**20, 1),
            "children": n, "threads": me.num_threads()}


def load_examples(directory: Path = EXAMPLES_DIR) -> list[tuple[str, Tree]]:
    """The pre-recorded traces shipped with the app (no search runs at start-up)."""
    out = []
    for path in sorted(directory.glob("*.json")):
        try:
            tree = Tree.from_json(path.read_bytes())
        except (OSError, ValueError) as e:
            log.warning("skipping example %s: %s", path.name, e)
            continue
        title = tree.meta.get("title") or " ".join(tree.problem.split()[:8]) + "…"
        out.append((title, tree))
    return out
