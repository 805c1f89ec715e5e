"""Training rollouts: the engine's search over problems with ground truth, one trace per line.

Resumable and append-only: each finished problem is one JSONL row {id, question, gold, answer,
correct, seconds, trace}, flushed and fsynced; a rerun skips ids already in the file, and a torn
last line (the row being written when the process died) is cut off first. `--shard i/N` takes every
N-th problem starting at i, so N processes can share a problem set (separate output files).

    python -m training.rollouts --problems /work/shared/data/gsm8k/train.jsonl --out r2.jsonl \
        --policy-adapter weights/policy-r1.gguf --limit 200 --rollouts 8 --candidates 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.jsonl import append_row, read_rows  # noqa: E402
from training.common import iter_jsonl, load_yaml  # noqa: E402

# exit status of a run that SIGTERM stopped before its last problem (EX_TEMPFAIL): the caller
# (training.evolve) must not record the stage as finished; a rerun resumes
EXIT_STOPPED = 75


# ---------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------

def load_problems(path: str | Path, *, id_prefix: str | None = None, max_calc_steps: int = 0) -> list[dict]:
    """[{id, question, gold}] from GSM8K-style ({question, answer '... #### N'}), bootstrap-style
    ({id, question, gold}) or SVAMP/MultiArith-like JSONL. `max_calc_steps` > 0 keeps only GSM8K
    problems whose worked answer has at most that many `<<expr=value>>` calculator marks (a
    curriculum: a 135M policy solves too few longer problems to give both outcomes in one tree);
    ids keep their position in the whole file, so a filtered run and a full run share ids."""
    p = Path(path)
    prefix = id_prefix if id_prefix is not None else _default_prefix(p)
    out = []
    for i, row in enumerate(iter_jsonl(p)):
        worked = row["answer"] if isinstance(row.get("answer"), str) and "####" in row["answer"] else None
        if max_calc_steps and worked is not None and worked.count("<<") > max_calc_steps:
            continue
        q = row.get("question") or row.get("problem")
        gold = row.get("gold")
        if gold is None and worked is not None:
            gold = worked.rsplit("####", 1)[1].strip().replace(",", "")
        elif gold is None and row.get("answer") is not None:
            gold = str(row["answer"])
        if not q or gold is None:
            continue
        out.append({"id": str(row.get("id") or f"{prefix}{i:05d}"), "question": q, "gold": str(gold)})
    return out


def _default_prefix(p: Path) -> str:
    if "gsm8k" in str(p).lower():
        return f"gsm8k-{p.stem}-"
    return re.sub(r"[^a-z0-9]+", "-", p.stem.lower()) + "-"


def shard(items: list, spec: str | None) -> list:
    if not spec:
        return items
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard must look like i/N with 0 <= i < N, got {spec!r}")
    i, n = int(m.group(1)), int(m.group(2))
    return items[i::n]


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------

def done_ids(out: str | Path) -> set[str]:
    """Ids already searched; repairs a torn last line (see rstar_app.jsonl). A row whose search
    raised (`error`, e.g. out of memory under --parallel) is not done: a rerun tries it again, and
    readers of the file (training.extract.load_traces) skip error rows and take one trace per id."""
    return {str(r.get("id")) for r in read_rows(out, repair=True) if "error" not in r}


def _progress(total: int, initial: int):
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, unit="problem", dynamic_ncols=True, file=sys.stderr)
    except ImportError:  # pragma: no cover
        class Plain:
            def __init__(self):
                self.n = initial
            def update(self, k=1):
                self.n += k
                print(f"[rollouts] {self.n}/{total}", flush=True)
            def set_postfix_str(self, s):
                pass
            def close(self):
                pass
        return Plain()


def run_rollouts(problems: Iterable[dict], solve: Callable[[dict], "object"], out: str | Path, *,
                 progress: bool = True, should_stop: Callable[[], bool] | None = None,
                 parallel: int = 1) -> dict:
    """Solve every problem not yet in `out` and append its row. `solve(problem) -> Tree`.
    parallel > 1 runs that many problems at once in threads (solve must be thread-safe); rows
    are appended in the order problems finish, so a resumed run is still exact."""
    from rstar_app.grading import is_correct
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    problems = list(problems)
    done = done_ids(out)
    todo = [p for p in problems if p["id"] not in done]
    stats = {"total": len(problems), "skipped_done": len(problems) - len(todo), "ran": 0, "solved": 0,
             "correct_answer": 0, "errors": 0, "seconds": 0.0}
    bar = _progress(len(problems), len(problems) - len(todo)) if progress else None
    stopped = should_stop or (lambda: False)
    finished = _in_threads(solve, todo, parallel, stopped) if parallel > 1 else (
        _attempt(solve, p) for p in todo if not stopped())
    t_all = time.time()
    with open(out, "a", encoding="utf-8") as f:
        for prob, seconds, tree, error in finished:
            head = {"id": prob["id"], "question": prob["question"], "gold": prob["gold"]}
            if error is not None:  # one bad problem must not end a long run
                stats["errors"] += 1
                append_row(f, {**head, "error": error, "seconds": seconds})
                continue
            trace = tree.to_json()
            trace["events"] = []  # replay events are not needed for training and triple the size
            trace.setdefault("meta", {})["id"] = prob["id"]
            solved = any(nd.correct for nd in tree.terminals())
            correct = bool(tree.answer is not None and is_correct(tree.answer, prob["gold"]))
            append_row(f, {**head, "answer": tree.answer, "correct": correct, "solved": solved,
                           "seconds": seconds, "trace": trace})
            stats["ran"] += 1
            stats["solved"] += solved
            stats["correct_answer"] += correct
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"solved {stats['solved']}/{stats['ran']}")
    if bar is not None:
        bar.close()
    stats["seconds"] = round(time.time() - t_all, 1)
    stats["stopped"] = stats["ran"] + stats["errors"] < len(todo)  # should_stop cut the run short
    return stats


def _attempt(solve: Callable[[dict], "object"], prob: dict) -> tuple[dict, float, object, str | None]:
    """(problem, seconds, tree or None, error message or None)."""
    t0 = time.time()
    try:
        tree, error = solve(prob), None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001
        tree, error = None, f"{type(e).__name__}: {e}"[:500]
    return prob, round(time.time() - t0, 3), tree, error


def _in_threads(solve, todo: list[dict], parallel: int, stopped: Callable[[], bool]):
    """_attempt results in finishing order, at most `parallel` problems in flight; once `stopped()`
    no new problem starts and the ones in flight finish."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    queue = iter(todo)
    with ThreadPoolExecutor(parallel, thread_name_prefix="rollout") as pool:
        running: set = set()
        while True:
            while len(running) < parallel and not stopped() and (prob := next(queue, None)) is not None:
                running.add(pool.submit(_attempt, solve, prob))
            if not running:
                return
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()


