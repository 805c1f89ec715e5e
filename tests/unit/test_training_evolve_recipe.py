"""training.evolve's per-round recipe overrides (`rounds: {k: {...}}`)."""

import pytest
import yaml

from training.evolve import Round, round_recipe

RECIPE = {"name": "r", "rollouts": {"n_problems": 10, "max_calc_steps": 1, "practice": {"n": 5},
                                    "search": {"rollouts": 8, "candidates": 4}},
          "sft": {"lr": 1e-4},
          "rounds": {4: {"rollouts": {"practice": None, "max_calc_steps": 2, "search": {"rollouts": 16}}}}}


def test_round_without_overrides_is_the_recipe_minus_rounds():
    out = round_recipe(RECIPE, 3)
    assert "rounds" not in out and "round_overrides" not in out
    assert out["rollouts"] == RECIPE["rollouts"] and out["sft"] == RECIPE["sft"]


def test_overrides_merge_nested_keys_and_replace_leaves():
    out = round_recipe(RECIPE, 4)
    assert out["rollouts"]["practice"] is None and out["rollouts"]["max_calc_steps"] == 2
    assert out["rollouts"]["n_problems"] == 10                          # untouched key kept
    assert out["rollouts"]["search"] == {"rollouts": 16, "candidates": 4}  # nested merge, not replace
    assert out["round_overrides"]["round"] == 4
    assert RECIPE["rollouts"]["max_calc_steps"] == 1                    # the input is not mutated


def test_round_keys_may_be_strings_as_yaml_quotes_them():
    assert round_recipe({"sft": {"lr": 1}, "rounds": {"2": {"sft": {"lr": 2}}}}, 2)["sft"]["lr"] == 2


@pytest.mark.parametrize("rounds, msg", [
    ({"four": {}}, "round numbers"), ({4: [1]}, "mapping"), ([1], "must map"),
    ({4: {"spelling": {}}}, r"cannot override \['spelling'\]"),
    ({4: {"sft": {"lrr": 2}}}, r"rounds.4.sft has keys the recipe's sft lacks: \['lrr'\]"),  # a typo does nothing otherwise
    ({4: {"rounds": {5: {}}}}, "cannot override"),
    ({4: {"workdir": "elsewhere"}}, "cannot override"),  # round k-1 would not be found next to round k
    ({4: {}, "4": {}}, "names a round twice")])
def test_bad_rounds_section_is_refused_with_its_reason(rounds, msg):
    with pytest.raises(SystemExit, match=msg):
        round_recipe({"sft": {"lr": 1}, "workdir": "w", "rounds": rounds}, 4)


def test_written_round_recipe_has_no_yaml_anchors(tmp_path):
    recipe = {"workdir": str(tmp_path / "work"), "base": "smollm2", "sft": {"targets": ["q"]},
              "rounds": {2: {"sft": {"targets": ["q", "v"]}}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r2 = Round(str(path), 2, weights_dir=str(tmp_path / "w"))
    text = open(r2.recipe_path).read()
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text)["sft"]["targets"] == ["q", "v"]


def test_round_hands_its_stages_the_merged_recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "workdir": str(tmp_path / "work"), "base": "smollm2"}))
    r4 = Round(str(path), 4, weights_dir=str(tmp_path / "w"))
    assert r4.recipe_path == str(tmp_path / "work" / "round-4" / "recipe.yaml")
    written = yaml.safe_load(open(r4.recipe_path))
    assert written["rollouts"]["max_calc_steps"] == 2 and "rounds" not in written
    assert Round(str(path), 3, weights_dir=str(tmp_path / "w")).recipe_path == str(path)


def test_round_rollouts_stage_runs_with_the_merged_recipe(tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "workdir": str(tmp_path / "work"), "base": "smollm2",
                                    "problems": str(tmp_path / "train.jsonl")}))
    Round(str(path), 4, weights_dir=str(tmp_path / "w"), dry_run=True).stage_rollouts()
    cmds = [ln for ln in capsys.readouterr().out.splitlines() if "training.rollouts" in ln]
    assert len(cmds) == 1  # practice: null in round 4, so no practice run first
    assert "round-4/recipe.yaml" in cmds[0] and "--max-calc-steps 2" in cmds[0] and "--limit 10" in cmds[0]


def test_gpu_recipe_rolls_out_many_batched_searches_in_one_process(tmp_path, capsys):
    from training.common import REPO
    recipe = yaml.safe_load(open(REPO / "training" / "recipes" / "gpu.yaml"))
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({**recipe, "workdir": str(tmp_path / "work")}))
    Round(str(path), 2, weights_dir=str(tmp_path / "w"), dry_run=True).stage_rollouts()
    cmds = [ln for ln in capsys.readouterr().out.splitlines() if "training.rollouts" in ln]
    assert len(cmds) == 1
    assert all(f in cmds[0] for f in ("--backend torch", "--device cuda", "--parallel 64", "--chunk-tokens 32",
                                      "--sandbox-workers 8")), cmds[0]


