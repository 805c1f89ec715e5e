"""Per-session state, the search line, and running one search as a stream of progress updates.

Why our own line in front of the engine: one model sits in memory and runs one search at a time
(Engine.lock). Gradio's queue could hold the waiting requests too, but then our code does not run
while a request waits, so it cannot say "busy, you are number k", cannot let a user leave the line
with Stop, and a full Gradio queue would also refuse the page's cheap events (clicks). So the
search events share one Gradio concurrency id whose limit only bounds worker threads, and
`SearchLine` keeps the order: one search runs, at most `max_waiting` wait (each told its place),
anyone beyond that gets an immediate, clear "busy" answer.

`stream_search` is shared by the page and the public API: it validates the problem, takes a place
in line, runs `engine.solve` in a worker thread, mirrors the tree from the events the search emits
and yields a `Progress` a few times per second. Stop (or a client that went away) makes
`should_stop` true; the engine then returns the partial tree at its next check.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..config import SearchConfig
from ..steps import ProblemError, clean_problem
from ..tree import Tree
from .events import TreeMirror
from .mdtext import escape_dollars

log = logging.getLogger("rstar_app.ui")

THROTTLE_S = 0.35        # at most ~3 tree updates per second per search
HEARTBEAT_S = 1.0        # yield at least this often, even with nothing new (see stream_search)
STALL_S = 45.0           # nobody pulled updates for this long: the client is gone, stop the search


class Busy(Exception):
    """The line is full; the message says so in words."""


class SearchLine:
    """FIFO of search tickets: the head runs, up to `max_waiting` wait behind it."""

    def __init__(self, max_waiting: int = 4) -> None:
        self.max_waiting = max_waiting
        self._line: deque[object] = deque()
        self._cond = threading.Condition()
        self.served = 0
        self.rejected = 0
        self.ended: Counter = Counter()  # how searches ended: "done", "cancelled", "time limit", ...

    def join(self) -> object:
        with self._cond:
            if len(self._line) > self.max_waiting:
                self.rejected += 1
                raise Busy(f"Busy: one search is running and {len(self._line) - 1} are waiting "
                           f"(the limit is {self.max_waiting}). Please try again in a minute.")
            ticket = object()
            self._line.append(ticket)
            return ticket

    def position(self, ticket: object) -> int:
        """0 = this ticket's turn; k = k-th in line behind the running search; -1 = not in line."""
        with self._cond:
            try:
                return self._line.index(ticket)
            except ValueError:
                return -1

    def wait_turn(self, ticket: object, timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: not self._line or self._line[0] is ticket, timeout)
            return bool(self._line) and self._line[0] is ticket

    def leave(self, ticket: object) -> None:
        with self._cond:
            try:
                if self._line and self._line[0] is ticket:
                    self.served += 1
                self._line.remove(ticket)
            except ValueError:
                pass
            self._cond.notify_all()

    @property
    def length(self) -> int:
        with self._cond:
            return len(self._line)

    def snapshot(self) -> dict:
        with self._cond:
            n = len(self._line)
            ended = dict(self.ended)
        return {"running": min(n, 1), "waiting": max(n - 1, 0), "max_waiting": self.max_waiting,
                "served": self.served, "rejected_busy": self.rejected, "ended": ended}

    def record_end(self, how: str) -> None:
        with self._cond:
            self.ended[how] += 1


class EngineHolder:
    """Loads the engine once per process, in the background so the page opens at once."""

    def __init__(self, factory: Callable[[], object]) -> None:
        self._factory = factory
        self._ready = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self.engine = None
        self.error: str | None = None

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="rstar-engine-load", daemon=True).start()

    def _load(self) -> None:
        try:
            self.engine = self._factory()
        except Exception as e:  # WeightsError / ModelFileError carry the file and the fix
            log.exception("loading the engine failed")
            self.error = f"The solver could not start: {e}"
        finally:
            self._ready.set()

    def get(self, timeout: float) -> object | None:
        self.start()
        self._ready.wait(timeout)
        return self.engine

    @property
    def ready(self) -> bool:
        return self._ready.is_set()


