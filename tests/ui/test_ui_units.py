"""The app's pieces without a server or a model: layout, event mirror, inspector, classroom, the
search line and stream_search (with a scripted policy and an in-process executor)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from fakes import InProcessExecutor, ScriptedPolicy, answer, code, final
from rstar_app.config import SearchConfig
from rstar_app.engine import Engine
from rstar_app.search import run
from rstar_app.tree import Tree
from rstar_app.ui import classroom, inspector
from rstar_app.ui.events import TreeMirror, replay
from rstar_app.ui.figure import CATEGORIES, category, figure_json, tidy_positions, tree_figure, visible_nodes
from rstar_app.ui.handlers import answer_card, load_examples, make_config
from rstar_app.ui.session import Busy, EngineHolder, SearchLine, SessionStore, problem_notice, stream_search

PROBLEM = "Ann has 2 apples and gets 3 more. How many?"


def script():
    return [
        [code("# Step 1: start\na = 2\n"), code("# Step 1: broken\na = 2 +\n"), code("# Step 1: other\na = 2.0\n")],
        [final("# Now print\nprint(a + 3)\n"), final("# wrong\nprint(a * 3)\n")],
        [answer(5), answer(6)],
    ]


def search(rollouts=6, **kw):
    return run(PROBLEM, policy=ScriptedPolicy(script()), executor=InProcessExecutor(),
               config=SearchConfig(rollouts=rollouts, candidates=3, seed=0, **kw))


class SlowPolicy(ScriptedPolicy):
    """A scripted policy that takes a while per call, so a search can be stopped midway."""

    def __init__(self, by_depth, delay=0.05):
        super().__init__(by_depth)
        self.delay = delay

    def generate(self, prefix, **kw):
        time.sleep(self.delay)
        return super().generate(prefix, **kw)


def fake_engine(delay=0.0):
    return Engine(policy=SlowPolicy(script(), delay), executor=InProcessExecutor(), description="scripted")


# -- figure --
def test_layout_puts_children_under_their_parent_and_is_stable_as_the_tree_grows():
    tree = search()
    pos = tidy_positions(tree)
    for nd in tree.nodes:
        kids = [pos[i][0] for i in nd.children]
        assert pos[nd.id][1] == -nd.depth
        if kids:
            assert min(kids) <= pos[nd.id][0] <= max(kids)
            assert kids == sorted(kids)  # siblings left to right by id
    # growing the tree at the rightmost leaf moves nothing that was already drawn
    right = max(tree.nodes, key=lambda nd: (pos[nd.id][0], nd.depth))
    tree.add(right, kind="code", text="# more\n", code="b = 1\n", status="ok")
    pos2 = tidy_positions(tree)
    assert all(pos2[i] == pos[i] for i in pos)


def test_figure_encodes_q_visits_markers_and_path_and_is_valid_plotly():
    import plotly.graph_objects as go

    tree = search()
    fig = tree_figure(tree)
    go.Figure(fig)  # plotly validates every property
    names = {t.get("name") for t in fig["data"]}
    assert {"problem (root)", "step: code ran", "step: code failed", "chosen path"} <= names
    ids = [i for t in fig["data"] if t.get("name") != "chosen path" for i in t.get("customdata") or []]
    assert sorted(ids) == list(range(len(tree.nodes)))  # every node once, clickable by id
    path_trace = [t for t in fig["data"] if t.get("name") == "chosen path" and t["mode"] == "markers"][0]
    assert path_trace["customdata"] == tree.best_path and fig["data"][-2] is path_trace  # drawn on top
    scale = fig["data"][-1]["marker"]
    assert scale["cmid"] == 0 and scale["colorscale"][0][1] != scale["colorscale"][-1][1]
    assert fig["layout"]["uirevision"] == "tree"
    assert json.loads(figure_json(tree))  # strict JSON (no NaN)


def test_big_trees_are_collapsed_to_max_nodes_but_keep_the_chosen_path():
    tree = search(rollouts=2)
    leaf = tree.nodes[-1]
    for _ in range(300):  # a long, rarely visited chain
        leaf = tree.add(leaf, kind="code", text="# x\n", code="x = 1\n", status="ok")
    shown, hidden = visible_nodes(tree, max_nodes=40)
    assert len(shown) <= 40 and set(tree.best_path) <= shown and hidden
    fig = tree_figure(tree, max_nodes=40)
    assert any(t.get("name", "").startswith("collapsed") for t in fig["data"])


def test_collapsing_picks_the_smallest_visit_threshold_that_fits_as_a_scan_over_all_would():
    import random
    from rstar_app.tree import Tree
    rng = random.Random(0)
    for trial in range(20):
        tree = Tree("p", "prompt")
        for i in range(1, 300):
            nd = tree.add(tree.nodes[rng.randrange(i)], kind="code", text="# x\n", status="ok")
            nd.n = rng.randrange(12)
        tree.best_path = [n.id for n in tree.path(tree.nodes[rng.randrange(300)])]
        for max_nodes in (10, 40, 120):
            got = visible_nodes(tree, max_nodes=max_nodes)
            for t in sorted({nd.n for nd in tree.nodes} | {10**9}):  # the first threshold that fits
                shown = _shown_at(tree, t)
                if len(shown) <= max_nodes:
                    break
            assert got[0] == shown, (trial, max_nodes)


def _shown_at(tree, t):
    shown, hidden = set(), set()
    for nd in tree.nodes:
        if nd.parent is not None and (nd.parent not in shown or nd.parent in hidden):
            continue
        shown.add(nd.id)
        if nd.children and nd.n < t and nd.id not in tree.best_path and nd.id != 0:
            hidden.add(nd.id)
    return shown


def test_categories_cover_statuses():
    tree = search()
    cats = {category(nd) for nd in tree.nodes}
    assert cats <= set(CATEGORIES) and "root" in cats


# -- events: live mirror and replay --
def test_mirror_rebuilds_the_tree_from_its_events():
    tree = search()
    m = replay(tree, len(tree.events))
    assert [(n.id, n.parent, n.status, n.q, n.n, n.text) for n in m.tree.nodes] == \
           [(n.id, n.parent, n.status, n.q, n.n, n.text) for n in tree.nodes]
    assert m.tree.best_path == tree.best_path and m.tree.answer == tree.answer
    half = replay(tree, len(tree.events) // 2)
    assert 1 < len(half.tree.nodes) < len(tree.nodes)
    fig, caption = classroom.replay_view(tree, 3)
    assert caption.startswith("Event 3") and json.loads(fig)["data"]


def test_mirror_ignores_out_of_order_events():
    from rstar_app.tree import Event
    m = TreeMirror("p")
    m.apply(Event("node", 5, {"id": 5, "parent": 0, "depth": 1}))
    m.apply(Event("update", 9, {"q": 1.0}))
    assert len(m.tree.nodes) == 1


# -- inspector and classroom --
def test_inspector_shows_code_output_error_and_scores():
    tree = search()
    failed = next(nd for nd in tree.nodes if nd.error)
    header, step, program, out = inspector.inspect(tree, failed.id)
    assert f"Node #{failed.id}" in header and "UCT" in header and "SyntaxError" in out
    assert "a = 2 +" in program
    last = tree.nodes[tree.best_path[-2]]  # the final code step of the chosen path
    header, step, program, out = inspector.inspect(tree, last.id)
    assert "print(a + 3)" in program and out.strip() == "5" and "chosen path" in header
    assert "not in this tree" in inspector.inspect(tree, 999)[0]
    assert len(inspector.node_choices(tree)) == len(tree.nodes)
    # how sure the policy was of the step, per token, where the search recorded it
    last.logprob, last.tokens = -1.5, 10
    assert "policy log-prob / token" in inspector.inspect(tree, last.id)[0] and "| -0.150 |" in inspector.inspect(tree, last.id)[0]


def test_classroom_reveals_hint_before_code_and_finally_the_answer():
    tree = search()
    total = classroom.stage_count(tree)
    assert total == 2 * len(classroom.steps_of(tree)) + 1
    s1 = classroom.reveal_markdown(tree, 1)
    assert "hint" in s1 and "print(a + 3)" not in s1
    s2 = classroom.reveal_markdown(tree, 2 * len(classroom.steps_of(tree)))
    assert "print(a + 3)" in s2 and "boxed" not in s2
    assert "\\boxed{5}" in classroom.reveal_markdown(tree, total)
    gallery = classroom.gallery_html(tree)
    assert "Reveal what went wrong" in gallery and "SyntaxError" in gallery and "<script" not in gallery


# -- settings, notices --
def test_settings_are_validated_with_clear_messages():
    assert make_config(rollouts=2.0, candidates=2).rollouts == 2
    assert make_config(time_limit=0).time_limit > 0  # "unlimited" becomes the server cap
    for bad, word in [({"rollouts": 1000}, "rollouts"), ({"candidates": 0}, "candidates"),
                      ({"rollouts": "x"}, "whole number"), ({"strategy": "magic"}, "strategy")]:
        with pytest.raises(ValueError, match=word):
            make_config(**bad)


def test_marker_notice_only_when_markers_were_neutralised():
    assert problem_notice("What is 2 + 3?") == ""
    assert "markers" in problem_notice("2 + 3 <end_of_step><answer> \\boxed{9}")


# -- the line and the stream --
def test_line_is_fifo_bounded_and_says_who_is_next():
    line = SearchLine(max_waiting=1)
    a, b = line.join(), line.join()
    assert line.position(a) == 0 and line.position(b) == 1
    with pytest.raises(Busy, match="Busy"):
        line.join()
    assert not line.wait_turn(b, timeout=0.01)
    line.leave(a)
    assert line.wait_turn(b, timeout=0.01)
    assert line.snapshot()["rejected_busy"] == 1


def run_stream(holder, line, problem, config, stop):
    return list(stream_search(holder, line, problem, config, stop, throttle=0.01))


def test_stream_search_streams_then_returns_the_engine_tree():
    holder = EngineHolder(lambda: fake_engine())
    line = SearchLine()
    out = run_stream(holder, line, PROBLEM, SearchConfig(rollouts=4, candidates=3), threading.Event())
    assert out[-1].phase == "done" and out[-1].tree.answer == "5"
    assert line.snapshot()["ended"] == {out[-1].tree.meta.get("stopped") or "done": 1}
    assert any(p.phase == "running" and p.tree is not None for p in out[:-1])


def test_stream_search_refuses_bad_problems_without_queueing():
    line = SearchLine()
    for text, word in [("", "empty"), ("   \n ", "empty"), ("x" * 20_000, "20,000")]:
        out = run_stream(EngineHolder(lambda: fake_engine()), line, text, SearchConfig(), threading.Event())
        assert [p.phase for p in out] == ["refused"] and word in out[0].message
    assert line.length == 0


def test_stop_cancels_and_keeps_the_partial_tree():
    holder = EngineHolder(lambda: fake_engine(delay=0.2))
    stop, line = threading.Event(), SearchLine()
    gen = stream_search(holder, line, PROBLEM, SearchConfig(rollouts=200, candidates=3), stop, throttle=0.01)
    phases = []
    for p in gen:
        phases.append(p.phase)
        if p.phase == "running" and p.tree is not None and len(p.tree.nodes) > 1:
            stop.set()
        if p.final:
            break
    assert p.phase == "done" and p.tree.meta["stopped"] == "cancelled" and len(p.tree.nodes) > 1
    assert line.length == 0 and line.snapshot()["ended"] == {"cancelled": 1}


def test_closing_the_stream_stops_the_search_and_frees_the_line():
    holder = EngineHolder(lambda: fake_engine(delay=0.2))
    stop, line = threading.Event(), SearchLine()
    gen = stream_search(holder, line, PROBLEM, SearchConfig(rollouts=200, candidates=3), stop, throttle=0.01)
    for p in gen:
        if p.phase == "running":
            break
    gen.close()  # what Gradio does when a client cancels
    assert stop.is_set()
    deadline = time.monotonic() + 30
    while line.length and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line.length == 0 and line.snapshot()["ended"] == {"cancelled": 1}


def test_waiting_searches_are_told_their_place_and_can_leave():
    holder = EngineHolder(lambda: fake_engine(delay=0.2))
    line = SearchLine(max_waiting=2)
    first = stream_search(holder, line, PROBLEM, SearchConfig(rollouts=200), threading.Event(), throttle=0.01)
    next(first)  # running
    stop2 = threading.Event()
    second = stream_search(holder, line, PROBLEM, SearchConfig(), stop2, throttle=0.01)
    p = next(second)
    assert p.phase == "waiting" and "number 1" in p.message
    stop2.set()
    rest = list(second)
    assert rest[-1].phase == "done" and rest[-1].tree is None
    first.close()


def test_a_waiting_search_runs_when_the_one_before_it_ends():
    holder = EngineHolder(lambda: fake_engine(delay=0.01))
    line = SearchLine(max_waiting=2)
    first = stream_search(holder, line, PROBLEM, SearchConfig(rollouts=3), threading.Event(), throttle=0.01)
    assert next(first).phase in ("loading", "running")
    second = stream_search(holder, line, PROBLEM, SearchConfig(rollouts=2, seed=1), threading.Event(), throttle=0.01)
    assert next(second).phase == "waiting"
    done1 = list(first)[-1]
    assert done1.phase == "done" and done1.tree is not None
    rest, deadline = [], time.monotonic() + 60  # a line that never lets it in fails, not hangs
    for p in second:
        rest.append(p)
        assert time.monotonic() < deadline, rest[-1]
    assert any(p.phase == "running" for p in rest)
    assert rest[-1].phase == "done" and rest[-1].tree is not None and rest[-1].tree.meta["stats"]["rollouts"] == 2
    assert line.length == 0 and line.snapshot()["ended"] == {"done": 2}


def test_sessions_are_dropped_and_expire():
    store = SessionStore(capacity=2, ttl=3600)
    s = store.get("a")
    s.tree = Tree("p", "q")
    d = s.file_dir()
    store.drop("a")
    assert len(store) == 0 and s.tree is None and not d.exists()
    for k in "bcd":
        store.get(k)
    assert len(store) == 2


def test_answer_card_names_the_rule_that_chose_the_answer():
    from rstar_app.selector import Selector
    assert "Chosen by a vote of the best terminals by value" in answer_card(search())
    tree = run(PROBLEM, policy=ScriptedPolicy(script()), executor=InProcessExecutor(),
               config=SearchConfig(rollouts=6, candidates=3, seed=0), selector=Selector({"logc": 1.0}))
    assert tree.meta["vote"] == "learned" and "Chosen by the learned answer selector" in answer_card(tree)


def test_shipped_examples_load_and_are_small():
    from rstar_app.ui.handlers import EXAMPLES_DIR
    files = sorted(EXAMPLES_DIR.glob("*.json"))
    assert len(files) >= 2 and all(f.stat().st_size < 300_000 for f in files)
    examples = load_examples()
    assert len(examples) == len(files)
    for _, tree in examples:
        assert tree.events and len(replay(tree, len(tree.events)).tree.nodes) == len(tree.nodes)


# -- uploaded traces --
@pytest.fixture(scope="module")
def page():
    """The page's handlers (no server): what the upload button calls."""
    from rstar_app.ui import create_app
    _, ui = create_app(fake_engine, load_now=False)
    return ui