# ---------------------------------------------------------------------------------------------
# CLI: an Engine over the given weights
# ---------------------------------------------------------------------------------------------

def search_config(recipe_search: dict | None, args: argparse.Namespace):
    from rstar_app.config import SearchConfig
    d = dict(recipe_search or {})
    for k in ("rollouts", "candidates", "max_depth", "max_step_tokens", "seed", "time_limit", "temperature", "strategy"):
        v = getattr(args, k, None)
        if v is not None:
            d[k] = v
    return SearchConfig.from_dict(d)


def make_engine(args: argparse.Namespace, candidates: int):
    """`candidates`: the search's K (recipe or flag), which the backends must be sized for."""
    from rstar_app.engine import Engine
    from training.common import resolve_base
    base = resolve_base(args.base or None)
    use_ppm = bool(args.ppm_head)
    if args.backend == "torch":
        return _torch_engine(args, base, use_ppm, max(8, candidates))
    return Engine.load(policy_path=str(base), policy_adapter=args.policy_adapter or None,
                       ppm_path=str(base) if use_ppm else None, ppm_adapter=args.ppm_adapter or None,
                       ppm_head=args.ppm_head or None, no_ppm=not use_ppm,
                       few_shot=args.few_shot, max_candidates=max(8, candidates),
                       n_ctx=args.n_ctx, n_threads=args.threads or None)


