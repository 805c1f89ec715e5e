"""rstar-app web app: `python app.py` (also the Hugging Face Space's app_file).

Binds 127.0.0.1 by default and 0.0.0.0 on a Hugging Face Space (SPACE_ID is set there) or with
--host. The port comes from --port, then $PORT / $GRADIO_SERVER_PORT, then 7860.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no DNS look-ups


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--weights-dir", default=None, help="weights folder with manifest.json (default: weights/)")
    p.add_argument("--policy", default=None, help="any GGUF to use as the policy instead of the manifest's, "
                                                  "or a base fetched by `python -m rstar_app.bases`")
    p.add_argument("--no-ppm", action="store_true", help="search without the process preference model")
    p.add_argument("--max-waiting", type=int, default=None, help="searches allowed to wait in line (default 4)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from rstar_app.ui import create_app, launch_kwargs

    if args.policy:  # the model loads after the page opens: a base not fetched yet is said now, not at the first search
        from rstar_app.bases import resolve
        try:
            args.policy = str(resolve(args.policy))
        except FileNotFoundError as e:
            sys.exit(f"error: {e}")

    def engine_factory():
        from rstar_app.engine import Engine
        return Engine.load(weights_dir=args.weights_dir, policy_path=args.policy, no_ppm=args.no_ppm)

    host = args.host or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    port = args.port or int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    demo, _ = create_app(engine_factory, max_waiting=args.max_waiting)
    demo.queue(max_size=64, default_concurrency_limit=8)
    demo.launch(server_name=host, server_port=port, show_error=True, **launch_kwargs())


if __name__ == "__main__":
    main()
