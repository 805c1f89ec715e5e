"""Benchmarks: `rstar-app eval --bench gsm8k --strategy mcts --limit 50`.

Per-problem results go to a JSONL (append-only, flushed per problem: a killed run resumes where it
stopped); a summary row per run and a plot of accuracy against generated tokens per problem over all
runs in the output directory, so strategies are compared at equal budget. Ground truth is used for
grading only, never as a search reward.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable

from .config import SearchConfig
from .grading import is_correct
from .jsonl import append_row, read_rows
from .tree import resolve_vote

DEFAULT_DATA = next((p for p in (Path(__file__).resolve().parent.parent.parent / "shared" / "data",
                                 Path("/work/shared/data")) if p.is_dir()), Path("../shared/data"))


def load_bench(name: str, data_dir: str | Path | None = None) -> list[dict]:
    """[{id, question, gold}] for gsm8k (test), svamp, multiarith, math500, practice (held out)."""
    d = Path(data_dir) if data_dir else Path(os.environ.get("RSTAR_DATA", DEFAULT_DATA))
    if name == "gsm8k":
        rows = [json.loads(l) for l in open(d / "gsm8k" / "test.jsonl")]
        return [{"id": f"gsm8k-{i}", "question": r["question"], "gold": r["answer"].split("####")[-1].strip().replace(",", "")}
                for i, r in enumerate(rows)]
    if name == "svamp":
        rows = json.load(open(d / "svamp" / "SVAMP.json"))
        return [{"id": r["ID"], "question": _sentence(r["Body"]) + " " + r["Question"].strip(),
                 "gold": _num(r["Answer"])} for r in rows]
    if name == "multiarith":
        rows = json.load(open(d / "multiarith" / "test.json"))
        return [{"id": f"multiarith-{r['id']}", "question": r["problem"].strip(), "gold": str(r["solution"]).strip()} for r in rows]
    if name == "practice":  # held-out procedural problems (training/practice.py trains on seed 0)
        from training.practice import generate
        seen = {r["question"] for r in generate(5000, seed=0)}
        return [{"id": r["id"], "question": r["question"], "gold": r["gold"]}
                for r in generate(600, seed=1) if r["question"] not in seen][:500]
    if name == "math500":
        rows = [json.loads(l) for l in open(d / "math500" / "test.jsonl")]
        return [{"id": r["unique_id"], "question": r["problem"], "gold": r["answer"]} for r in rows]
    raise ValueError(f"unknown benchmark {name!r}")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def subset(items: list[dict], limit: int, seed: int) -> list[dict]:
    """A fixed random subset (same seed, same problems, whatever the strategy). The first N of a
    larger limit are the same N problems, so a run can be extended by raising --limit."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order if limit <= 0 else order[:limit]


def run_name(a, rule: str | None = None) -> str:
    """The run's file name; `rule` is the answer rule the vote setting resolved to (Engine.vote_rule)."""
    tag = getattr(a, "tag", None) or ("base" if a.policy else "weights")
    k = getattr(a, "top_k_vote", SearchConfig.top_k_vote)
    rule = rule or getattr(a, "vote", "top-k")
    greedy = "-g" if getattr(a, "greedy_first", False) else ""
    vote = "" if a.strategy == "greedy" else _vote_suffix(rule, k)  # one trajectory: no rule can differ
    t = getattr(a, "temperature", SearchConfig.temperature)  # the default keeps older run names
    temp = "" if a.strategy == "greedy" or t == SearchConfig.temperature else f"-t{t:g}"
    return (f"{a.bench}-{tag}-{a.strategy}-r{a.rollouts}-k{a.candidates}{vote}{greedy}{temp}"
            f"-s{a.seed}-ss{a.sample_seed}")


def _vote_suffix(rule: str, k: int) -> str:
    if rule == "ppm-weighted":
        return "-vppm"
    if rule == "learned":
        return "-vsel"
    return "" if k == SearchConfig.top_k_vote else f"-v{k}"  # the top-4 vote keeps older run names