def _torch_engine(args: argparse.Namespace, base, use_ppm: bool, k: int):
    """The same search over rstar_app.models.torch_hf (GPU rollouts). Adapter GGUFs are imported
    back to peft once, next to the output file. An adapter GGUF for the PPM is the stacked one the
    engine loads (policy + PPM): it is merged alone; a peft PPM dir is merged over the policy's."""
    from rstar_app.engine import Engine
    from rstar_app.models.torch_hf import TorchPolicy, TorchPPM
    from rstar_app.sandbox import Sandbox
    from training.export import as_peft_dir

    def peft_dir(adapter: str, tag: str) -> str | None:
        if not adapter:
            return None
        return as_peft_dir(adapter, Path(args.out).parent / f".{Path(args.out).stem}.{tag}-peft", base=str(base))

    pol = peft_dir(args.policy_adapter, "policy")
    policy = TorchPolicy(base, adapter=pol, device=args.device, dtype=args.dtype, max_candidates=k, n_ctx=args.n_ctx)
    if args.parallel > 1:
        from rstar_app.models.batching import BatchingPolicy
        policy = BatchingPolicy(policy, chunk_tokens=args.chunk_tokens or None)
    ppm = None
    if use_ppm:
        stacked = bool(args.ppm_adapter) and not Path(args.ppm_adapter).is_dir()
        ppm = TorchPPM(base, args.ppm_head, policy_adapter=None if stacked else pol,
                       ppm_adapter=peft_dir(args.ppm_adapter, "ppm"), device=args.device, dtype=args.dtype,
                       max_candidates=k)
        if args.parallel > 1:
            from rstar_app.models.batching import BatchingPPM
            ppm = BatchingPPM(ppm)
    return Engine(policy=policy, ppm=ppm, executor=Sandbox(workers=args.sandbox_workers), few_shot=args.few_shot,
                  description=f"policy {policy.name}" + (f", {ppm.name}" if ppm else ", no PPM"),
                  concurrent=args.parallel > 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="MCTS rollouts with ground truth -> trace JSONL")
    ap.add_argument("--problems", required=True, help="JSONL with question + gold (or GSM8K answer)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", help="YAML recipe; its rollouts.search section is the SearchConfig")
    ap.add_argument("--shard", help="i/N: every N-th problem starting at i")
    ap.add_argument("--offset", type=int, default=0, help="skip the first N problems (before sharding)")
    ap.add_argument("--limit", type=int, default=0, help="first N problems only (after offset, before sharding)")
    ap.add_argument("--max-calc-steps", type=int, default=None,
                    help="GSM8K only: keep problems with at most N calculator marks (default: recipe or all)")
    ap.add_argument("--base", default="", help="base GGUF (default: shipped SmolLM2)")
    ap.add_argument("--policy-adapter", default="", help="policy LoRA GGUF (torch: or a peft dir)")
    ap.add_argument("--ppm-adapter", default="", help="PPM adapter GGUF (stacked; torch: or a peft dir over the policy)")
    ap.add_argument("--ppm-head", default="", help="PPM value head .npz (turns on PPM-augmented search)")
    ap.add_argument("--few-shot", action="store_true", help="prompt with worked examples (untrained base)")
    ap.add_argument("--rollouts", type=int)
    ap.add_argument("--candidates", type=int)
    ap.add_argument("--max-depth", type=int)
    ap.add_argument("--max-step-tokens", type=int)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--time-limit", type=float)
    ap.add_argument("--strategy")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--backend", choices=["llama", "torch"], default="llama",
                    help="llama: llama.cpp over GGUF (CPU); torch: transformers on --device (GPU rollouts)")
    ap.add_argument("--device", default="auto", help="torch backend: cuda / cpu / auto")
    ap.add_argument("--dtype", default="auto", help="torch backend: bfloat16 / float32 / auto")
    ap.add_argument("--sandbox-workers", type=int, default=1, help="torch backend: sandbox processes")
    ap.add_argument("--parallel", type=int, default=1,
                    help="torch backend: problems searched at once, their policy calls batched on the device")
    ap.add_argument("--chunk-tokens", type=int, default=32,
                    help="--parallel: tokens per batch chunk, between which calls leave and join (0: none)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.parallel < 1 or (args.parallel > 1 and args.backend != "torch"):
        ap.error("--parallel N > 1 needs --backend torch (llama.cpp runs one search at a time)")

    recipe = load_yaml(args.recipe) if args.recipe else {}
    cfg = search_config((recipe.get("rollouts") or {}).get("search"), args)
    max_calc = args.max_calc_steps if args.max_calc_steps is not None else int((recipe.get("rollouts") or {}).get("max_calc_steps") or 0)
    problems = load_problems(args.problems, max_calc_steps=max_calc)[args.offset:]
    if args.limit:
        problems = problems[: args.limit]
    problems = shard(problems, args.shard)
    engine = make_engine(args, cfg.candidates)

    stop = {"flag": False}

    def on_term(*_):
        stop["flag"] = True  # finish the current problem's row, then exit
    signal.signal(signal.SIGTERM, on_term)

    def solve(prob):
        seed = (cfg.seed * 1_000_003 + int.from_bytes(prob["id"].encode()[-6:].rjust(6, b"\0"), "big")) % (2**31 - 1)
        client = getattr(engine.policy, "client", contextlib.nullcontext)
        with client():
            return engine.solve(prob["question"], cfg.replace(seed=seed), gold=prob["gold"])

    fronts = {"batches": engine.policy, "ppm_batches": engine.ppm} if args.parallel > 1 else {}
    try:
        stats = run_rollouts(problems, solve, args.out, progress=not args.no_progress,
                             should_stop=lambda: stop["flag"], parallel=args.parallel)
    finally:
        engine.close()
        for front in fronts.values():
            if front is not None:
                front.close()
    stats["search"] = cfg.to_dict()
    stats.update({k: dict(f.batches) for k, f in fronts.items() if f is not None})
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    sys.exit(EXIT_STOPPED if main().get("stopped") else 0)
