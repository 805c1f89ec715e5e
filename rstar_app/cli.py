"""rstar-app solve | sandbox | bench | eval — thin entry points over the engine."""

from __future__ import annotations

import argparse
import json
import sys

from .config import STRATEGIES, SearchConfig
from .tree import VOTE_RULES


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (default: weights/manifest.json)")
    g.add_argument("--weights", help="weights directory with manifest.json")
    g.add_argument("--policy", help="policy GGUF path (overrides the manifest), or a base of "
                                    "`python -m rstar_app.bases list` once fetched")
    g.add_argument("--policy-adapter", help="LoRA adapter GGUF for --policy")
    g.add_argument("--ppm", help="PPM GGUF path (default: the manifest's base; with --ppm-head and no "
                                 "manifest PPM, the policy's GGUF)")
    g.add_argument("--ppm-adapter", help="LoRA adapter GGUF for the PPM")
    g.add_argument("--ppm-head", help="PPM value head (.npz with weight, bias)")
    g.add_argument("--no-ppm", action="store_true", help="search without a PPM")
    g.add_argument("--few-shot", action=argparse.BooleanOptionalAction, default=None,
                   help="prompt with worked examples (default: only for an untrained base)")
    g.add_argument("--api-url", help="OpenAI-compatible server (e.g. http://host:8000/v1) as the policy")
    g.add_argument("--api-model", help="model name to send to --api-url")
    g.add_argument("--threads", type=int, help="CPU threads for llama.cpp")


def _add_search_args(p: argparse.ArgumentParser, default_strategy: str = "mcts") -> None:
    g = p.add_argument_group("search")
    g.add_argument("--strategy", choices=STRATEGIES, default=default_strategy,
                   help="mcts: rStar-Math's tree search (K candidates at every node a rollout reaches); "
                        "mcts_sim: the same, each rollout finished by single samples below the node it "
                        "expands; best_of_n / majority: independent samples ranked by the answer rule / "
                        "counted; greedy: one temperature-0 trajectory; beam: step-level beam search")
    g.add_argument("--rollouts", type=int, default=8)
    g.add_argument("--candidates", type=int, default=4)
    g.add_argument("--c", type=float, default=2.0, dest="c_puct", help="UCT exploration constant")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--greedy-first", action="store_true",
                   help="make the first candidate of every expansion the greedy step (the rest sampled)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--time-limit", type=float, default=0.0, help="seconds, 0 = none")
    g.add_argument("--max-tokens", type=int, default=0, help="generated-token budget, 0 = none")
    g.add_argument("--max-depth", type=int, default=16)
    g.add_argument("--beam-width", type=int, default=2)
    g.add_argument("--vote", choices=VOTE_RULES, default=SearchConfig.vote,
                   help="answer rule: auto (default) = learned when the weights ship a selector, else top-k; "
                        "top-k = majority vote over the top-k terminals by value; "
                        "ppm-weighted = every terminal votes with its PPM score (for every strategy, majority "
                        "and best_of_n included); learned = the weights' answer selector (PPM scores, "
                        "answer counts, which of the problem's numbers the code uses)")
    g.add_argument("--top-k-vote", type=int, default=SearchConfig.top_k_vote,
                   help="k of the top-k vote (large = every terminal)")


def config_from_args(a: argparse.Namespace) -> SearchConfig:
    return SearchConfig(strategy=a.strategy, rollouts=a.rollouts, candidates=a.candidates, c_puct=a.c_puct,
                        temperature=a.temperature, seed=a.seed, time_limit=a.time_limit,
                        max_tokens=a.max_tokens, max_depth=a.max_depth, beam_width=a.beam_width,
                        vote=a.vote, top_k_vote=a.top_k_vote, greedy_first=a.greedy_first)


def engine_from_args(a: argparse.Namespace, *, max_candidates: int = 8):
    from .engine import Engine
    return Engine.load(weights_dir=a.weights, policy_path=a.policy, policy_adapter=a.policy_adapter,
                       ppm_path=a.ppm, ppm_adapter=a.ppm_adapter, ppm_head=a.ppm_head, no_ppm=a.no_ppm,
                       few_shot=a.few_shot, api_url=a.api_url, api_model=a.api_model, n_threads=a.threads,
                       max_candidates=max(max_candidates, 1))


