"""The one-line model description that eval records next to each accuracy."""

from pathlib import Path

from rstar_app.weights import Weights


def _weights(ppm: bool) -> Weights:
    return Weights(base=Path("SmolLM2-135M-Instruct.Q4_1.gguf"), policy_adapter=Path("policy-r2.gguf"),
                   ppm_adapter=Path("ppm-r2.gguf") if ppm else None, ppm_head=Path("ppm-head-r2.npz") if ppm else None,
                   few_shot=False, round=2, manifest={})


def test_description_names_the_ppm_only_when_the_engine_uses_it():
    w = _weights(ppm=True)
    assert w.describe().endswith(", PPM ppm-head-r2.npz")
    assert w.describe(ppm=False).endswith(", no PPM")  # --no-ppm with a PPM in the manifest
    assert _weights(ppm=False).describe().endswith(", no PPM")
    assert w.describe().startswith("policy round 2 (policy-r2.gguf on SmolLM2-135M-Instruct.Q4_1.gguf)")