def test_missing_bootstrap_is_rebuilt_not_skipped(tmp_path, capsys):
    # training/data/ is not committed: a fresh clone resuming round k must rebuild the replay set,
    # not train without it (round 4 of cpu-small once did, silently)
    boot = tmp_path / "data" / "bootstrap.jsonl"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "workdir": str(tmp_path / "work"), "base": "smollm2", "bootstrap": str(boot)}))
    r = Round(str(path), 4, weights_dir=str(tmp_path / "w"), dry_run=True)
    assert r.bootstrap("extract") == boot
    assert f"training.bootstrap --out {boot}" in capsys.readouterr().out
    boot.parent.mkdir()
    boot.write_text("")
    r.bootstrap("extract")
    assert "training.bootstrap" not in capsys.readouterr().out  # present: used as is


def test_publish_prunes_earlier_rounds_files_the_manifest_no_longer_names(tmp_path):
    from training.evolve import _prune
    for name in ("policy-r3.gguf", "policy-r3.gguf.json", "ppm-r3.gguf", "ppm-head-r3.npz", "selector-r3.json",
                 "policy-r4.gguf", "ppm-r4.gguf", "ppm-head-r4.npz", "selector-r4.json", "manifest.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    gone = _prune(tmp_path, keep=["policy-r4.gguf", "ppm-r4.gguf", "ppm-head-r4.npz", "selector-r4.json"])
    assert sorted(gone) == ["policy-r3.gguf", "policy-r3.gguf.json", "ppm-head-r3.npz", "ppm-r3.gguf", "selector-r3.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "notes.txt", "policy-r4.gguf",
                                                          "ppm-head-r4.npz", "ppm-r4.gguf", "selector-r4.json"]


def _round_with_rollouts(tmp_path, commands: list[str], evolve: dict | None = None) -> Round:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"), "base": "smollm2", "evolve": evolve or {}}))
    r = Round(str(path), 5, weights_dir=str(tmp_path / "w"))
    r.state["stages"]["rollouts"] = {"done": True, "commands": commands}
    return r


def test_selector_stage_reads_the_ppm_head_the_rollouts_searched_with(tmp_path):
    cmd = "python -m training.rollouts --problems p.jsonl --ppm-adapter a.gguf --ppm-head {} --out r.jsonl"
    r = _round_with_rollouts(tmp_path, [cmd.format("weights/ppm-head-r4.npz")] * 2)
    assert r.rollout_ppm_head().parts[-2:] == ("weights", "ppm-head-r4.npz")
    # searched without a PPM, or with two different ones: no single PPM to fit a selector for
    assert _round_with_rollouts(tmp_path, ["python -m training.rollouts --problems p.jsonl"]).rollout_ppm_head() is None
    assert _round_with_rollouts(tmp_path, [cmd.format("a.npz"), cmd.format("b.npz")]).rollout_ppm_head() is None


def test_selector_stage_skips_with_its_reason_and_does_not_block_the_round(tmp_path, capsys):
    r = _round_with_rollouts(tmp_path, ["python -m training.rollouts --problems p.jsonl"])
    r.stage_selector()
    assert r.state["stages"]["selector"]["skipped"] == "the rollouts searched without a PPM"
    r = _round_with_rollouts(tmp_path, ["python -m training.rollouts --ppm-head h.npz"], {"selector": False})
    r.stage_selector()
    assert r.state["stages"]["selector"]["skipped"] == "recipe: evolve.selector is false"
    # a PPM, but no tree with both a right and a wrong answer: nothing to fit, no process started
    r = _round_with_rollouts(tmp_path, ["python -m training.rollouts --ppm-head h.npz"])
    r.stage_selector()
    assert r.state["stages"]["selector"]["skipped"] == "0 trees hold both a right and a wrong answer (< 20)"
    assert "training.selector" not in capsys.readouterr().out


def test_a_side_stage_running_does_not_rerun_the_finished_stages_after_it(tmp_path, monkeypatch):
    # a round finished before the selector stage existed gets only its selector on a rerun, not a new
    # extract -> SFT -> PPM -> publish; a rollouts stage that runs again still makes all of them stale
    from training import evolve
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"), "base": "smollm2"}))
    ran: list[str] = []
    monkeypatch.setattr(Round, "done", lambda self, stage, redo=(): stage != "selector")
    for stage in evolve.STAGES:
        monkeypatch.setattr(Round, f"stage_{stage}", lambda self, s=stage: ran.append(s))
    evolve.main(["--recipe", str(path), "--round", "5"])
    assert ran == ["selector"]
    ran.clear()
    evolve.main(["--recipe", str(path), "--round", "5", "--redo", "rollouts"])
    assert ran == list(evolve.STAGES)


def _published_round(tmp_path, evolve: dict) -> tuple[Round, dict]:
    """Round 5 just wrote a manifest with a new PPM and no selector; round 5's own selector stage fit
    one for round 4's PPM (head sha 'h4'); the new PPM's head sha is 'h5'."""
    import json
    work, wd = tmp_path / "work", tmp_path / "w"
    wd.mkdir()
    ppm = {"adapter": "ppm-r5.gguf", "head": "ppm-head-r5.npz", "sha256": {"adapter": "a5", "head": "h5"},
           "made_by": ["python -m training.ppm ..."]}
    (wd / "manifest.json").write_text(json.dumps({"round": 5, "ppm": ppm}))
    for k, head in ((5, "h4"), (6, "h5")):
        sel = work / f"round-{k}" / "selector"
        sel.mkdir(parents=True)
        (sel / "selector.json").write_text(json.dumps({"weights": {"maxp": float(k)}}))
        (sel / "report.json").write_text(json.dumps({"command": f"python -m training.selector --out round-{k}"}))
        (work / f"round-{k}" / "stages.json").write_text(json.dumps({"round": k, "stages": {"selector": {
            "done": True, "selector": str(sel / "selector.json"), "ppm_head": f"head-{head}.npz", "ppm_head_sha256": head}}}))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(work), "base": "smollm2", "evolve": evolve}))
    return Round(str(path), 5, weights_dir=str(wd)), ppm