@dataclass
class Progress:
    """One update of a search for the page or the API.

    phase: refused (bad input or settings) | busy (line full) | waiting | loading | running |
    done (finished, stopped or out of budget: `tree` is the engine's tree) | failed."""

    phase: str
    message: str
    tree: Tree | None = None
    stats: dict = field(default_factory=dict)
    notice: str = ""
    waited: float = 0.0   # seconds spent in line before the search started
    changed: bool = True  # False for heartbeats: the tree is the same as in the last update

    @property
    def final(self) -> bool:
        return self.phase in ("refused", "busy", "done", "failed")


def problem_notice(problem: str) -> str:
    """A note when clean_problem changed more than whitespace/control characters (markers)."""
    plain = "".join(ch for ch in problem.replace("\x00", "").replace("\r\n", "\n").strip()
                    if ch in "\n\t" or ord(ch) >= 32)
    try:
        cleaned = clean_problem(problem)
    except ProblemError:
        return ""
    if cleaned != plain:
        return ("Note: the problem contained step or chat markers (like <end_of_step> or <|user|>); "
                "they were turned into plain text such as [end_of_step] so they cannot end the problem early.")
    return ""


def status_text(mirror: TreeMirror, config: SearchConfig, started: float) -> str:
    t = mirror.tree
    tokens = mirror.stats.get("tokens", sum(nd.tokens for nd in t.nodes))
    return (f"Searching: rollout {min(mirror.rollouts + 1, config.rollouts)}/{config.rollouts} · "
            f"{len(t.nodes)} nodes · {tokens} tokens · {time.monotonic() - started:.0f} s")


def stream_search(holder: EngineHolder, line: SearchLine, problem: str, config: SearchConfig,
                  stop: threading.Event, *, on_live: Callable[[TreeMirror], None] | None = None,
                  throttle: float = THROTTLE_S, load_timeout: float = 300.0) -> Iterator[Progress]:
    """Run one search, yielding Progress updates; the last one has `final` set.

    Closing the generator (Gradio does this on cancel) stops the search as Stop does. While the
    search runs, an update comes at least every HEARTBEAT_S seconds (`changed` False when only
    the elapsed time moved)."""
    try:
        clean_problem(problem)
    except ProblemError as e:
        yield Progress("refused", str(e))
        return
    notice = problem_notice(problem)
    try:
        ticket = line.join()
    except Busy as e:
        yield Progress("busy", str(e))
        return
    worker: threading.Thread | None = None
    joined = time.monotonic()
    try:
        # -- wait for our turn, telling the user their place --
        while not line.wait_turn(ticket, timeout=1.0):
            if stop.is_set():
                yield Progress("done", "Left the line: no search was run.", notice=notice)
                return
            k = line.position(ticket)
            yield Progress("waiting", f"Busy: one search runs at a time here; you are number {k} in line. "
                                      "Press Stop to leave the line.", notice=notice)
        if not holder.ready:
            yield Progress("loading", "Loading the model (once per server start)…", notice=notice)
        engine = holder.get(load_timeout)
        if engine is None:
            yield Progress("failed", holder.error or "The model is still loading; try again shortly.")
            return
        if stop.is_set():
            yield Progress("done", "Stopped before the search started.", notice=notice)
            return

        # -- run the search in a worker thread, mirror its events here --
        events: queue.SimpleQueue = queue.SimpleQueue()
        result: dict = {}
        last_pull = [time.monotonic()]
        END = object()

        def should_stop() -> bool:
            return stop.is_set() or time.monotonic() - last_pull[0] > STALL_S

        def work() -> None:
            try:
                result["tree"] = engine.solve(problem, config, on_event=events.put, should_stop=should_stop)
                line.record_end(result["tree"].meta.get("stopped") or "done")
            except ProblemError as e:
                result["refused"] = str(e)
                line.record_end("refused")
            except Exception as e:  # the app keeps serving; the log has the traceback
                log.exception("search failed")
                result["failed"] = f"The search failed: {type(e).__name__}: {e}"
                line.record_end("failed")
            finally:
                line.leave(ticket)
                events.put(END)

        waited = time.monotonic() - joined
        mirror = TreeMirror(problem)
        if on_live is not None:
            on_live(mirror)
        started = time.monotonic()
        thread = threading.Thread(target=work, name="rstar-search", daemon=True)
        thread.start()  # may raise (no threads left): then the finally below still leaves the line
        worker = thread
        yield Progress("running", "Searching: starting…", mirror.tree, notice=notice)
        last_yield, dirty, finished = time.monotonic(), False, False
        while not finished:
            try:
                item = events.get(timeout=throttle)
            except queue.Empty:
                item = None
            last_pull[0] = time.monotonic()
            while item is not None:
                if item is END:
                    finished = True
                    break
                mirror.apply(item)
                dirty = True
                try:
                    item = events.get_nowait()
                except queue.Empty:
                    item = None
            since = time.monotonic() - last_yield
            # Heartbeats matter: Gradio cancels a generator only between two of its yields (its
            # worker thread cannot be interrupted), so a search that yields nothing while the
            # model writes a long step could not be cancelled promptly.
            if not finished and ((dirty or stop.is_set()) and since >= throttle or since >= HEARTBEAT_S):
                msg = "Stopping after the current step…" if stop.is_set() else status_text(mirror, config, started)
                yield Progress("running", msg, mirror.tree, dict(mirror.stats), notice=notice, changed=dirty)
                last_yield, dirty = time.monotonic(), False
        worker.join()
        if "refused" in result:
            yield Progress("refused", result["refused"])
        elif "failed" in result:
            yield Progress("failed", result["failed"], mirror.tree)
        else:
            tree: Tree = result["tree"]
            st = tree.meta.get("stats", {})
            why = tree.meta.get("stopped")
            head = {"cancelled": "Stopped: partial tree kept.", "time limit": "Time limit reached.",
                    "token budget": "Token budget used up."}.get(why, "Done.")
            ans = f"answer {escape_dollars(tree.answer)}" if tree.answer is not None else "no answer found"
            yield Progress("done", f"{head} {ans} · {st.get('rollouts', 0)} rollouts · {len(tree.nodes)} nodes · "
                                   f"{st.get('tokens', 0)} tokens · {st.get('seconds', 0):.0f} s", tree, st, notice, waited)
    finally:
        # also reached when the consumer closes the generator (Stop via the API, tab closed)
        if worker is None:
            line.leave(ticket)
        else:
            stop.set()