def evaluate(engine, items: list[dict], config, out_path: Path, *, progress: bool = True,
             trees_dir: Path | None = None, on_rows: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Solve every item not already in out_path; returns all rows (old and new). With trees_dir,
    each problem's tree (nodes, no event log) is kept as <trees_dir>/<id>.json with its gold answer,
    so answer-selection rules can be compared afterwards without searching again. on_rows gets
    the rows so far after each new one (main keeps the run's summary current with it)."""
    done = {r["id"]: r for r in read_rows(out_path) if "id" in r}  # torn last line cut off
    rows = [done[it["id"]] for it in items if it["id"] in done]
    with open(out_path, "a") as f:
        for k, it in enumerate(items):
            if it["id"] in done:
                continue
            t0 = time.monotonic()
            tree = engine.solve(it["question"], config)
            if trees_dir is not None:
                tree.gold = it["gold"]
                _write_json(trees_dir / f"{_safe(it['id'])}.json", tree.to_json(events=False), indent=0)
            row = {"id": it["id"], "gold": it["gold"], "answer": tree.answer,
                   "correct": is_correct(tree.answer, it["gold"]),
                   # graded after the search (gold never enters it): did any terminal reach the gold
                   # answer? tells a selection miss (PPM / vote) from a generation miss (policy)
                   "in_tree": gold_in_tree(tree, it["gold"]),
                   "tokens": tree.meta["stats"]["tokens"],
                   "seconds": round(time.monotonic() - t0, 2), "nodes": len(tree.nodes),
                   "stopped": tree.meta.get("stopped")}
            append_row(f, row)
            rows.append(row)
            if on_rows is not None:
                on_rows(rows)
            if progress:
                acc = sum(r["correct"] for r in rows) / len(rows)
                print(f"[{len(rows)}/{len(items)}] {it['id']}: {row['answer']!r} vs {it['gold']!r} "
                      f"{'ok' if row['correct'] else 'x'}  acc {acc:.3f}  {row['tokens']} tok {row['seconds']} s", flush=True)
    return rows


# SearchConfig fields the run name spells; the others (budgets, depth, exploration, ...) are the
# summary's "settings", which a resumed run must match
NAMED_SETTINGS = {"strategy", "rollouts", "candidates", "seed", "temperature", "vote", "top_k_vote", "greedy_first"}


def search_settings(config) -> dict:
    """The search settings a run's name does not say (as JSON would give them back)."""
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in NAMED_SETTINGS}))


def resume_clash(summary_path: Path, fingerprint: str | None, settings: dict | None = None) -> str | None:
    """Why this run must not append to the rows already under its name, or None. The name says the
    round and the main settings, not the bytes nor every budget: a retrained round (or a hand-edited
    weights dir), or the same run with another --max-tokens / --time-limit / --max-depth, would
    otherwise extend other rows and report their sum as one run. Runs written before the
    fingerprint (or the settings) were recorded resume as before."""
    if not summary_path.is_file():
        return None
    try:
        old = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        return None
    rows = summary_path.with_name(summary_path.name.removesuffix(".summary.json") + ".jsonl")
    was = old.get("models_sha256")
    if fingerprint is not None and was is not None and was != fingerprint:
        return (f"{rows} holds rows searched with other model files (fingerprint {was}; these are {fingerprint}): "
                f"pass another --tag or --out, or move that file away to start the run over")
    was = old.get("settings")
    if settings is not None and was is not None and was != settings:
        diff = {k: (was.get(k), settings.get(k)) for k in sorted(set(was) | set(settings)) if was.get(k) != settings.get(k)}
        return (f"{rows} holds rows searched with other settings {diff} (there, here): pass another --tag "
                f"or --out, or move that file away to start the run over")
    return None


def revote_name(source_run: str, rule: str, top_k: int) -> str:
    """A re-voted run's name: the source's, plus the rule. Never the source's own name, so a re-vote
    cannot overwrite (and cut down to --limit) the run it reads."""
    return f"{source_run}-rv-" + (_vote_suffix(rule, top_k)[1:] or f"v{top_k}")


def revote(items: list[dict], config, trees_dir: Path, out_path: Path, selector=None) -> list[dict]:
    """Rows for `config`'s answer rule from a finished run's saved trees, without searching again:
    the rule only reads the tree, so this is the run that rule would have given on the same
    search. Each tree keeps its own strategy's vote size (majority counts every terminal).
    Tokens and seconds come from the source run's rows (<trees_dir minus .trees>.jsonl).
    Rewrites out_path whole; raises ValueError when a problem has no saved tree, or its tree was
    graded against another gold answer (another benchmark or data file)."""
    from .search import vote_top_k
    from .tree import Tree
    src = {r["id"]: r for r in read_rows(trees_dir.with_suffix(".jsonl")) if "id" in r}
    missing = [it["id"] for it in items if it["id"] not in src or not (trees_dir / f"{_safe(it['id'])}.json").is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of {len(items)} problems have no row and tree in {trees_dir} "
                         f"(first: {missing[0]}); finish that run with --save-trees first, or use its "
                         f"--limit and --sample-seed")
    rows = []
    for it in items:
        path = trees_dir / f"{_safe(it['id'])}.json"
        tree = Tree.read(path)
        if tree.gold is not None and str(tree.gold) != str(it["gold"]):
            raise ValueError(f"{path}: graded against {tree.gold!r}, but the benchmark's answer to {it['id']} "
                             f"is {it['gold']!r}: another benchmark or data file?")
        tree.vote(vote_top_k(tree.meta.get("config", {}).get("strategy", ""), config), config.vote, selector)
        rows.append({**src[it["id"]], "answer": tree.answer, "correct": is_correct(tree.answer, it["gold"]),
                     "in_tree": gold_in_tree(tree, it["gold"])})
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            append_row(f, row)
    os.replace(tmp, out_path)
    return rows


