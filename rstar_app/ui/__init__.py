"""The web app (Gradio 6): live search tree, node inspector, classroom mode, public `solve` API.

    from rstar_app.ui import create_app
    demo, ui = create_app()              # engine loads in the background on first use
    demo.queue(max_size=64).launch(**launch_kwargs())

app.py at the repository root is the thin entry point (also the Hugging Face Space's app_file).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere


def create_app(engine_factory=None, *, max_waiting: int | None = None, load_now: bool = True):
    """Build the page. `engine_factory` returns an Engine (default: Engine.load() from
    weights/manifest.json); it runs once, in a background thread, so the page opens at once."""
    from .layout import build
    from .session import EngineHolder

    if engine_factory is None:
        def engine_factory():
            from ..engine import Engine
            return Engine.load()
    holder = EngineHolder(engine_factory)
    if load_now:
        holder.start()
    if max_waiting is None:
        max_waiting = int(os.environ.get("RSTAR_APP_MAX_WAITING", 4))
    return build(holder, max_waiting=max_waiting)


def launch_kwargs() -> dict:
    from .layout import launch_kwargs as kw
    return kw()
