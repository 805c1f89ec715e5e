"""The engine checks the shipped files against the manifest's sha256 before loading any model: a
damaged adapter is named, not loaded (it would parse and quietly write nonsense)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rstar_app.engine import Engine
from rstar_app.weights import WEIGHTS_DIR, WeightsError


def test_a_damaged_adapter_stops_the_engine_with_the_file_named(tmp_path):
    wd = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, wd)
    adapter = next(wd.glob("policy-*.gguf"))
    data = bytearray(adapter.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep in the tensors: the header still parses
    adapter.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"{adapter.name} does not match its sha256.*git checkout weights/"):
        Engine.load(weights_dir=wd)


def test_a_missing_default_manifest_says_how_the_weights_get_there(monkeypatch, tmp_path):
    import rstar_app.weights as W
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path / "site-packages" / "weights")  # a non-editable install
    with pytest.raises(WeightsError, match="python -m rstar_app.install.*editable"):
        W.load_weights()
    with pytest.raises(WeightsError) as e:
        W.load_weights(tmp_path / "mine")  # a directory the user named: no install advice
    assert "pass --weights DIR" in str(e.value) and "editable" not in str(e.value)


def test_another_policy_gguf_keeps_the_manifests_ppm_on_the_manifests_base(monkeypatch, tmp_path):
    """`--policy` names the policy only: the shipped PPM adapter and head were trained on the
    manifest's base and must load there (on a 1.5B policy they would not even fit)."""
    pytest.importorskip("llama_cpp")
    import rstar_app.models.llama_cpp as L
    from rstar_app.weights import load_weights
    loaded = {}

    class Fake:
        def __init__(self, kind, path, *a, adapter=None, **kw):
            loaded[kind] = (Path(path), adapter)
            self.name = kind

        def close(self):
            pass
    monkeypatch.setattr(L, "LlamaPolicy", lambda path, **kw: Fake("policy", path, **kw))
    monkeypatch.setattr(L, "LlamaPPM", lambda path, head, **kw: Fake("ppm", path, **kw))
    other = tmp_path / "other-model.gguf"
    other.write_bytes(b"GGUF")
    w = load_weights()
    engine = Engine.load(policy_path=other)
    try:
        assert loaded["policy"] == (other, None)
        assert loaded["ppm"] == (w.base, str(w.ppm_adapter))
        assert engine.few_shot and w.base in engine.model_files and other in engine.model_files
    finally:
        engine.executor.close()


def test_a_base_named_but_not_fetched_is_a_model_file_error_saying_how_to_fetch_it(monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    from rstar_app.models.llama_cpp import ModelFileError
    monkeypatch.setenv("RSTAR_APP_BASES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFileError, match="python -m rstar_app.bases fetch qwen2.5-coder-1.5b"):
        Engine.load(policy_path="qwen2.5-coder-1.5b", no_ppm=True)