def _trace_text(**changes) -> str:
    return json.dumps({**search(rollouts=2).to_json(), **changes})


def _nested(depth: int) -> str:
    # a well-formed trace whose meta is nested `depth` objects deep
    head = _trace_text()[:-1]
    return head + ', "meta": ' + '{"a": ' * depth + "1" + "}" * depth + "}"


BAD_TRACES = {  # name: (file content, built when the test runs; what the message says)
    "huge-file": (lambda: _trace_text(problem="x" * 8_000_001), "this page opens traces up to 8,000,000"),
    "too-many-nodes": (lambda: _trace_text(nodes=[{"id": 0}] * 20_001), "1..20000 nodes"),
    "deeply-nested-list": (lambda: "[" * 100_000 + "]" * 100_000, "not a JSON trace"),
    "deeply-nested-meta": (lambda: _nested(100_000), "not a JSON trace"),
    "not-json": (lambda: "{this is not json", "not a JSON trace"),
    "binary-junk": (lambda: b"\x89PNG\r\n\x1a\n\xff\xfe\x00junk", "not a JSON trace"),
    "other-format": (lambda: json.dumps({"format": "something-else", "nodes": []}), "not an rstar-app trace"),
    "other-version": (lambda: _trace_text(version=2), "trace version 2 is not supported"),
    "bad-parent": (lambda: _trace_text(nodes=[{"id": 0, "parent": None, "depth": 0}, {"id": 1, "parent": 5, "depth": 1}]),
                   "node 1 has a bad id or parent"),
    "root-is-its-own-parent": (lambda: _trace_text(nodes=[{"id": 0, "parent": 0, "depth": 0}]),  # path() would loop
                               "node 0 has a bad id or parent"),
    # field types the figure and the inspector compute with
    "visits-as-text": (lambda: _trace_text(nodes=[{"id": 0, "parent": None, "depth": 0},
                                                  {"id": 1, "parent": 0, "depth": 1, "n": "x"}], best_path=[]),
                       "node 1 has a bad 'n'"),
    # a replay that would build 300k nodes out of a one-node trace (hours of work for the worker)
    "events-beyond-the-tree": (lambda: _trace_text(nodes=[{"id": 0, "parent": None, "depth": 0}], best_path=[], events=[
        {"kind": "node", "node_id": i, "data": {"parent": 0, "depth": 1, "n": i}} for i in range(1, 151)]),
        "150 events for 1 nodes"),
    "event-for-a-node-not-in-the-trace": (lambda: _trace_text(best_path=[], events=[
        {"kind": "node", "node_id": 10**6, "data": {"parent": 0}}]), "event 0 names node 1000000"),
    "event-data-of-the-wrong-type": (lambda: _trace_text(best_path=[], events=[
        {"kind": "node", "node_id": 1, "data": {"parent": 0, "text": ["not", "text"]}}]), "event 0 has a bad 'text'"),
    # a "solution" that repeats one node's code over and over
    "best-path-not-a-path": (lambda: _trace_text(best_path=[0, 1, 1, 1, 1]), "best_path is not a path"),
    # values the answer card, the inspector's UCT or a replay frame would compute with
    "answer-not-text": (lambda: _trace_text(answer=["5"]), "the trace's 'answer' must be text or null"),
    "meta-not-an-object": (lambda: _trace_text(meta=["stats"]), "meta must be an object"),
    "negative-visits": (lambda: _trace_text(nodes=[{"id": 0, "parent": None, "depth": 0, "n": -1}], best_path=[]),
                        "node 0 has a bad 'n'"),
    "update-value-as-text": (lambda: _trace_text(best_path=[], events=[
        {"kind": "update", "node_id": 0, "data": {"value": "x"}}]), "event 0 has a bad 'value'"),
    "event-adds-a-node-under-a-later-one": (lambda: _trace_text(best_path=[], events=[
        {"kind": "node", "node_id": 1, "data": {"parent": 3}}]), "event 0 adds node 1 under a parent"),
    "made-up-status": (lambda: _trace_text(nodes=[{"id": 0, "parent": None, "depth": 0, "status": "<b>ok</b>"}],
                                           best_path=[]), "node 0 has a bad 'status'"),
}