def gold_in_tree(tree, gold: str) -> bool:
    """Did any terminal reach the gold answer? (the ceiling of every answer-selection rule)"""
    return any(is_correct(nd.answer, gold) for nd in tree.terminals())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


def summarize(rows: list[dict]) -> dict:
    n = len(rows) or 1
    out = {"problems": len(rows), "accuracy": round(sum(r["correct"] for r in rows) / n, 4),
           "tokens_per_problem": round(sum(r["tokens"] for r in rows) / n, 1),
           "seconds_per_problem": round(sum(r["seconds"] for r in rows) / n, 2)}
    graded = [r for r in rows if "in_tree" in r]  # rows written before the field existed have none
    if graded:
        out["in_tree"] = round(sum(r["in_tree"] for r in graded) / len(graded), 4)
        out["in_tree_problems"] = len(graded)
    return out


def write_plot(out_dir: Path) -> Path | None:
    """accuracy vs tokens per problem, one point per run summary in out_dir (plotly HTML, no CDN)."""
    runs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.summary.json"))]
    if not runs:
        return None
    import plotly.graph_objects as go
    fig = go.Figure()
    for bench in sorted({r["bench"] for r in runs}):
        for strat in sorted({r["strategy"] for r in runs if r["bench"] == bench}):
            rs = sorted((r for r in runs if r["bench"] == bench and r["strategy"] == strat),
                        key=lambda r: r["tokens_per_problem"])
            fig.add_scatter(x=[r["tokens_per_problem"] for r in rs], y=[r["accuracy"] for r in rs],
                            mode="lines+markers", name=f"{bench} {strat}", text=[r["run"] for r in rs])
    fig.update_layout(xaxis_title="generated tokens per problem", yaxis_title="accuracy",
                      xaxis_type="log", template="plotly_white")
    path = out_dir / "accuracy_vs_tokens.html"
    fig.write_html(path, include_plotlyjs=True)
    return path


def record_in_manifest(summary: dict, a) -> Path | None:
    """Put a run's summary (and the command that made it) under `eval` in the weights manifest, so
    the shipped numbers travel with the weights they were measured on. A row of the same run over
    more problems is kept (a shorter rerun, e.g. to pair it with another run, must not shrink the
    table); returns None then."""
    from .weights import WEIGHTS_DIR
    path = Path(a.weights or WEIGHTS_DIR) / "manifest.json"
    m = json.loads(path.read_text())
    old = m.setdefault("eval", {}).get(summary["run"])
    if old and old.get("problems", 0) > summary["problems"]:
        print(f"manifest keeps its {summary['run']} row over {old['problems']} problems "
              f"(this run: {summary['problems']})", file=sys.stderr)
        return None
    m["eval"][summary["run"]] = {**summary, "command": "rstar-app " + " ".join(sys.argv[1:]),
                                 "sample_seed": a.sample_seed}
    _write_json(path, m, indent=2, newline=True)
    return path


