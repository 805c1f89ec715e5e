"""The installer's PATH check for the `rstar-app` command (pyenv shims need a rehash)."""

from rstar_app.install import ensure_entry_point


def test_entry_point_on_path_needs_nothing():
    calls = []
    assert ensure_entry_point(which=lambda c: f"/bin/{c}", run=lambda *a, **k: calls.append(a)) is None
    assert calls == []


def test_pyenv_rehash_makes_the_command_findable():
    rehashed = []
    which = lambda c: {"pyenv": "/bin/pyenv"}.get(c) if not rehashed else f"/shims/{c}"
    assert ensure_entry_point(which=which, run=lambda cmd, **k: rehashed.append(cmd)) is None
    assert rehashed == [["pyenv", "rehash"]]


def test_command_not_on_path_gives_a_hint_naming_python_m():
    hint = ensure_entry_point(which=lambda c: None, run=lambda *a, **k: None)
    assert "not on PATH" in hint and "-m rstar_app" in hint
