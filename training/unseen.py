"""GSM8K-train problems the shipped policy never trained on: training problems that look like test ones.

Every GSM8K-train problem whose calculator marks could be turned into a code trajectory is in
`training/data/bootstrap_gsm8k.jsonl` (7,128 of 7,473), and round 1's SFT trained on all of them but
128 held out (`training.sft.select`, seed 0; `training/gpu_sft.sh --eval-size 128`) for two epochs;
rounds 2 and 3 replayed a seeded sample of 600 and their own extracted trajectories. If search
trees of such problems were partly recall, a selector or PPM fit on them would learn a confidence
that test problems do not give; these problems are the control. (Measured for round 3: it is not so,
greedy 4 / 100 trained against 4 / 92 held out; RESULTS.md, "Training problems the policy never
saw".) The problems left are the held-out ones never replayed and the ones the bootstrap could not
convert; the ones in the shipped rounds' rollout and PPM pair files are dropped too (their trees, or
a synthetic pair built on the gold solution, trained a PPM).

    python -m training.unseen --out training/data/gsm8k_train_unseen.jsonl

The output is in a seeded random order (by a hash of each id, so excluding one more problem moves no
other): the first N rows, and so a run stopped after N problems, are a random sample.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import random
from pathlib import Path
from typing import Iterable, Sequence

from training.common import REPO, read_jsonl, write_jsonl

# the shipped rounds' rollout trees (their pairs trained the PPMs) and PPM pair files (the synthetic
# pairs put bootstrap solutions of problems the policy never trained on in front of the PPM). Rounds
# 1-3 made the shipped weights; publishing round 4 or later means adding its files here and
# regenerating the list (round 4's unpublished rollouts and pairs touch 38 of the 428).
DEFAULT_EXCLUDE = "training/runs/cpu-small/round-[123]/rollouts*.jsonl,training/runs/cpu-small/round-[123]/pairs*.jsonl"


def heldout_ids(bootstrap: Sequence[dict], *, eval_size: int, seed: int) -> set[str]:
    """Ids `training.sft` held out of an SFT run over `bootstrap` (its own split, not a copy of it)."""
    from training.sft import select
    _, ev = select(list(bootstrap), 0, eval_size, seed)
    return {str(r["id"]) for r in ev}


def replayed_ids(bootstrap: Sequence[dict], replay: dict[int, int]) -> set[str]:
    """Ids of the bootstrap rows replayed in later rounds: {round: n} as `training.evolve` samples them
    (`random.Random(round).sample(rows, n)`)."""
    rows = list(bootstrap)
    out: set[str] = set()
    for k, n in replay.items():
        out |= {str(r["id"]) for r in random.Random(k).sample(rows, min(n, len(rows)))}
    return out


def unseen_problems(problems: Iterable[dict], bootstrap: Sequence[dict], *, eval_size: int = 128,
                    sft_seed: int = 0, replay: dict[int, int] | None = None,
                    seen: Iterable[str] = (), shuffle_seed: int | None = 0) -> list[dict]:
    """The problems no policy SFT of the shipped rounds saw a solution of, nor any rollout of theirs.

    problems: [{id, question, gold}] (`training.rollouts.load_problems`); bootstrap: its rows (all
    trained in round 1 but `eval_size` held out with `sft_seed`); replay: {round: rows} sampled back
    from the bootstrap later; seen: more ids to drop (extracted trajectories, rolled-out problems)."""
    boot_ids = {str(r["id"]) for r in bootstrap}
    held = heldout_ids(bootstrap, eval_size=eval_size, seed=sft_seed) if eval_size else set()
    trained = (boot_ids - held) | replayed_ids(bootstrap, replay or {}) | {str(i) for i in seen}
    out = [p for p in problems if str(p["id"]) not in trained]
    if shuffle_seed is not None:  # by a seeded hash of the id: dropping a problem moves no other one
        out.sort(key=lambda p: hashlib.sha256(f"{shuffle_seed}:{p['id']}".encode()).hexdigest())
    return out


def recall_gap(policy, trained: Sequence[dict], heldout: Sequence[dict]) -> dict:
    """How much surer the policy is of gold solutions it was trained on: the mean log-probability per
    token of each bootstrap trajectory's steps (the program's printed output and the answer line left
    out: the executor writes the output) given the problem's prompt, for trained vs held-out rows.
    `policy` has `token_logprobs(prefix, text)` (LlamaPolicy)."""
    from rstar_app.steps import OUTPUT, build_prompt

    def per_token(row: dict) -> float:
        text = row["text"].split(OUTPUT, 1)[0]
        lps = [lp for _, lp in policy.token_logprobs(build_prompt(row["question"]), text)]
        return sum(lps) / max(1, len(lps))

    a, b = [per_token(r) for r in trained], [per_token(r) for r in heldout]
    wins = sum((x > y) + 0.5 * (x == y) for x in a for y in b)  # P(trained row surer): an AUC
    mean = lambda v: sum(v) / max(1, len(v))  # noqa: E731
    return {"trained": {"rows": len(a), "mean_logprob_per_token": round(mean(a), 4)},
            "held_out": {"rows": len(b), "mean_logprob_per_token": round(mean(b), 4)},
            "p_trained_surer": round(wins / max(1, len(a) * len(b)), 4)}


def _ids(paths: Iterable[str]) -> set[str]:
    """Problem ids in JSONL files: rows' `problem_id` (PPM pairs, extracted SFT rows, whose own `id`
    is `<problem>#<node>`), else `id` (rollouts, bootstrap trajectories)."""
    out: set[str] = set()
    for p in paths:
        out |= {str(r.get("problem_id") or r["id"]) for r in read_jsonl(p) if r.get("problem_id") or "id" in r}
    return out


def _replay_arg(spec: str) -> dict[int, int]:
    out = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        k, _, n = part.partition(":")
        out[int(k)] = int(n)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", default="/work/shared/data/gsm8k/train.jsonl")
    ap.add_argument("--bootstrap", default=str(REPO / "training/data/bootstrap_gsm8k.jsonl"),
                    help="round 1's SFT data (python -m training.bootstrap)")
    ap.add_argument("--eval-size", type=int, default=128, help="rows round 1's SFT held out")
    ap.add_argument("--sft-seed", type=int, default=0, help="the seed of that split")
    ap.add_argument("--replay", default="2:600,3:600", help="round:rows replayed from the bootstrap")
    ap.add_argument("--extracted", default="training/runs/cpu-small/round-2/sft_extracted.jsonl,"
                    "training/runs/cpu-small/round-3/sft_extracted.jsonl",
                    help="comma-separated SFT files of later rounds (their ids are dropped)")
    ap.add_argument("--exclude", default=DEFAULT_EXCLUDE,
                    help="comma-separated globs of rollout / pair files whose problems are dropped")
    ap.add_argument("--shuffle-seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--held-out-out", metavar="PATH",
                    help="also write the held-out part alone (unseen problems the bootstrap did convert: a "
                         "random sample of the problems round 1 trained on, less the training)")
    ap.add_argument("--trained-out", metavar="PATH",
                    help="also write a seeded random sample of --trained-n problems round 1 trained on (the control)")
    ap.add_argument("--trained-n", type=int, default=100)
    ap.add_argument("--recall-check", type=int, default=0, metavar="N",
                    help="also score N held-out and N trained bootstrap solutions with the policy (recall_gap)")
    ap.add_argument("--weights", default=str(REPO / "weights"), help="with --recall-check: whose policy")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    from training.rollouts import load_problems
    problems = load_problems(a.problems)
    bootstrap = read_jsonl(a.bootstrap)
    extracted = [p for p in a.extracted.split(",") if p]
    rolled = sorted({str(Path(p).resolve()) for g in a.exclude.split(",") if g
                     for p in glob.glob(str(REPO / g)) + glob.glob(g)})
    seen = _ids(extracted) | _ids(rolled)
    out = unseen_problems(problems, bootstrap, eval_size=a.eval_size, sft_seed=a.sft_seed,
                          replay=_replay_arg(a.replay), seen=seen, shuffle_seed=a.shuffle_seed)
    write_jsonl(a.out, out)
    boot_ids = {str(r["id"]) for r in bootstrap}
    print(json.dumps({"problems": len(problems), "unseen": len(out),
                      "held_out": sum(p["id"] in boot_ids for p in out),
                      "not_converted": sum(p["id"] not in boot_ids for p in out),
                      "excluded_files": rolled, "out": a.out}))
    trained_ids = boot_ids - heldout_ids(bootstrap, eval_size=a.eval_size, seed=a.sft_seed)
    if a.held_out_out:
        write_jsonl(a.held_out_out, [p for p in out if p["id"] in boot_ids])
    if a.trained_out:
        pool = sorted((p for p in problems if p["id"] in trained_ids), key=lambda p: p["id"])
        write_jsonl(a.trained_out, random.Random(a.shuffle_seed).sample(pool, min(a.trained_n, len(pool))))
    if a.recall_check:
        from rstar_app.models.llama_cpp import LlamaPolicy
        from rstar_app.weights import load_weights
        w = load_weights(a.weights)
        policy = LlamaPolicy(w.base, adapter=str(w.policy_adapter) if w.policy_adapter else None,
                             max_candidates=1, n_ctx=2048, n_threads=a.threads)
        unseen_ids = {p["id"] for p in out}
        held = [r for r in bootstrap if r["id"] in unseen_ids]
        trained = [r for r in bootstrap if r["id"] in trained_ids]
        rng = random.Random(a.shuffle_seed)
        n = a.recall_check
        print(json.dumps({"policy": policy.name, **recall_gap(policy, rng.sample(trained, min(n, len(trained))),
                                                                 rng.sample(held, min(n, len(held))))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