def test_publish_takes_the_selector_the_next_round_fit_for_this_ppm(tmp_path):
    import json
    r, ppm = _published_round(tmp_path, {"selector_carry": True})
    out = r.attach_waiting_selector(ppm)
    assert out["selector"] == "selector-r5.json" and "round-6" in out["made_by"][-1]
    assert json.loads((tmp_path / "w" / "selector-r5.json").read_text())["weights"] == {"maxp": 6.0}
    assert "carried_from_ppm_head" not in out["selector_fit"]


def test_publish_carries_the_previous_ppms_selector_only_when_the_recipe_says_so(tmp_path):
    import json, shutil
    r, ppm = _published_round(tmp_path, {})
    shutil.rmtree(tmp_path / "work" / "round-6")  # round 6 has not fit one yet
    assert r.attach_waiting_selector(ppm) == ppm and not (tmp_path / "w" / "selector-r5.json").exists()
    r.evo["selector_carry"] = True
    out = r.attach_waiting_selector(ppm)
    assert out["selector"] == "selector-r5.json" and out["selector_fit"]["carried_from_ppm_head"] == "head-h4.npz"
    assert json.loads((tmp_path / "w" / "selector-r5.json").read_text())["weights"] == {"maxp": 5.0}


def test_a_fresh_clone_does_not_re_extract_and_retrain_a_round_whose_models_are_committed(tmp_path):
    # committed: stages.json, policy.gguf, the PPM files; not committed: sft_data.jsonl (extract's mix)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"workdir": str(tmp_path / "work"), "base": "smollm2"}))
    r = Round(str(path), 4, weights_dir=str(tmp_path / "w"))
    d = r.dir
    (d / "ppm").mkdir(parents=True)
    for f in ("policy.gguf", "ppm/ppm.gguf", "ppm/value_head.npz"):
        (d / f).write_bytes(b"x")
    r.state["stages"] = {"extract": {"done": True, "sft_data": str(d / "sft_data.jsonl")},
                         "sft": {"done": True, "adapter": str(d / "policy.gguf")},
                         "ppm": {"done": True, "adapter": str(d / "ppm/ppm.gguf"), "head": str(d / "ppm/value_head.npz")}}
    assert r.done("extract") and r.done("sft") and r.done("ppm")
    assert not r.done("extract", redo=["sft"])          # SFT asked for again: it needs the mix rebuilt
    (d / "policy.gguf").unlink()
    assert not r.done("extract") and not r.done("sft")  # nothing of SFT's here: the chain reruns


def test_next_round_searches_only_with_a_ppm_that_passed_the_publish_gate(tmp_path):
    import json
    r = _round_with_rollouts(tmp_path, [], {"ppm_min_heldout_accuracy": 0.6})  # round 5
    prev = tmp_path / "work" / "round-4"
    (prev / "ppm").mkdir(parents=True)
    for name in ("policy.gguf", "ppm/ppm.gguf", "ppm/value_head.npz"):
        (prev / name).write_text("x")
    log = prev / "ppm" / "train_log.json"
    log.write_text(json.dumps({"eval_after": {"accuracy": 0.7}}))
    assert r.prev_models() == {"policy": prev / "policy.gguf", "ppm_adapter": prev / "ppm" / "ppm.gguf",
                               "ppm_head": prev / "ppm" / "value_head.npz"}
    log.write_text(json.dumps({"eval_after": {"accuracy": 0.55}}))  # refused by publish: not used either
    assert r.prev_models() == {"policy": prev / "policy.gguf"}
    # round 4 was published keeping round 3's PPM: the search uses that one, as the app would
    w = tmp_path / "w"
    w.mkdir()
    (w / "manifest.json").write_text(json.dumps({"round": 4, "policy": {"adapter": "policy-r4.gguf"},
                                                 "ppm": {"adapter": "ppm-r3.gguf", "head": "ppm-head-r3.npz"}}))
    assert r.prev_models() == {"policy": prev / "policy.gguf", "ppm_adapter": w / "ppm-r3.gguf",
                               "ppm_head": w / "ppm-head-r3.npz"}