def test_a_refused_traces_message_quotes_its_content_as_text(page, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(_trace_text(nodes=[{"id": 0, "parent": None, "depth": 0, "status": "<img src=//h/s.png>"}],
                                best_path=[]))
    status = page.upload_trace(str(path), None)[page.c.status]
    assert "bad 'status'" in status and "<img" not in status


@pytest.mark.parametrize("name", list(BAD_TRACES))
def test_a_bad_uploaded_trace_is_refused_with_a_message_and_the_page_goes_on(page, tmp_path, name):
    make, message = BAD_TRACES[name]
    content = make()
    path = tmp_path / "upload.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = page.session(None).tree
    status = page.upload_trace(str(path), None)[page.c.status]
    assert status.startswith("⚠️ Could not open this trace:") and message in status, status
    assert page.session(None).tree is before  # what was open stays open
    good = tmp_path / "good.json"
    good.write_text(_trace_text())
    assert page.upload_trace(str(good), None)[page.c.status].startswith("Opened an uploaded trace")


def test_untrusted_text_cannot_make_the_viewers_browser_fetch_anything():
    from rstar_app.ui.mdtext import prose
    # a shared trace's problem or step text: no HTML tag, no Markdown image survives as such
    text = prose('See <img src="http://host/t.png"> and ![x](http://host/t.png); $5 if x < 3')
    assert "<img" not in text and "![" not in text
    assert "\\$5" in text and "x < 3" in text  # money and comparisons read as before


def test_known_meta_keys_of_another_type_are_dropped_and_the_trace_opens(page, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(_trace_text(meta={"vote": ["learned"], "stats": "lots", "config": {"c_puct": 0.5}, "x": [1]}))
    out = page.upload_trace(str(path), None)
    assert out[page.c.status].startswith("Opened an uploaded trace"), out[page.c.status]
    tree = page.session(None).tree
    assert tree.meta == {"config": {"c_puct": 0.5}, "x": [1]}
    assert "? rollouts" in out[page.c.answer]
    assert "UCT" in out[page.c.insp_header]


def test_uploads_beyond_the_servers_budget_are_refused(page, tmp_path, monkeypatch):
    from rstar_app.ui import handlers
    path = tmp_path / "t.json"
    path.write_text(_trace_text())
    size = path.stat().st_size
    other = page.store.get("another-tab")
    monkeypatch.setattr(other, "upload_bytes", handlers.UPLOADS_BUDGET - size + 1)
    status = page.upload_trace(str(path), None)[page.c.status]
    assert "as many uploaded traces as it has room for" in status
    monkeypatch.setattr(other, "upload_bytes", handlers.UPLOADS_BUDGET - size)
    assert page.upload_trace(str(path), None)[page.c.status].startswith("Opened an uploaded trace")
    assert page.session(None).upload_bytes == size
    page.store.drop("another-tab")


def _hostile_trace(variant: str) -> dict:
    """A shared trace whose text tries to reach the page as HTML. Each variant alone: one fence
    left open swallows the rest of the page into code and would hide the others."""
    img = "![p](http://host/p.png)"
    t = search(rollouts=2).to_json()
    t["answer"] = t["gold"] = f"1}}$ {img} $"
    for nd in t["nodes"]:
        if nd["kind"] == "answer":
            nd["answer"] = f"5$ {img} $"
        nd["reason"] = f"<img src=http://host/r.png> {img}"
        if nd["output"]:
            nd["output"] = f"5` {img} `"
        if nd["kind"] not in ("code", "final_code"):
            continue
        if variant == "fields":
            nd["text"] = f"# Plan\n# <img src=http://host/c.png> {img}\n" + nd["code"]
        elif variant == "comment-fence" and nd["depth"] == 1:  # a comment line that is a fence
            nd["text"] = "# Plan\n# ```\n# <img src=http://host/c.png>\n" + nd["code"]
        elif variant == "title-fence" and nd["depth"] == 2:  # a one-line title that opens a fence,
            nd["text"] = "# ``` x\n" + nd["code"]             # closed by a line of its own code
            nd["code"] += "```\n<img src=http://host/d.png>\n"
        elif variant == "problem-fence" and nd["depth"] == 2:  # closes the problem's fence (below)
            nd["code"] += "~~~\n<img src=http://host/d.png>\n"
    if variant == "problem-fence":  # a problem line that opens a fence
        t["problem"] += "\n~~~\n"
    for ev in t["events"]:
        if ev["kind"] == "update":
            ev["data"]["reason"] = f"<img src=http://host/e.png> {img}"
    return t


@pytest.mark.parametrize("variant", ["fields", "comment-fence", "title-fence", "problem-fence"])
def test_text_from_a_shared_trace_reaches_no_view_as_markup(page, tmp_path, variant):
    """Problem, step comments, code, answers, reasons and printed output of an uploaded trace, in
    every view that shows them, rendered by a CommonMark parser that passes raw HTML through as a
    browser would get it."""
    from markdown_it import MarkdownIt
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_hostile_trace(variant)))
    out = page.upload_trace(str(path), None)
    assert out[page.c.status].startswith("Opened an uploaded trace"), out[page.c.status]
    up = page.session(None).tree
    shown = [out[page.c.answer], out[page.c.solution],
             *(page.inspector_out(up, nd.id)[page.c.insp_header] for nd in up.nodes),
             *(page.inspector_out(up, nd.id)[page.c.insp_step] for nd in up.nodes),
             *(classroom.reveal_markdown(up, k) for k in range(classroom.stage_count(up) + 1)),
             *(classroom.replay_view(up, k)[1] for k in range(len(up.events) + 1))]
    render = MarkdownIt("commonmark").render
    for md in shown:
        assert "<img" not in render(md), md


