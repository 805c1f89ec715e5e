"""Procedural practice word problems with exact answers: a curriculum below GSM8K.

Why: the round-1 policy (135M) solves almost no GSM8K train problem even with search (0 of 15
one-calculator-step problems at 8 rollouts x 4 candidates, measured), so its trees hold no correct
terminal and give no PPM pairs. These problems chain 1-3 everyday operations (buy, give away,
equal groups, equal shares) on one quantity, so a tree holds both right and wrong answers.

Written from scratch here (names, items and sentences are this file's own), not derived from any
benchmark: no test item of GSM8K, SVAMP or MultiArith is used or paraphrased. Deterministic: the same
seed gives the same problems, so the file need not be committed.

    python -m training.practice --n 300 --seed 0 --out training/data/practice.jsonl
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.common import read_jsonl, write_jsonl  # noqa: E402

NAMES = [("Maya", "she"), ("Omar", "he"), ("Lena", "she"), ("Tariq", "he"), ("Ines", "she"), ("Kofi", "he"),
         ("Priya", "she"), ("Mateo", "he"), ("Yuki", "she"), ("Sven", "he"), ("Amara", "she"), ("Dario", "he")]
ITEMS = [("stickers", "sheet"), ("marbles", "bag"), ("pencils", "box"), ("cookies", "tray"), ("stamps", "album page"),
         ("shells", "bucket"), ("cards", "pack"), ("beads", "jar"), ("crayons", "case"), ("buttons", "tin")]
FRIENDS = ["a cousin", "a classmate", "a neighbour", "the teacher", "a friend", "a teammate"]


def _add(rng, x, item, pron):
    b = rng.randint(2, 40)
    verb = rng.choice(["buys", "finds", "is given", "wins"])
    return x + b, f"Then {pron} {verb} {b} more {item}."


def _sub(rng, x, item, pron):
    if x < 3:
        return None
    b = rng.randint(1, x - 1)
    to = rng.choice(FRIENDS)
    verb = rng.choice([f"gives {b} {item} to {to}", f"loses {b} {item}", f"uses {b} {item}"])
    return x - b, f"Then {pron} {verb}."


def _times(rng, x, item, pron):
    if x > 60:
        return None
    k = rng.randint(2, 6)
    return x * k, f"Then {pron} ends up with {k} times as many {item} as {pron} had."


def _share(rng, x, item, pron):
    ks = [k for k in range(2, 10) if x % k == 0]  # x >= 1 here: _sub leaves at least one
    if not ks:
        return None
    k = rng.choice(ks)
    return x // k, f"Then {pron} splits the {item} equally among {k} friends and keeps only one friend's share."


OPS = (_add, _sub, _times, _share)


def make_problem(rng: random.Random, n_ops: int) -> dict:
    """One problem: a starting amount (given directly or as equal groups), then n_ops operations."""
    (name, pron), (item, group) = rng.choice(NAMES), rng.choice(ITEMS)
    if rng.random() < 0.4:
        g, per = rng.randint(2, 6), rng.randint(2, 12)
        x, text = g * per, [f"{name} has {g} {group}s of {item} with {per} {item} in each {group}."]
    else:
        x = rng.randint(5, 60)
        text = [f"{name} has {x} {item}."]
    done = 0
    while done < n_ops:
        got = rng.choice(OPS)(rng, x, item, pron)
        if got is None:
            continue
        x, sentence = got
        text.append(sentence)
        done += 1
    text.append(f"How many {item} does {name} have now?")
    return {"question": " ".join(text), "gold": str(x), "n_ops": n_ops}


def generate(n: int, *, seed: int = 0, max_ops: int = 3) -> list[dict]:
    """n problems, n_ops cycling 1..max_ops (easy and harder ones in every prefix of the file)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        p = make_problem(rng, 1 + i % max_ops)
        rows.append({"id": f"practice-s{seed}-{i:05d}", **p})
    return rows


def ensure(path: str | Path, n: int, *, seed: int = 0, max_ops: int = 3) -> Path:
    """Write the file unless it already holds exactly these problems (regenerated, never trusted)."""
    path = Path(path)
    rows = generate(n, seed=seed, max_ops=max_ops)
    if not path.exists() or read_jsonl(path) != rows:
        write_jsonl(path, rows)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="procedural practice word problems (JSONL: id, question, gold, n_ops)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-ops", type=int, default=3)
    ap.add_argument("--out", default="training/data/practice.jsonl")
    a = ap.parse_args(argv)
    print(ensure(a.out, a.n, seed=a.seed, max_ops=a.max_ops))


if __name__ == "__main__":
    main()
