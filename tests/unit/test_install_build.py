"""The installer's decisions, without building anything: which llama.cpp builds to try and in what
order, the user's CMAKE_ARGS, the compiler and PEP 668 checks, and what counts as a working build."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rstar_app import install


def test_x86_tries_portable_first_then_native_for_cpus_without_avx2():
    assert install.build_order("x86_64", False, None) == [install.PORTABLE, install.NATIVE]
    assert install.build_order("AMD64", False, None) == [install.PORTABLE, install.NATIVE]


def test_arm_tries_native_first_unless_it_reports_amx():
    assert install.build_order("arm64", False, None) == [install.NATIVE, install.PORTABLE]
    assert install.build_order("aarch64", True, None) == [install.PORTABLE, install.NATIVE]


def test_the_environment_variable_forces_a_single_build():
    assert install.build_order("x86_64", True, "0") == [install.NATIVE]
    assert install.build_order("arm64", False, "1") == [install.PORTABLE]


def test_users_cmake_args_come_after_ours_so_they_win(monkeypatch):
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    assert install.cmake_args(install.PORTABLE) == install.PORTABLE
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on -DGGML_NATIVE=ON")
    assert install.cmake_args(install.PORTABLE) == install.PORTABLE + " -DGGML_CUDA=on -DGGML_NATIVE=ON"


def test_missing_compiler_names_the_package_to_install(monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    hint = install.missing_compiler(which=lambda name: None)
    assert hint and "build-essential" in hint and "xcode-select" in hint
    assert install.missing_compiler(which=lambda name: f"/usr/bin/{name}") is None
    only_c = lambda name: "/usr/bin/gcc" if name == "gcc" else None  # noqa: E731
    assert install.missing_compiler(which=only_c) is not None
    monkeypatch.setenv("CXX", "/opt/clang/bin/clang++")
    assert install.missing_compiler(which=lambda name: None) is None


def _run_returning(rc: int, stdout: str):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, rc, stdout=stdout, stderr="")
    return run


@pytest.fixture()
def llama_present(monkeypatch):
    """As if llama-cpp-python were installed (whether or not it is here): only the smoke run is faked."""
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: object())


def test_a_build_of_another_version_is_not_a_working_build(capsys, llama_present):
    want = install.LLAMA.split("==")[1]
    assert install.llama_works(run=_run_returning(0, f"llama_cpp {want}\nsmoke ok: ' 2'\n"))
    for other in ("0.2.90", want + "1"):  # 0.3.361 must not pass for 0.3.36
        assert not install.llama_works(run=_run_returning(0, f"llama_cpp {other}\nsmoke ok: ' 2'\n"))
    assert "pins " + want in capsys.readouterr().out


def test_a_missing_package_is_not_run_at_all(monkeypatch, capsys):
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    assert not install.llama_works(run=lambda *a, **k: pytest.fail("ran a smoke test without llama_cpp"))
    assert "not installed yet" in capsys.readouterr().out


def test_a_crash_by_signal_is_reported_by_name(capsys, llama_present):
    assert not install.llama_works(run=_run_returning(-4, ""))
    assert "SIGILL" in capsys.readouterr().out
    assert not install.llama_works(run=_run_returning(-40, ""))  # a realtime signal: no name, no traceback
    assert "signal 40" in capsys.readouterr().out


def test_a_smoke_test_that_hangs_is_a_failure_not_a_traceback(capsys, llama_present):
    def run(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw.get("timeout"))
    assert not install.llama_works(run=run)
    assert "300 s" in capsys.readouterr().out


def test_an_externally_managed_system_python_is_refused_with_the_venv_recipe(monkeypatch, tmp_path):
    (tmp_path / "EXTERNALLY-MANAGED").write_text("[externally-managed]\n")
    monkeypatch.setattr(install.sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)
    with pytest.raises(SystemExit, match="python3 -m venv"):
        install.check_python_env()
    monkeypatch.setenv("PIP_BREAK_SYSTEM_PACKAGES", "1")         # the user overrides PEP 668, as pip allows
    install.check_python_env()
    monkeypatch.delenv("PIP_BREAK_SYSTEM_PACKAGES")
    monkeypatch.setattr(sys, "base_prefix", "/somewhere/else")  # a virtual environment: fine
    install.check_python_env()


def test_a_failing_pip_ends_in_a_message_not_a_traceback(monkeypatch):
    def run(cmd, **kw):
        raise subprocess.CalledProcessError(1, cmd)
    monkeypatch.setattr(install.subprocess, "run", run)
    with pytest.raises(SystemExit, match="pip failed .*no-such-package"):
        install.pip("no-such-package")


def test_ensure_llama_falls_back_to_the_other_build_and_stops_with_a_message(monkeypatch):
    built = []
    monkeypatch.setattr(install, "missing_compiler", lambda: None)
    monkeypatch.setattr(install, "build_llama", built.append)
    monkeypatch.setattr(install.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("RSTAR_PORTABLE_BUILD", raising=False)
    results = iter([False, False, True])  # installed one broken, portable crashes, native works
    monkeypatch.setattr(install, "llama_works", lambda: next(results))
    install.ensure_llama(force=False)
    assert built == [install.PORTABLE, install.NATIVE]
    built.clear()
    monkeypatch.setattr(install, "llama_works", lambda: False)
    with pytest.raises(SystemExit, match="portable build nor a native build"):
        install.ensure_llama(force=False)
    assert built == [install.PORTABLE, install.NATIVE]
