"""The engine checks the shipped files against the manifest's sha256 before loading any model: a
damaged adapter is named, not loaded (it would parse and quietly write nonsense)."""

from __future__ import annotations

import shutil

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
