"""`rstar-app bench`: one table of engine speeds, every ratio measured in the same run.

Rows: K siblings sequentially (n=1 calls, same KV reuse) vs in one batch; K independent samples
grown step by step (best-of-N), one call per sample vs one generate_many per step; prefix tokens
re-evaluated while a search jumps between branches, with snapshots vs a single-sequence cache
(what the high-level API does); PPM ms per step, siblings one by one vs in one decode; executor
ms per step cold / warm / prefix-cached.
"""

from __future__ import annotations

import time

import numpy as np

from .steps import STOP, build_prompt

PROBLEM = ("A bakery sells 12 muffins per tray. On Monday it baked 7 trays and sold all but 9 muffins. "
           "How many muffins did it sell?")
STEPS = ["# Step 1: Muffins baked on Monday.\nbaked = 12 * 7\n<end_of_step>\n",
         "# Step 2: Subtract the muffins left.\nsold = baked - 9\n<end_of_step>\n",
         "# Now print the final answer\nprint(sold)\n<end_of_code>\n<output>75<end_of_output>\n"]


def _row(name: str, value: str, note: str = "") -> str:
    return f"| {name} | {value} | {note} |"


def bench_policy(policy, k: int, tokens: int, repeats: int) -> list[str]:
    prefix = build_prompt(PROBLEM, few_shot=True)
    kw = dict(max_tokens=tokens, temperature=0.8, top_p=0.95, top_k=40, stop=())
    policy.generate(prefix, n=1, seed=0, **kw)  # warm-up: prefix decoded, caches hot
    seq_tps, bat_tps = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        n_seq = sum(policy.generate(prefix, n=1, seed=100 * r + i, **kw)[0].tokens for i in range(k))
        seq_tps.append(n_seq / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        n_bat = sum(c.tokens for c in policy.generate(prefix, n=k, seed=100 * r, **kw))
        bat_tps.append(n_bat / (time.perf_counter() - t0))
    s, b = float(np.median(seq_tps)), float(np.median(bat_tps))
    rows = [_row(f"policy: {k} siblings sequential", f"{s:.1f} tok/s", f"median of {repeats}"),
            _row(f"policy: {k} siblings in one batch", f"{b:.1f} tok/s", f"**{b / s:.2f}x** sequential")]
    # branch jumping: root -> A -> B -> A' -> B' (children of the same parent, revisited)
    nodes = [prefix, prefix + STEPS[0], prefix + STEPS[0] + STEPS[1], prefix + STEPS[0],
             prefix + STEPS[0] + STEPS[1] + STEPS[2], prefix + STEPS[0] + STEPS[1]]
    before = dict(policy.stats)
    for i, text in enumerate(nodes):
        policy.generate(text, n=1, seed=i, max_tokens=1, temperature=0.0, stop=STOP)
    evaluated = policy.stats["prefill_tokens"] - before["prefill_tokens"]
    single = _single_sequence_cost(nodes, policy)
    total = sum(policy.count_tokens(t) for t in nodes)
    rows.append(_row("prefix tokens evaluated over 6 branch jumps", f"{evaluated}",
                     f"single-sequence cache: {single}, no cache: {total} "
                     f"(**{single / max(evaluated, 1):.1f}x** fewer than single-sequence)"))
    return rows


def bench_samples(policy, k: int, tokens: int, repeats: int, steps: int = 3) -> list[str]:
    """K samples grown `steps` steps each, as best-of-N does: generate(n=1) per sample and step
    (snapshots restore each sample's prefix) vs one generate_many per step (rows keep their KV)."""
    base = build_prompt(PROBLEM, few_shot=True)
    kw = dict(max_tokens=tokens, top_p=0.95, top_k=40, stop=STOP)
    rates: dict[str, list[float]] = {"one call per sample": [], "generate_many": []}
    for r in range(repeats):
        for mode, out in rates.items():
            rows, made, t0 = [base] * k, 0, time.perf_counter()
            for depth in range(steps):
                seeds = [1000 * r + 10 * i + depth for i in range(k)]
                if mode == "generate_many":
                    got = policy.generate_many(rows, temperatures=[0.8] * k, seeds=seeds, **kw)
                else:
                    got = [policy.generate(p, n=1, temperature=0.8, seed=sd, **kw)[0] for p, sd in zip(rows, seeds)]
                made += sum(c.tokens for c in got)
                rows = [p + c.text + (c.stop or "") + "\n" for p, c in zip(rows, got)]
            out.append(made / (time.perf_counter() - t0))
    one, many = (float(np.median(v)) for v in rates.values())
    return [_row(f"best-of-N: {k} samples x {steps} steps, one call per sample", f"{one:.1f} tok/s", f"median of {repeats}"),
            _row(f"best-of-N: {k} samples x {steps} steps, generate_many per step", f"{many:.1f} tok/s",
                 f"**{many / one:.2f}x** one call per sample")]


def _single_sequence_cost(texts, policy) -> int:
    """Tokens a one-sequence cache (the high-level API) re-evaluates: all but the common prefix."""
    cost, held = 0, []
    for text in texts:
        toks = policy.cx.tokenize(text)
        common = 0
        while common < min(len(held), len(toks)) and held[common] == toks[common]:
            common += 1
        cost += len(toks) - common
        held = toks
    return cost


def bench_ppm(ppm, k: int, repeats: int) -> list[str]:
    prefix = build_prompt(PROBLEM, few_shot=False) + STEPS[0]
    ppm.score(prefix, [STEPS[1]])
    one, batch = [], []
    for r in range(repeats):
        for flag, times in ((False, one), (True, batch)):
            # new sibling texts every time: no KV snapshot may serve them
            kids = [STEPS[1].replace("sold", f"sold_{r}_{int(flag)}_{i}") for i in range(k)]
            ppm.batch_siblings = flag
            t0 = time.perf_counter()
            ppm.score(prefix, kids)
            times.append((time.perf_counter() - t0) / k * 1000)
    ppm.batch_siblings = False
    o, b = float(np.median(one)), float(np.median(batch))
    return [_row("PPM: ms per step, one child at a time", f"{o:.1f} ms", f"{k} siblings of a shared prefix"),
            _row("PPM: ms per step, siblings in one decode", f"{b:.1f} ms", f"**{o / b:.2f}x** the speed of one at a time")]


def bench_executor(repeats: int = 20) -> list[str]:
    from .sandbox import Sandbox
    codes = ["import math\nbaked = 12 * 7\n", "sold = baked - 9\n", "print(sold, math.sqrt(sold))\n"]
    with Sandbox() as sb:
        t0 = time.perf_counter()
        sb.run(codes)
        cold = (time.perf_counter() - t0) * 1000
        warm, cached = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            sb.run([f"x{i} = {i}\n", f"print(x{i} * 2)\n"])  # new prefix every time: no cache
            warm.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            sb.run(codes[:2] + [f"print(sold + {i})\n"])  # shared prefix: cache
            cached.append((time.perf_counter() - t0) * 1000)
    return [_row("executor: first step (cold worker)", f"{cold:.1f} ms"),
            _row("executor: warm step, new program", f"{np.median(warm):.1f} ms", f"median of {repeats}"),
            _row("executor: warm step, cached prefix", f"{np.median(cached):.1f} ms", f"median of {repeats}")]


def main(a) -> int:
    from .cli import engine_from_args
    from .models.llama_cpp import LlamaPPM
    engine = engine_from_args(a, max_candidates=a.candidates)
    rows = ["| measure | value | note |", "|---|---|---|"]
    rows += bench_policy(engine.policy, a.candidates, a.tokens, a.repeats)
    if hasattr(engine.policy, "generate_many"):
        rows += bench_samples(engine.policy, a.candidates, a.tokens, a.repeats)
    ppm, note = engine.ppm, ""
    if ppm is None and hasattr(engine.policy, "llm"):
        # no trained PPM: time the mechanism with a random head on the base model
        import tempfile, os
        rng = np.random.default_rng(0)
        hidden = engine.policy.cx.L.llama_model_n_embd(engine.policy.llm.model)
        path = os.path.join(tempfile.mkdtemp(), "head.npz")
        np.savez(path, weight=rng.normal(size=hidden) / hidden ** 0.5, bias=np.zeros(1))
        ppm = LlamaPPM(engine.policy.llm.model_path, path, max_candidates=a.candidates)
        note = " (no trained PPM loaded: timed with a random head on the base model)"
    if ppm is not None:
        rows += [r.replace(" |", note + " |", 1) if note and r.startswith("| PPM") else r
                 for r in bench_ppm(ppm, a.candidates, a.repeats)]
    rows += bench_executor()
    engine.close()
    print(f"models: {engine.description}\n")
    print("\n".join(rows))
    return 0