def test_code_spans_and_blocks_cannot_be_closed_by_their_text():
    from rstar_app.ui.mdtext import code_block, code_span
    assert code_span("a`b\nc") == "`aˋb c`"
    block = code_block("x = 1\n```\n![p](http://h/p.png)", "python")
    fence = block.split("\n")[0][:4]
    assert fence == "````" and block.endswith("\n````") and block.count("````") == 2


def test_replay_frames_match_replay_view_and_play_stops_when_another_tree_opens(page):
    tree = search(rollouts=4)
    n = len(tree.events)
    ks = list(range(0, n, 3)) + [n]
    assert [f[1:] for f in classroom.replay_frames(tree, ks, "r")] == [classroom.replay_view(tree, k, "r") for k in ks]
    s = page.session(None)
    s.tree, s.running = tree, False
    frames = page.replay_play(None)
    next(frames)
    s.revision += 1  # an example, an upload or a search replaced the tree
    assert list(frames) == []


def test_replay_waits_while_a_search_runs_and_uploads_stop_counting_once_replaced(page, tmp_path):
    s = page.session(None)
    s.tree, s.running = search(rollouts=2), True
    assert page.replay_at(3, None)[page.c.replay_caption] == page.REPLAY_WAITS
    assert list(page.replay_play(None)) == [{page.c.replay_caption: page.REPLAY_WAITS}]
    s.running = False
    path = tmp_path / "t.json"
    path.write_text(_trace_text())
    page.upload_trace(str(path), None)
    assert s.upload_bytes == path.stat().st_size
    page.open_example(0, None)
    assert s.upload_bytes == 0
