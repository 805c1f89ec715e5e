"""The page: Solve tab (problem, examples, settings, live tree, inspector, answer, share) and
Classroom tab (step-by-step reveal, find-the-error gallery, replay), plus the public `solve` API.

Set GRADIO_ANALYTICS_ENABLED=False before gradio is imported (rstar_app.ui does it): otherwise
gradio makes DNS look-ups from background threads, and the app must work offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import plotly  # noqa: E402

from ..config import STRATEGIES  # noqa: E402
from .figure import figure_json  # noqa: E402
from .handlers import DEFAULTS, LIMITS, UI  # noqa: E402
from .session import SESSION_TTL_S, EngineHolder  # noqa: E402

# plotly.js from the plotly Python package: the same version that wrote the figure JSON, served
# by this app (no CDN). Its path is passed to launch(allowed_paths=...).
PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"

LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]

# The tree view: a gr.HTML whose template never changes (so the plot's <div> survives updates and
# plotly.js keeps the zoom via uirevision); the figure JSON is its value. gr.Plot has no click
# event in Gradio 6, so clicks come from plotly_click and are sent to Python as 'node_click'.
TREE_JS = r"""
const div = element.querySelector('.rstar-tree');
let bound = false;
function draw() {
  if (!window.Plotly) { setTimeout(draw, 100); return; }
  let fig;
  try { fig = JSON.parse(props.value || '{}'); } catch (e) { return; }
  window.Plotly.react(div, fig.data || [], fig.layout || {},
    {responsive: true, displaylogo: false, scrollZoom: true, modeBarButtonsToRemove: ['select2d', 'lasso2d']});
  let n = 0;
  for (const t of (fig.data || [])) { if (t.customdata && t.name !== 'chosen path') n += t.customdata.length; }
  div.dataset.nodes = String(n);
  if (!bound) {
    bound = true;
    div.on('plotly_click', (ev) => {
      const p = ev && ev.points && ev.points[0];
      if (p && p.customdata !== undefined && p.customdata !== null) {
        trigger('node_click', {node_id: Number(p.customdata)});
      }
    });
    // a plot drawn in a hidden tab has no size: redraw when it becomes visible
    new ResizeObserver(() => { if (div.offsetWidth > 0) window.Plotly.Plots.resize(div); }).observe(div);
  }
}
draw();
watch('value', draw);
"""


def tree_view(elem_id: str, value: str | None = None) -> gr.HTML:
    return gr.HTML(
        value=value or figure_json(None), elem_id=elem_id,
        html_template="<div class='rstar-tree' role='img' aria-label='search tree (use the node picker to inspect nodes by keyboard)'></div>",
        css_template=".rstar-tree { width: 100%; min-height: 420px; }",
        js_on_load=TREE_JS, head="<script src='gradio_api/file=" + str(PLOTLY_JS) + "'></script>",
        apply_default_css=False, container=True, padding=False,
    )


PAGE_HEAD = r"""
<script>
// Projector mode: arrow keys / space step through the solution; Escape leaves projector mode.
document.addEventListener('keydown', (e) => {
  if (!document.body.classList.contains('rstar-projector')) return;
  const t = e.target;
  const typing = t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
    (t.tagName === 'INPUT' && !['checkbox', 'radio', 'button', 'range'].includes(t.type)));
  if (typing) return;
  const click = (id) => { const b = document.getElementById(id); if (b) { b.click(); e.preventDefault(); } };
  if (e.key === 'ArrowRight' || e.key === ' ' || e.key === 'PageDown') click('rstar-next');
  else if (e.key === 'ArrowLeft' || e.key === 'PageUp') click('rstar-back');
  else if (e.key === 'Escape') {
    const cb = document.querySelector('#rstar-projector input');
    if (cb && cb.checked) cb.click();
  }
});
</script>
"""

PROJECTOR_JS = "(on) => { document.body.classList.toggle('rstar-projector', !!on); return on; }"


def build(holder: EngineHolder, *, max_waiting: int = 4) -> tuple[gr.Blocks, UI]:
    ui = UI(holder, max_waiting=max_waiting)
    c = SimpleNamespace()
    ui.c = c
    # Gradio's copies of the download files live as long as a session may (they were deleted
    # after an hour while the page still offered them)
    with gr.Blocks(title="rstar-app: watch a small model think", delete_cache=(3600, SESSION_TTL_S)) as demo:
        with gr.Row(elem_classes="rstar-teacher"):
            gr.Markdown("# rstar-app\nA 135M-parameter model solves math word problems by **tree search** over "
                        "steps written as Python code, run in a sandbox. Watch the tree grow, click any node, "
                        "and walk a class through the chosen solution.")
        with gr.Tabs():
            with gr.Tab("Solve", id="solve"):
                with gr.Row(elem_classes="rstar-teacher"):
                    c.problem = gr.Textbox(label="Math word problem", lines=3, scale=5, elem_id="rstar-problem",
                                           placeholder="e.g. A baker makes 12 cakes a day. How many cakes does he make in 5 days?")
                    with gr.Column(scale=1, min_width=140):
                        c.solve_btn = gr.Button("Solve", variant="primary", elem_id="rstar-solve")
                        c.stop_btn = gr.Button("Stop", variant="stop", elem_id="rstar-stop")
                c.examples = gr.Dataset(
                    components=[c.problem], samples=[[t.problem] for _, t in ui.examples], type="index",
                    label="Examples: open a recorded search instantly (no waiting)", elem_id="rstar-examples",
                    visible=bool(ui.examples),
                    elem_classes="rstar-teacher")
                with gr.Accordion("Settings", open=False, elem_classes="rstar-teacher"):
                    with gr.Row():
                        c.strategy = gr.Dropdown(list(STRATEGIES), value=DEFAULTS["strategy"], label="Strategy",
                                                 info="mcts: rStar-Math's tree search; mcts_sim: the same, rollouts "
                                                      "finished by sampling; best_of_n / majority: independent "
                                                      "samples; beam: step-level beam search")
                        c.rollouts = gr.Slider(*LIMITS["rollouts"], value=DEFAULTS["rollouts"], step=1, label="Rollouts")
                        c.candidates = gr.Slider(*LIMITS["candidates"], value=DEFAULTS["candidates"], step=1,
                                                 label="Candidates per step")
                    with gr.Row():
                        c.c_puct = gr.Slider(*LIMITS["c_puct"], value=DEFAULTS["c_puct"], step=0.1,
                                             label="Exploration constant c")
                        c.temperature = gr.Slider(*LIMITS["temperature"], value=DEFAULTS["temperature"], step=0.05,
                                                  label="Temperature")
                        c.seed = gr.Number(value=DEFAULTS["seed"], precision=0, label="Seed",
                                           minimum=LIMITS["seed"][0], maximum=LIMITS["seed"][1])
                        c.time_limit = gr.Slider(10, LIMITS["time_limit"][1], value=DEFAULTS["time_limit"], step=10,
                                                 label="Time limit (s)")
                c.status = gr.Markdown("Connecting…", elem_id="rstar-status")
                c.tree_view = tree_view("rstar-tree-view")
                with gr.Row():
                    with gr.Column(scale=3):
                        gr.Markdown("### Inspect a node\nClick a node in the tree, or pick one here (keyboard friendly).")
                        c.picker = gr.Dropdown(choices=[], value=None, label="Node", elem_id="rstar-picker",
                                               filterable=True)
                        c.insp_header = gr.Markdown(elem_id="rstar-insp-header", latex_delimiters=LATEX)
                        c.insp_step = gr.Markdown(elem_id="rstar-insp-step", latex_delimiters=LATEX)
                        c.insp_code = gr.Code(label="Program run for this node (cumulative)", language="python",
                                              interactive=False, elem_id="rstar-insp-code")
                        c.insp_output = gr.Textbox(label="Output or error", lines=3, max_lines=12,
                                                   interactive=False, elem_id="rstar-insp-output")
                    with gr.Column(scale=2):
                        c.answer = gr.Markdown("### Answer\n\n_No answer yet._", elem_id="rstar-answer",
                                               latex_delimiters=LATEX, elem_classes="rstar-answer")
                        c.solution = gr.Markdown(elem_id="rstar-solution", latex_delimiters=LATEX)
                        with gr.Row():
                            c.dl_trace = gr.DownloadButton("Download trace (JSON)", interactive=False,
                                                           elem_id="rstar-dl-trace")
                            c.dl_md = gr.DownloadButton("Download solution (Markdown)", interactive=False,
                                                        elem_id="rstar-dl-md")
                        c.upload = gr.UploadButton("Open a trace (JSON)", file_types=[".json"], type="filepath",
                                                   elem_id="rstar-upload")
            with gr.Tab("Classroom", id="classroom"):
                with gr.Row():
                    c.projector = gr.Checkbox(label="Projector mode (large text, controls hidden; arrow keys step, Esc leaves)",
                                              value=False, elem_id="rstar-projector", scale=4)
                    c.class_progress = gr.Markdown(elem_id="rstar-class-progress")
                c.class_md = gr.Markdown(classroom_placeholder(), elem_id="rstar-class-md",
                                         latex_delimiters=LATEX, elem_classes="rstar-class-md")
                with gr.Row():
                    c.back_btn = gr.Button("◀ Back", elem_id="rstar-back")
                    c.next_btn = gr.Button("Next ▶ (hint, then code)", variant="primary", elem_id="rstar-next")
                    c.reset_btn = gr.Button("Start over", elem_id="rstar-reset")
                with gr.Accordion("Find the error: branches the search rejected", open=True,
                                  elem_classes="rstar-teacher"):
                    c.gallery = gr.HTML("<p class='rstar-muted'>No tree yet.</p>", elem_id="rstar-gallery",
                                        js_on_load=None)
                with gr.Accordion("Replay the search", open=True, elem_classes="rstar-teacher"):
                    with gr.Row():
                        c.replay_slider = gr.Slider(0, 1, value=0, step=1, label="Events applied", scale=5,
                                                    elem_id="rstar-replay-slider")
                        c.play_btn = gr.Button("▶ Play", scale=1, elem_id="rstar-play")
                    c.replay_caption = gr.Markdown(elem_id="rstar-replay-caption")
                    c.replay_view = tree_view("rstar-replay-view")

        settings = [c.strategy, c.rollouts, c.candidates, c.c_puct, c.temperature, c.seed, c.time_limit]
        finished = [c.status, c.tree_view, c.picker, c.answer, c.solution, c.insp_header, c.insp_step,
                    c.insp_code, c.insp_output, c.dl_trace, c.dl_md, c.class_md, c.class_progress, c.gallery,
                    c.replay_slider, c.replay_view, c.replay_caption]
        private = {"api_visibility": "private"}
        # the page's search and the API's share one concurrency id; the limit bounds threads only,
        # session.SearchLine keeps one search running and tells the others their place
        search = {"concurrency_id": "search", "concurrency_limit": max_waiting + 8}
        c.solve_btn.click(ui.solve, [c.problem, *settings], finished, api_name="page_solve", **private, **search)
        c.stop_btn.click(ui.stop, None, [c.status], concurrency_limit=None, **private)
        c.tree_view.node_click(ui.click_node, [c.c_puct], [c.picker, c.insp_header, c.insp_step, c.insp_code,
                                                           c.insp_output], **private)
        c.picker.input(ui.pick_node, [c.picker, c.c_puct], [c.insp_header, c.insp_step, c.insp_code, c.insp_output],
                       **private)
        c.examples.click(ui.open_example, [c.examples], [*finished, c.problem], **private)
        c.upload.upload(ui.upload_trace, [c.upload], [*finished, c.problem], **private)
        c.next_btn.click(ui.step_next, None, [c.class_md, c.class_progress], **private)
        c.back_btn.click(ui.step_back, None, [c.class_md, c.class_progress], **private)
        c.reset_btn.click(ui.step_reset, None, [c.class_md, c.class_progress], **private)
        c.projector.change(None, [c.projector], None, js=PROJECTOR_JS)
        c.replay_slider.release(ui.replay_at, [c.replay_slider], [c.replay_view, c.replay_caption], **private)
        c.play_btn.click(ui.replay_play, None, [c.replay_view, c.replay_caption, c.replay_slider], **private)
        demo.load(ui.page_status, None, [c.status], **private)
        demo.unload(ui.unload)
        gr.api(ui.api_solve, api_name="solve", **search)
        # monitoring / load test; callable by clients but not listed in the API page
        gr.api(ui.status_api, api_name="status", api_visibility="undocumented", concurrency_limit=None)
    return demo, ui


def classroom_placeholder() -> str:
    return "## Classroom\n\nSolve a problem or open an example on the **Solve** tab first."


CSS = """
.rstar-answer h3 { font-size: 1.5em; }
.rstar-muted { color: #666; }
.rstar-gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
.rstar-card { border: 1px solid #ccc; border-radius: 8px; padding: 8px 12px; background: #fafafa; }
.rstar-card h4 { margin: 0 0 6px 0; }
.rstar-card ol { padding-left: 1.4em; margin: 0; }
.rstar-card pre { white-space: pre-wrap; margin: 2px 0; font-size: 0.85em; background: none; }
.rstar-card li.rstar-bad pre { background: #f3e8ff; border-left: 4px solid #6a3d9a; padding-left: 6px; }
.rstar-card details summary { cursor: pointer; font-weight: 600; margin-top: 6px; }
body.rstar-projector .rstar-teacher, body.rstar-projector footer, body.rstar-projector [role='tablist'],
body.rstar-projector #rstar-class-progress { display: none !important; }
body.rstar-projector .rstar-class-md { zoom: 1.5; }
body.rstar-projector #rstar-back, body.rstar-projector #rstar-next, body.rstar-projector #rstar-reset { font-size: 1.3em; }
"""


def launch_kwargs() -> dict:
    """What launch() needs for this page (theme/css/head go to launch() in Gradio 6)."""
    return {"css": CSS, "head": PAGE_HEAD, "theme": gr.themes.Default(primary_hue="indigo"),
            "allowed_paths": [str(PLOTLY_JS)], "footer_links": ["api"], "max_file_size": "25mb"}
