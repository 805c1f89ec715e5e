"""Record the example traces the app opens instantly (run once; the JSON files are committed).

    python -m rstar_app.ui.record_examples            # real engine (weights/manifest.json)

Examples never run a search at start-up (on a Space that would happen at every boot): the page
opens these pre-recorded searches. Each problem is tried with a few seeds and the first trace
whose chosen answer matches the known answer is kept (else the last one). Terminals are graded
against the known answer afterwards, for the correct/incorrect markers; the search itself never
saw it (no `gold` during the search, exactly as in the app).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import SearchConfig
from ..grading import is_correct
from ..tree import TERMINAL

OUT = Path(__file__).resolve().parent / "examples"
MAX_BYTES = 300_000

PROBLEMS = [
    ("Cakes", "A baker makes 12 cakes a day. How many cakes does he make in 5 days?", "60"),
    ("Pens", "Sara has 5 pens. She buys 7 more pens. How many pens does she have now?", "12"),
    ("Marbles", "Jake has 15 marbles and gives 6 to his friend. How many marbles does Jake have left?", "9"),
]


def grade(tree, gold: str) -> None:
    tree.gold = gold
    for nd in tree.nodes:
        if nd.status == TERMINAL and nd.answer is not None:
            nd.correct = is_correct(nd.answer, gold)
    by_id = {nd.id: nd for nd in tree.nodes}
    for ev in tree.events:  # so a replay shows the same grades
        if ev.kind == "node" and ev.node_id in by_id and ev.data.get("status") == TERMINAL:
            ev.data["correct"] = by_id[ev.node_id].correct


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", type=int, default=8)
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--seeds", type=int, default=4, help="seeds tried per problem")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    from ..engine import Engine

    engine = Engine.load()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for i, (title, problem, gold) in enumerate(PROBLEMS, 1):
            best = None
            for seed in range(args.seeds):
                cfg = SearchConfig(rollouts=args.rollouts, candidates=args.candidates, seed=seed, time_limit=600)
                tree = engine.solve(problem, cfg)
                grade(tree, gold)
                print(f"{title!r} seed {seed}: answer {tree.answer!r} (gold {gold}), {len(tree.nodes)} nodes")
                if best is None or (tree.answer is not None and best.answer is None):
                    best = tree
                if tree.answer is not None and is_correct(tree.answer, gold):
                    best = tree
                    break
            best.meta["title"] = title
            text = json.dumps(best.to_json(), ensure_ascii=False, separators=(",", ":"))
            if len(text.encode()) > MAX_BYTES:
                raise SystemExit(f"{title}: trace is {len(text.encode()):,} bytes (limit {MAX_BYTES:,}): "
                                 "use fewer rollouts/candidates")
            path = args.out / f"{i:02d}-{title.lower().replace(' ', '-')}.json"
            path.write_text(text + "\n", encoding="utf-8")
            print(f"wrote {path} ({len(text.encode()):,} bytes)")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