def _write_json(path: Path, obj, *, indent: int, newline: bool = False) -> None:
    """Whole file or nothing: a reader (or a killed run) never sees half a JSON document."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent) + ("\n" if newline else ""))
    os.replace(tmp, path)


def run_summary(a, config, name: str, rule: str, models: str, search: dict, rows: list[dict],
                n_items: int) -> dict:
    """The row a run's <name>.summary.json holds (and `--record` puts in the weights manifest);
    `complete` is false while a run (killed, or still going) has fewer rows than its --limit asks."""
    return {"run": name, "bench": a.bench, "strategy": search["strategy"], "rollouts": search["rollouts"],
            "limit": a.limit, "candidates": search["candidates"], "vote": rule,
            "top_k_vote": config.top_k_vote, "greedy_first": search["greedy_first"],
            **({"temperature": search["temperature"]} if search.get("temperature") is not None else {}),
            "models": models,
            **({"models_sha256": search["models_sha256"]} if search.get("models_sha256") else {}),
            **({"settings": search["settings"]} if search.get("settings") else {}),
            **summarize(rows), "complete": len(rows) >= n_items}


def main(a) -> int:
    from .cli import config_from_args, engine_from_args
    config = config_from_args(a)
    items = subset(load_bench(a.bench, a.data), a.limit, a.sample_seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(a, "from_trees", None):  # re-vote a finished run's trees: no model, no search
        src = Path(a.from_trees)
        if not (src.suffix == ".trees" and src.is_dir() and src.with_suffix(".summary.json").is_file()):
            print(f"error: {src} is not a finished run's trees folder (<out>/<run>.trees next to "
                  f"<run>.summary.json; made by eval --save-trees)", file=sys.stderr)
            return 2
        source = json.loads(src.with_suffix(".summary.json").read_text())
        if source.get("bench", a.bench) != a.bench:
            print(f"error: {src} is a {source['bench']} run; pass --bench {source['bench']}", file=sys.stderr)
            return 2
        selector = None
        no_ppm = "no PPM" in source["models"]  # Weights.describe's words: the trees hold no PPM score
        if config.vote == "learned" or (config.vote == "auto" and not no_ppm):  # the weights' selector
            from .weights import WeightsError, load_selector, load_weights
            try:
                w = load_weights(a.weights)
                selector = load_selector(w)
            except WeightsError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            # a selector is fit on one PPM's scores: "auto" uses it only on trees that PPM scored
            # (Weights.describe names the head in the run's models), as the engine would have
            other_ppm = selector is not None and (w.ppm_head is None or w.ppm_head.name not in source["models"])
            if other_ppm and config.vote == "auto":
                selector = None
            elif other_ppm:
                print(f"warning: {selector.name} was fit on another PPM's scores than these trees' "
                      f"({source['models']})", file=sys.stderr)
            if selector is None and config.vote == "learned":
                print("error: --vote learned needs weights whose manifest names ppm.selector", file=sys.stderr)
                return 2
        rule = resolve_vote(config.vote, selector is not None)
        # the search is the source's: its settings, not this command line's, describe the rows
        name = revote_name(source.get("run", src.stem), rule, config.top_k_vote)
        models = source["models"] + (f", answers by {selector.name}" if rule == "learned" else "")
        search = {k: source.get(k) for k in ("strategy", "rollouts", "candidates", "greedy_first", "temperature",
                                             "models_sha256", "settings")}
        print(f"{name}: {len(items)} problems, answers re-voted from {src}")
        try:
            rows = revote(items, config, src, out / f"{name}.jsonl", selector)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        search = {"strategy": a.strategy, "rollouts": a.rollouts, "candidates": a.candidates,
                  "greedy_first": config.greedy_first,
                  "temperature": None if a.strategy == "greedy" else config.temperature}
        engine = engine_from_args(a, max_candidates=config.candidates)
        rule = engine.vote_rule(config)
        name, models = run_name(a, rule), engine.description
        search["models_sha256"], search["settings"] = engine.fingerprint(), search_settings(config)
        clash = resume_clash(out / f"{name}.summary.json", search["models_sha256"], search["settings"])
        if clash:
            engine.close()
            print(f"error: {clash}", file=sys.stderr)
            return 2
        print(f"{name}: {len(items)} problems, models: {models}")
        try:
            trees = None
            if getattr(a, "save_trees", False):
                trees = out / f"{name}.trees"
                trees.mkdir(exist_ok=True)
            # the summary follows every row: a killed run still names the model files its rows came from
            rows = evaluate(engine, items, config, out / f"{name}.jsonl", trees_dir=trees, on_rows=lambda rows:
                            _write_json(out / f"{name}.summary.json",
                                        run_summary(a, config, name, rule, models, search, rows, len(items)),
                                        indent=1))
        finally:
            engine.close()
    summary = run_summary(a, config, name, rule, models, search, rows, len(items))
    _write_json(out / f"{name}.summary.json", summary, indent=1)
    if getattr(a, "record", False):
        record_in_manifest(summary, a)
    plot = write_plot(out)
    print("\n| run | problems | accuracy | tokens/problem | s/problem |\n|---|---|---|---|---|")
    for p in sorted(out.glob("*.summary.json")):
        s = json.loads(p.read_text())
        partial = "" if s.get("complete", True) else " (partial)"  # older summaries have no field
        print(f"| {s['run']}{partial} | {s['problems']} | {s['accuracy']:.3f} | {s['tokens_per_problem']} | {s['seconds_per_problem']} |")
    if plot:
        print(f"\nplot: {plot}")
    return 0
