"""Score the finished solutions of saved search trees again with another PPM, or record the policy's
log-probability of their steps, without searching again.

    python -m training.rescore training/runs/eval/gsm8k-r3-ppm-best_of_n-r16-k4-vsel-s0-ss1234.trees \
        --ppm-adapter training/runs/cpu-small/round-4/ppm/ppm.gguf \
        --ppm-head training/runs/cpu-small/round-4/ppm/value_head.npz --tag ppm-r4b \
        --out training/runs/eval/rescored
    python -m training.selection training/runs/eval/rescored/<run>-ppm-r4b.trees --selector weights/selector-r3.json
    python -m training.rescore <run>.trees --keep-ppm --policy-logprob --tag lp --out training/runs/eval/rescored

Why: every answer rule (training.selection, the learned selector) reads only a tree's terminals and
their PPM scores. A best-of-N sample never sees the PPM (each runs to its end on its own; the PPM only
scores it afterwards), so a best-of-N tree whose terminals another PPM scored is exactly the tree a
best-of-N search with that PPM would have returned: two PPMs are compared on the very same samples,
and selection is measured apart from generation and from sampling noise. An MCTS tree was steered by
the PPM that grew it, so its rescored copy says only how the other PPM would choose among those
terminals, not what a search with it would have found; the summary says which (`exact`).

--policy-logprob records on every step of every terminal's path how sure the policy was of it
(`Node.logprob`, which searches record while sampling since the selector's lpmax / lpmean features
came in): one teacher-forced pass of the weights' policy over the step's text. That is what the
sampler would have recorded up to llama.cpp's rounding and the step's stop marker (checked in
tests/integration/test_llama_backend.py), so older trees can be read by a selector that uses it.
--keep-ppm leaves the terminals' PPM scores as the search gave them.

Writes a run in the source's layout: <out>/<run>-<tag>.trees/ (every tree, terminal PPM scores
replaced, inner nodes untouched), <run>-<tag>.jsonl (the source's rows, answered again by the source's
own rule on the new scores; tokens and seconds are the search's) and <run>-<tag>.summary.json, so
`training.compare`, `training.selection` and `rstar-app eval --from-trees` read it like any run. The
learned rule uses --selector (default: the weights' selector). Resumes: rescored trees are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rstar_app.config import SearchConfig  # noqa: E402
from rstar_app.eval import _write_json, revote, summarize  # noqa: E402
from rstar_app.jsonl import append_row, read_rows  # noqa: E402
from rstar_app.selector import Selector  # noqa: E402
from rstar_app.steps import OUTPUT, Step, render_step  # noqa: E402
from rstar_app.tree import Tree  # noqa: E402
from training.common import atomic_write_json, command_line  # noqa: E402

# strategies whose samples the PPM does not steer: rescoring them replays the search exactly
UNSTEERED = ("best_of_n", "majority")


def rescore_tree(tree: Tree, ppm) -> dict:
    """Replace every terminal's PPM score by `ppm`'s, in place (one call: the prompt is decoded once
    and the terminals' own tokens share batches), and its value with it: at inference a terminal's
    reward is its PPM score, so its Q is that score times its visits (value = score), and the rules
    that rank terminals by value (top-k vote, best value) must see the new one. Inner nodes keep
    theirs. Returns {terminals, max_abs_change}."""
    ts = tree.terminals()
    if not ts:
        return {"terminals": 0, "max_abs_change": 0.0}
    texts = [tree.text(nd) for nd in ts]
    assert all(t.startswith(tree.prompt) for t in texts)  # tree.text starts with the prompt by construction
    scores = ppm.score(tree.prompt, [t[len(tree.prompt):] for t in texts])
    change = 0.0
    for nd, s in zip(ts, scores):
        if nd.ppm is not None:
            change = max(change, abs(nd.ppm - s))
        nd.ppm = float(s)
        nd.n = max(nd.n, 1)
        nd.q = nd.ppm * nd.n
    return {"terminals": len(ts), "max_abs_change": change}


def record_logprobs(tree: Tree, policy) -> int:
    """Set `logprob` on every step of every terminal's path that has none, in place: the policy's mean
    log-probability per token of the step's own text (a final step's program output is the
    executor's, not the policy's, and is left out), times the tokens the search generated for it.
    Returns the steps recorded."""
    n = 0
    for term in tree.terminals():
        path = tree.path(term)[1:]
        first = next((i for i, nd in enumerate(path) if nd.logprob is None), None)
        if first is None:
            continue  # shared with a terminal done before (MCTS), or recorded by the search
        prefix = tree.text(path[first - 1]) if first else tree.prompt
        text, spans = "", []  # (node, first byte, end byte of its own text) within `text`
        for nd in path[first:]:
            r = render_step(Step(nd.kind, nd.text, code=nd.code), nd.output)
            cut = r.find(OUTPUT) if nd.kind == "final_code" else -1
            a = len(text.encode("utf-8"))
            spans.append((nd, a, a + len((r[:cut] if cut >= 0 else r).encode("utf-8"))))
            text += r
        acc = {nd.id: [0.0, 0] for nd, _, _ in spans}
        pos = 0
        for piece, lp in policy.token_logprobs(prefix, text):
            hit = next((nd for nd, a, b in spans if a <= pos < b), None)  # the step its first byte is in
            if hit is not None:
                acc[hit.id][0] += lp
                acc[hit.id][1] += 1
            pos += len(piece)
        for nd, _, _ in spans:
            total, count = acc[nd.id]
            nd.logprob = (total / count if count else 0.0) * nd.tokens
            n += 1
    return n


def load_policy(a: argparse.Namespace):
    """The policy that sampled the trees, in llama.cpp as the engine runs it (for --policy-logprob)."""
    from rstar_app.models.llama_cpp import LlamaPolicy
    from rstar_app.weights import load_weights
    w = load_weights(a.weights)
    adapter = a.policy_adapter or (str(w.policy_adapter) if w.policy_adapter else None)
    if adapter and not Path(adapter).is_file():
        raise SystemExit(f"error: {adapter} not found")
    return LlamaPolicy(w.base, adapter=adapter, max_candidates=1, n_ctx=a.n_ctx, n_threads=a.threads)


def load_ppm(a: argparse.Namespace):
    """The PPM named on the command line (explicit adapter + head, else a weights dir's), in llama.cpp
    as the engine runs it, or in torch fp32 (the model as trained: what llama.cpp's Q4_1 base and
    f16 adapter approximate)."""
    from rstar_app.weights import load_weights
    w = load_weights(a.weights)
    adapter = a.ppm_adapter or (str(w.ppm_adapter) if w.ppm_adapter and not a.ppm_head else None)
    head = a.ppm_head or (str(w.ppm_head) if w.ppm_head else None)
    if head is None:
        raise SystemExit("error: no PPM head: pass --ppm-head, or --weights DIR whose manifest names one")
    for p in (adapter, head):
        if p and not Path(p).is_file():
            raise SystemExit(f"error: {p} not found")
    desc = {"adapter": adapter, "head": head, "backend": a.backend,
            "name": f"PPM {Path(head).name}" + (f" + {Path(adapter).name}" if adapter else "")
            + (" (torch fp32)" if a.backend == "torch" else "")}
    if a.backend == "torch":
        from rstar_app.models.torch_hf import TorchPPM
        from training.export import as_peft_dir
        with tempfile.TemporaryDirectory() as tmp:  # the peft import is merged in at load, then not needed
            peft = as_peft_dir(adapter, Path(tmp) / "peft", base=str(w.base)) if adapter else None
            return TorchPPM(w.base, head, ppm_adapter=peft, device="cpu", dtype="float32"), desc
    from rstar_app.models.llama_cpp import LlamaPPM
    return LlamaPPM(w.base, head, adapter=adapter, max_candidates=8, n_ctx=a.n_ctx, n_threads=a.threads), desc


def revote_rows(rows_path: Path, trees: Path, rule: str, selector: Selector | None, *, top_k: int = 4) -> list[dict]:
    """The source run's rows, each answered again by `rule` on its rescored tree: the source's rows are
    copied next to `trees` (<run>.jsonl, where eval's re-vote reads them) and rewritten by that re-vote."""
    rows = read_rows(rows_path)
    out = trees.with_suffix(".jsonl")
    if out.resolve() != Path(rows_path).resolve():
        shutil.copyfile(rows_path, out)
    return revote([{"id": r["id"], "gold": r["gold"]} for r in rows], SearchConfig(vote=rule, top_k_vote=top_k),
                  trees, out, selector)


def load_models(a: argparse.Namespace) -> tuple[object | None, object | None, dict]:
    """(PPM or None with --keep-ppm, policy or None without --policy-logprob, their description)."""
    ppm, desc = (None, {"name": "the search's PPM scores (kept)"}) if a.keep_ppm else load_ppm(a)
    policy = load_policy(a) if a.policy_logprob else None
    if policy is not None:
        desc = {**desc, "name": desc["name"] + f"; steps' log-probability by {policy.name}", "policy": policy.name}
    return ppm, policy, desc


def redo(tree: Tree, ppm, policy) -> dict:
    """rescore_tree with `ppm` (unless None), then record_logprobs with `policy` (unless None)."""
    r = rescore_tree(tree, ppm) if ppm is not None else {"terminals": len(tree.terminals()), "max_abs_change": 0.0}
    if policy is not None:
        record_logprobs(tree, policy)
    return r


def check_resume(done_meta: dict | None, desc: dict, dst: Path) -> None:
    """A resumed rescore must score with the models the trees already written were scored with (their
    meta["rescored"]["ppm"]), else one output would mix two PPMs' scores."""
    if done_meta is not None and done_meta.get("ppm") != desc:
        raise SystemExit(f"error: {dst} was rescored by {(done_meta.get('ppm') or {}).get('name')!r}, this run "
                         f"would score by {desc['name']!r}: pass another --tag (or --out) for a new run")


def rescore_rollouts(a: argparse.Namespace, src: Path) -> int:
    """A training rollouts file: every row's tree done as a run's trees are, the rows (trace replaced,
    nothing else changed) appended to <out>/<stem>-<tag>.jsonl, which training.selector and
    training.head read like the source; resumes by row id."""
    dst = Path(a.out) / f"{src.stem}-{a.tag}.jsonl"
    if dst.resolve() == src.resolve():
        print("error: --out and --tag name the source file itself", file=sys.stderr)
        return 2
    written = read_rows(dst)
    done = {r["id"] for r in written}
    rows = [r for r in read_rows(src, repair=False) if r.get("trace")]
    todo = [r for r in rows if r["id"] not in done]
    ppm, policy, desc = load_models(a)
    check_resume(written[0]["trace"].get("meta", {}).get("rescored") if written else None, desc, dst)
    print(f"{dst.name}: {len(rows)} trees, {len(rows) - len(todo)} already done; {desc['name']}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    t0, n_terms = time.monotonic(), 0
    with dst.open("a") as fh:
        for i, r in enumerate(todo, 1):
            tree = Tree.from_json(r["trace"])
            n_terms += redo(tree, ppm, policy)["terminals"]
            tree.meta["rescored"] = {"ppm": desc, "from": str(src), "command": command_line()}
            append_row(fh, {**r, "trace": tree.to_json(events=False)})
            if i % 10 == 0 or i == len(todo):
                print(f"[{i}/{len(todo)}] {n_terms} terminals, {n_terms / max(time.monotonic() - t0, 1e-9):.2f} a second",
                      flush=True)
    print(f"wrote {dst}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.rescore", description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", help="a finished run's trees folder (<out>/<run>.trees, from eval --save-trees), "
                    "or a training rollouts file (training.rollouts' .jsonl, rows with a trace)")
    ap.add_argument("--out", required=True, help="folder for the rescored run (never the source's own)")
    ap.add_argument("--tag", required=True, help="appended to the run name, e.g. ppm-r4b")
    ap.add_argument("--weights", default=None, help="weights directory (base model; its PPM unless given below)")
    ap.add_argument("--ppm-adapter", default=None, help="PPM adapter GGUF (stacked policy + PPM, as exported)")
    ap.add_argument("--ppm-head", default=None, help="value head .npz")
    ap.add_argument("--selector", default=None, help="selector file for the learned rule (default: the weights')")
    ap.add_argument("--backend", choices=("llama", "torch"), default="llama",
                    help="llama: the engine's llama.cpp PPM; torch: the same adapter and head in fp32")
    ap.add_argument("--keep-ppm", action="store_true", help="keep the search's PPM scores (no PPM is loaded)")
    ap.add_argument("--policy-logprob", action="store_true",
                    help="record the policy's log-probability of every step on a terminal's path (llama.cpp)")
    ap.add_argument("--policy-adapter", default=None, help="policy adapter GGUF for --policy-logprob "
                    "(default: the weights'; the policy that sampled the trees)")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)

    if a.keep_ppm and not a.policy_logprob:
        print("error: --keep-ppm without --policy-logprob leaves nothing to do", file=sys.stderr)
        return 2
    src = Path(a.trees)
    if src.suffix == ".jsonl" and src.is_file():
        return rescore_rollouts(a, src)
    summary_path = src.with_suffix(".summary.json")
    if not (src.suffix == ".trees" and src.is_dir() and summary_path.is_file()):
        print(f"error: {src} is not a finished run's trees folder (<run>.trees next to <run>.summary.json)",
              file=sys.stderr)
        return 2
    source = json.loads(summary_path.read_text())
    name = f"{source.get('run', src.stem)}-{a.tag}"
    out = Path(a.out)
    dst = out / f"{name}.trees"
    if dst.resolve() == src.resolve():
        print("error: --out and --tag name the source run itself", file=sys.stderr)
        return 2
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.json"))
    todo = [f for f in files if not (dst / f.name).is_file()]
    selector = None
    if source.get("vote") == "learned":
        from rstar_app.weights import load_selector, load_weights
        selector = Selector.load(a.selector) if a.selector else load_selector(load_weights(a.weights))
        if selector is None:
            raise SystemExit("error: the source run answers by a learned selector: pass --selector FILE")
    ppm, policy, desc = load_models(a)
    done = sorted(dst.glob("*.json"))
    check_resume(Tree.read(done[0]).meta.get("rescored") if done else None, desc, dst)
    exact = a.keep_ppm or source.get("strategy") in UNSTEERED  # kept scores: the same tree, read again
    print(f"{name}: {len(files)} trees, {len(files) - len(todo)} already rescored; {desc['name']}; "
          f"{'exact replay' if exact else 'selection only (the search was steered by its own PPM)'}")
    t0, n_terms, biggest = time.monotonic(), 0, 0.0
    for i, f in enumerate(todo, 1):
        tree = Tree.read(f)
        r = redo(tree, ppm, policy)
        n_terms, biggest = n_terms + r["terminals"], max(biggest, r["max_abs_change"])
        tree.meta["rescored"] = {"ppm": desc, "from": str(src), "exact": exact}
        _write_json(dst / f.name, tree.to_json(events=False), indent=0)  # as eval --save-trees writes them
        if i % 10 == 0 or i == len(todo):
            dt = time.monotonic() - t0
            print(f"[{i}/{len(todo)}] {n_terms} terminals, {n_terms / max(dt, 1e-9):.2f} a second, "
                  f"largest score change {biggest:.3f}", flush=True)
    rows = revote_rows(src.with_suffix(".jsonl"), dst, source.get("vote", "top-k"), selector,
                       top_k=int(source.get("top_k_vote", 4)))
    models = f"{source.get('models', '?')}; terminals rescored by {desc['name']}"
    summary = {**source, "run": name, "models": models, **summarize(rows),
               "rescored": {"from": str(src), "ppm": desc, "exact": exact, "command": command_line()}}
    atomic_write_json(dst.with_suffix(".summary.json"), summary)
    print(f"{name}: {sum(r['correct'] for r in rows)} / {len(rows)} right ({summary['vote']}; the source: "
          f"{round(source.get('accuracy', 0) * source.get('problems', 0))}), right answer in the tree "
          f"{sum(r['in_tree'] for r in rows)}\nwrote {dst}; every rule: python -m training.selection {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
