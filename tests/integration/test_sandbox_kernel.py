"""The kernel layers on their own, without the Python audit hook: what still holds if a program
corrupts memory and gets past the hook. A subprocess confines itself with kernel.py only and then
tries the syscalls directly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rstar_app.sandbox import kernel

ROOT = str(Path(__file__).resolve().parents[2])

SCRIPT = textwrap.dedent("""
    import errno, json, os, signal, socket, sys, tempfile
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sys.path.insert(0, sys.argv[1])
    from rstar_app.sandbox import kernel, pool
    roots = pool.read_roots()
    scratch = tempfile.mkdtemp()
    fd, victim = tempfile.mkstemp(prefix="rstar-kernel-victim-")  # outside scratch, ours, mode 0600
    os.write(fd, b"keep")
    os.close(fd)
    seccomp = kernel.Seccomp()
    mode = kernel.privilege_mode(roots)
    if mode == "nobody":
        os.chown(scratch, kernel.NOBODY, kernel.NOBODY)
    kernel.set_rlimits(cpu_seconds=(10, 11), memory_bytes=1 << 30, file_bytes=1 << 16,
                       open_files=64, processes=0)
    kernel.no_new_privs()
    abi = kernel.landlock(roots, [scratch])
    kernel.drop_privileges(mode)
    sec = seccomp.install(os.getpid())
    out = {"abi": abi, "seccomp": sec, "mode": mode, "uid": os.getuid(),
           "capeff": kernel._cap_eff(), "victim": victim}

    def attempt(name, fn):
        try:
            fn()
            out[name] = "allowed"
        except OSError as e:
            out[name] = errno.errorcode.get(e.errno, str(e.errno))
        except RuntimeError:
            out[name] = "RuntimeError"
        except ValueError:  # resource.setrlimit turns EPERM into ValueError
            out[name] = "EPERM"

    def fork():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    def thread():
        import threading
        threading.Thread(target=lambda: None).start()

    attempt("socket_inet", lambda: socket.socket())
    attempt("socket_unix", lambda: socket.socket(socket.AF_UNIX))
    attempt("fork", fork)
    attempt("thread", thread)
    attempt("exec", lambda: os.execv("/bin/true", ["true"]))
    attempt("kill_parent", lambda: os.kill(os.getppid(), 0))
    attempt("read_passwd", lambda: open("/etc/passwd").read())
    attempt("read_app_source", lambda: open(sys.argv[1] + "/rstar_app/steps.py").read())
    attempt("write_tmp", lambda: open("/tmp/rstar-kernel-pwned", "w"))
    attempt("read_proc_environ", lambda: open("/proc/self/environ").read())
    attempt("raise_rlimit", lambda: __import__("resource").setrlimit(
        __import__("resource").RLIMIT_NOFILE, (4096, 4096)))
    attempt("write_scratch", lambda: open(scratch + "/f", "w").write("ok"))
    attempt("huge_file", lambda: open(scratch + "/g", "wb").write(b"x" * (1 << 17)))
    attempt("read_python", lambda: open(os.__file__).read(10))
    # file metadata, which Landlock does not cover
    attempt("chmod_outside", lambda: os.chmod(victim, 0o666))
    attempt("utime_outside", lambda: os.utime(victim, (0, 0)))
    attempt("setxattr_outside", lambda: os.setxattr(victim, "user.pwned", b"1"))
    attempt("mkdir_scratch", lambda: os.mkdir(scratch + "/d"))
    attempt("truncate_outside", lambda: os.truncate(victim, 0))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def confined():
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    r = subprocess.run([sys.executable, "-c", SCRIPT, ROOT], capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    yield out
    Path(out["victim"]).unlink(missing_ok=True)


def test_seccomp_blocks_network_processes_and_signals(confined):
    if not confined["seccomp"]:
        pytest.skip("seccomp filter not available on this architecture/kernel")
    for name in ("socket_inet", "socket_unix", "fork", "exec", "kill_parent"):
        assert confined[name] == "EPERM", (name, confined)
    assert confined["thread"] == "RuntimeError"  # clone refused: "can't start new thread"


def test_seccomp_blocks_file_metadata_changes_and_new_directories(confined):
    if not confined["seccomp"]:
        pytest.skip("seccomp filter not available on this architecture/kernel")
    # as root the worker may run as nobody, whom mode bits already refuse chmod/utime/truncate of
    # the victim; mkdir in its own scratch and setxattr prove the filter either way
    for name in ("chmod_outside", "utime_outside", "setxattr_outside", "mkdir_scratch", "truncate_outside"):
        assert confined[name] == "EPERM", (name, confined)
    st = Path(confined["victim"]).stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_mtime > 0 and st.st_size == 4


def test_landlock_blocks_files_outside_scratch(confined):
    if not confined["abi"]:
        pytest.skip("Landlock not available on this kernel")
    for name in ("read_passwd", "read_app_source", "write_tmp", "read_proc_environ"):
        assert confined[name] == "EACCES", (name, confined)
    assert confined["write_scratch"] == "allowed" and confined["read_python"] == "allowed"
    assert not Path("/tmp/rstar-kernel-pwned").exists()


def test_rlimits_hold(confined):
    assert confined["raise_rlimit"] in ("EPERM", "EINVAL")
    assert confined["huge_file"] == "EFBIG"


def test_root_is_dropped(confined):
    if confined["mode"] == "same-user":
        pytest.skip("not running as root: nothing to drop")
    assert confined["capeff"] == 0
    if confined["mode"] == "nobody":
        assert confined["uid"] == kernel.NOBODY
