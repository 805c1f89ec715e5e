"""training.export.as_peft_dir: the peft copy of an adapter GGUF, imported once and reused while the
GGUF's bytes are the same."""

from pathlib import Path


def test_imported_adapter_cache_follows_the_gguf_bytes_not_its_path(tmp_path, monkeypatch):
    # a round redone or republished keeps its path (policy.gguf, policy-rK.gguf): the peft copy
    # imported from the old bytes must not be served for the new ones
    from training import export as E
    imports = []

    def fake_import(adapter, out_dir, base=None):
        imports.append(Path(adapter).read_text())
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "adapter_config.json").write_text("{}")
        (Path(out_dir) / "weights.txt").write_text(Path(adapter).read_text())
    monkeypatch.setattr(E, "import_lora_gguf", fake_import)
    gguf, cache = tmp_path / "policy.gguf", tmp_path / "cache"
    gguf.write_text("round 3")
    assert E.as_peft_dir(gguf, cache) == str(cache)
    assert E.as_peft_dir(gguf, cache) == str(cache) and imports == ["round 3"]  # reused
    gguf.write_text("round 3, redone")
    E.as_peft_dir(gguf, cache)
    assert imports == ["round 3", "round 3, redone"] and (cache / "weights.txt").read_text() == "round 3, redone"
    (cache / "imported_from.json").unlink()  # a cache from before the stamp: imported again too
    E.as_peft_dir(gguf, cache)
    assert len(imports) == 3
    assert E.as_peft_dir(cache, tmp_path / "x") == str(cache) and len(imports) == 3  # a peft dir: used as is