# -- per-session state --
@dataclass
class Session:
    id: str
    tree: Tree | None = None            # the last finished/stopped search or an opened trace
    live: TreeMirror | None = None      # the search in progress, mirrored from its events
    stop: threading.Event = field(default_factory=threading.Event)
    running: bool = False
    stage: int = 0                      # classroom reveal stage
    revision: int = 0                   # bumped for each new tree: resets the plot's zoom
    files: Path | None = None           # downloads for this session
    last_seen: float = field(default_factory=time.monotonic)
    upload_bytes: int = 0               # size of the uploaded trace `tree` came from (0: none)

    def current(self) -> Tree | None:
        """What the page shows: the live tree while a search runs, else the last one."""
        if self.running and self.live is not None:
            return self.live.tree
        return self.tree

    def file_dir(self) -> Path:
        if self.files is None:
            self.files = Path(tempfile.mkdtemp(prefix="rstar-app-"))
        return self.files

    def close(self) -> None:
        self.stop.set()
        self.tree = self.live = None
        self.upload_bytes = 0
        if self.files is not None:
            shutil.rmtree(self.files, ignore_errors=True)
            self.files = None


SESSION_TTL_S = 3 * 3600  # an idle tab's session (its tree, downloads) is kept this long


class SessionStore:
    """Sessions by Gradio session hash. A closed tab (Gradio's unload event) drops its session at
    once; sessions idle for `ttl` seconds and the oldest beyond `capacity` are dropped too."""

    def __init__(self, capacity: int = 500, ttl: float = SESSION_TTL_S) -> None:
        self.capacity, self.ttl = capacity, ttl
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sid: str | None) -> Session:
        sid = sid or "anonymous"
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                s = self._sessions[sid] = Session(sid)
            self._sessions.move_to_end(sid)
            s.last_seen = time.monotonic()
            evict = []
            now = time.monotonic()
            for k, v in self._sessions.items():
                if k != sid and not v.running and (now - v.last_seen > self.ttl
                                                   or len(self._sessions) - len(evict) > self.capacity):
                    evict.append(k)
            for k in evict:
                self._sessions.pop(k).close()
            return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            s = self._sessions.pop(sid or "anonymous", None)
        if s is not None:
            s.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def upload_bytes(self) -> int:
        """Bytes of uploaded trace files the sessions hold (a loaded trace takes ~15x in memory)."""
        with self._lock:
            return sum(s.upload_bytes for s in self._sessions.values())