def cmd_solve(a: argparse.Namespace) -> int:
    from .solution import solution_steps
    from .steps import ProblemError, clean_problem
    problem = sys.stdin.read() if a.problem == "-" else a.problem
    try:
        clean_problem(problem)
        config = config_from_args(a)
    except (ProblemError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    engine = engine_from_args(a, max_candidates=config.candidates)
    try:
        tree = engine.solve(problem, config)
    finally:
        engine.close()
    if a.json:
        json.dump(tree.to_json(), sys.stdout, indent=1 if a.pretty else None)
        print()
        return 0
    st = tree.meta["stats"]
    print(f"Models: {engine.description}")
    print(f"Problem: {tree.problem}\n")
    if tree.answer is None:
        print("No answer: every branch ended before printing a result.")
    else:
        for s in solution_steps(tree):
            if s.kind == "answer":
                print(f"Answer step: {s.comment}")
                continue
            print(f"Step {s.index}: {s.comment}")
            for line in s.code.splitlines():
                print(f"    {line}")
            if s.output:
                print(f"    -> {s.output[:300]}")
        print(f"\nAnswer: {tree.answer}")
    levels = max((nd.depth for nd in tree.nodes), default=0)
    counts = tree.answer_counts()
    print(f"\nSearch: {tree.meta['strategy']}, {st['rollouts']} rollouts, {st['nodes']} nodes over "
          f"{levels} levels, {st['terminals']} answers {dict(counts)}, {st['tokens']} tokens, "
          f"{st['seconds']:.1f} s (generate {st['generate_seconds']:.1f} s, execute "
          f"{st['execute_seconds']:.2f} s, PPM {st['ppm_seconds']:.1f} s)"
          + (f"; stopped: {tree.meta['stopped']}" if tree.meta.get("stopped") else ""))
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import main
    return main(a)


def cmd_eval(a: argparse.Namespace) -> int:
    from .eval import main
    return main(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rstar-app", description="MCTS over code-augmented math steps with a small LM.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("solve", help="solve one problem and print the solution and search statistics")
    s.add_argument("problem", help="the problem text, or - to read it from standard input")
    s.add_argument("--json", action="store_true", help="dump the whole tree as a trace JSON")
    s.add_argument("--pretty", action="store_true", help="indent the JSON")
    _add_search_args(s)
    _add_model_args(s)
    s.set_defaults(fn=cmd_solve)
    sub.add_parser("sandbox", help="run FILE.py exactly as a step's code runs, and print the result "
                   "(see `rstar-app sandbox --help`)")
    be = sub.add_parser("bench", help="print a table of engine speeds (batched vs sequential, PPM, executor)")
    be.add_argument("--candidates", type=int, default=8)
    be.add_argument("--tokens", type=int, default=48, help="tokens per candidate")
    be.add_argument("--repeats", type=int, default=2)
    _add_model_args(be)
    be.set_defaults(fn=cmd_bench)
    e = sub.add_parser("eval", help="accuracy on a benchmark, per-problem JSONL, summary and plot")
    e.add_argument("--bench", choices=("gsm8k", "svamp", "multiarith", "math500", "practice"), default="gsm8k")
    e.add_argument("--limit", type=int, default=50)
    e.add_argument("--sample-seed", type=int, default=1234, help="seed of the random problem subset")
    e.add_argument("--out", default="eval_runs", help="output directory")
    e.add_argument("--data", default=None, help="benchmark data directory (default ../shared/data)")
    e.add_argument("--record", action="store_true", help="write the summary into the weights manifest's eval table")
    e.add_argument("--save-trees", action="store_true",
                   help="keep each problem's tree as <out>/<run>.trees/<id>.json (for `python -m training.selection`)")
    e.add_argument("--from-trees", default=None, metavar="RUN.trees",
                   help="no search: re-apply --vote / --top-k-vote to a finished --save-trees run's trees "
                        "(same problems; tokens and seconds from that run's rows; written as <run>-rv-vsel, <run>-rv-vppm or "
                        "<run>-rv-v<K>, never over the source)")
    e.add_argument("--tag", default=None, help="model label in the run name (default: 'weights', or 'base' with --policy)")
    _add_search_args(e, default_strategy="greedy")
    _add_model_args(e)
    e.set_defaults(fn=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sandbox"]:  # its own parser, so `rstar-app sandbox --help` reaches it
        from .sandbox.cli import main as sandbox_main
        return sandbox_main(argv[1:])
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # bad files etc. get a message, not a traceback
        from .models.llama_cpp import ModelFileError
        from .sandbox.pool import SandboxUnavailable
        from .weights import WeightsError
        if isinstance(e, (ModelFileError, WeightsError, ImportError, SandboxUnavailable)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
