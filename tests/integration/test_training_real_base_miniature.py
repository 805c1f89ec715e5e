"""The pipeline in miniature on the real shipped base (not the tiny test model): a few GSM8K-train
trajectories, two LoRA SFT steps on SmolLM2-135M loaded from its Q4_1 GGUF in torch, export to a
llama.cpp adapter GGUF, then one real search with that adapter on the same Q4_1 file. Catches a
stage that rots against the real model's shapes (30 layers, 9/3 heads) or llama.cpp's loader."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

from rstar_app.config import SearchConfig  # noqa: E402
from rstar_app.engine import Engine  # noqa: E402
from training import export as E  # noqa: E402
from training import sft  # noqa: E402
from training.bootstrap import build  # noqa: E402
from training.common import base_gguf_path  # noqa: E402


def test_sft_steps_on_the_real_base_export_and_drive_a_real_search(tmp_path, gsm8k_train):
    rows = gsm8k_train(8)
    trajectories, _ = build(rows, executor="local")
    assert len(trajectories) >= 4
    data = tmp_path / "boot.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in trajectories))
    log = sft.main(["--data", str(data), "--out", str(tmp_path / "sft"), "--max-steps", "2", "--batch-size", "2",
                    "--grad-accum", "1", "--max-seq-len", "256", "--top-layers", "2", "--lr", "1e-3",
                    "--warmup-steps", "1", "--save-every", "0", "--log-every", "1", "--eval-size", "0", "--threads", "2"])
    assert log["steps"] == 2 and log["this_run"]["tokens"] > 0
    out = E.export_lora(tmp_path / "sft" / "adapter", tmp_path / "policy.gguf")
    assert out.stat().st_size > 0

    engine = Engine.load(policy_path=base_gguf_path(), policy_adapter=out, no_ppm=True, few_shot=False,
                         n_threads=2, max_candidates=2)
    try:
        tree = engine.solve("Sara has 4 pens and buys 2 more. How many pens does she have?",
                            SearchConfig(strategy="mcts", rollouts=2, candidates=2, max_tokens=300, seed=0))
    finally:
        engine.close()
    assert len(tree.nodes) > 1 and tree.meta["stats"]["tokens"] > 0
