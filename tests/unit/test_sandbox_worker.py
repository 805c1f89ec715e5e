"""Pure pieces of the worker side: output capping, error messages, framing, the seccomp program."""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from rstar_app.sandbox import kernel, protocol
from rstar_app.sandbox.limits import SandboxLimits
from rstar_app.sandbox.worker import (CappedStdout, _CpuTimeout, _OutputOverflow, classify,
                                      seconds_text)

LIM = SandboxLimits().to_dict()


def test_capped_stdout_keeps_at_most_the_limit_and_then_refuses():
    out = CappedStdout(10)
    out.write("hello ")
    with pytest.raises(_OutputOverflow):
        out.write("x" * 10**7)
    assert out.getvalue() == "hello xxxx" and out.overflowed
    with pytest.raises(_OutputOverflow):  # a step that swallowed the first one gets it again
        out.write("!")
    print("a", file=CappedStdout(5, "ab", 2))  # print() works with it


def test_capped_stdout_resumes_from_a_snapshot_state():
    out = CappedStdout(8, "1\n2\n", 4)
    out.write("3\n")
    assert out.getvalue() == "1\n2\n3\n" and out.written == 6


def _exc(code: str, filename: str = "<step 2>") -> BaseException:
    try:
        exec(compile(code, filename, "exec"), {})
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("no exception")


def test_error_message_names_type_message_and_line_of_the_last_step():
    kind, msg = classify(_exc("a = 1\nb = a / 0\n"), [], False, False, LIM, last_step=2)
    assert (kind, msg) == ("error", "ZeroDivisionError: division by zero (line 2)")


def test_error_in_an_earlier_step_names_the_step():
    kind, msg = classify(_exc("x = y\n", "<step 1>"), [], False, False, LIM, last_step=3)
    assert msg == "NameError: name 'y' is not defined (step 1, line 1)"


def test_error_raised_inside_a_library_points_at_the_step_line():
    e = _exc("import fractions\n\nfractions.Fraction(1, 0)\n")
    assert classify(e, [], False, False, LIM, 2)[1].endswith("(line 3)")


def test_syntax_error_message():
    try:
        compile("x = (1,\n", "<step 2>", "exec")
    except SyntaxError as e:
        kind, msg = classify(e, [], False, False, LIM, 2)
    assert kind == "error" and msg.startswith("SyntaxError: ") and msg.endswith("(line 1)")


def test_multiline_and_huge_messages_are_one_bounded_line():
    kind, msg = classify(ValueError("a\nb\n" + "z" * 5000), [], False, False, LIM, 1)
    assert "\n" not in msg and len(msg) < 400


def test_limits_win_over_the_exceptions_they_cause():
    assert classify(_OutputOverflow(), [], True, False, LIM, 1)[0] == "output_limit"
    assert classify(_CpuTimeout(), [], False, True, LIM, 1) == (
        "timeout", "timed out after 2.0 s (CPU time limit)")
    assert classify(MemoryError(), [], False, False, LIM, 1) == (
        "memory", "memory limit (512 MB) exceeded")
    # a refused operation makes the program 'forbidden' even if the step caught the error
    assert classify(None, ["import of 'os' is not allowed"], False, False, LIM, 1)[0] == "forbidden"
    assert classify(None, [], False, False, LIM, 1) == ("ok", None)
    assert classify(OSError(27, "File too large"), [], False, False, LIM, 1)[1].startswith(
        "file size limit")


def test_unprintable_exception_message():
    class Weird(Exception):
        def __str__(self):
            raise RuntimeError("no")
    assert classify(Weird(), [], False, False, LIM, 1)[1] == "Weird: <unprintable message>"


def test_seconds_text():
    assert (seconds_text(2), seconds_text(0.5), seconds_text(0.25)) == ("2.0", "0.5", "0.25")


# --------------------------------------------------------------------------------- protocol

def test_frames_round_trip_through_a_pipe():
    r, w = os.pipe()
    try:
        protocol.write_all(w, protocol.encode({"a": "\ud800 é", "n": [1, 2]}, b"\x00blob"))
        header, blob = protocol.read_frame(r, max_header=1000, max_blob=100)
        assert header == {"a": "\ud800 é", "n": [1, 2]} and blob == b"\x00blob"
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("data", [
    b"\xff\xff\xff\xff",                               # header length over the cap
    b"\x00\x00\x00\x02[]\x00\x00\x00\x00",             # header is not an object
    b"\x00\x00\x00\x02{]\x00\x00\x00\x00",             # not JSON
    b"\x00\x00\x00\x02{}\x7f\xff\xff\xff",             # blob length over the cap
])
def test_malformed_frames_are_rejected(data):
    r, w = os.pipe()
    try:
        os.write(w, data)
        with pytest.raises(protocol.ProtocolError):
            protocol.read_frame(r, max_header=100, max_blob=100, deadline=time.monotonic() + 1)
    finally:
        os.close(r)
        os.close(w)


def test_reader_times_out_and_detects_eof():
    r, w = os.pipe()
    reader = protocol.FrameReader(r, max_header=100, max_blob=100)
    os.write(w, b"\x00\x00")                     # half a length prefix, then silence
    assert reader.read(time.monotonic() + 0.05) is None
    os.close(w)
    with pytest.raises(protocol.ProtocolError):
        reader.read(time.monotonic() + 1)
    os.close(r)


# ---------------------------------------------------------------------------------- kernel

def test_seccomp_program_jumps_stay_inside_the_program():
    prog = kernel.seccomp_program(pid=1234)
    assert len(prog) < 4096
    for i, (code, jt, jf, k) in enumerate(prog):
        if code in (0x15, 0x35):       # conditional jumps
            assert i + 1 + max(jt, jf) < len(prog)
    assert prog[-1] == (0x06, 0, 0, 0x7FFF0000)            # default: allow
    assert prog[2] == (0x06, 0, 0, 0x80000000)             # wrong arch: kill the process
    denied = {k for code, _, _, k in prog if code == 0x15}
    for name in ("socket", "connect", "clone", "fork", "vfork", "execve", "ptrace", "kill",
                 "mount", "bpf", "io_uring_setup", "chmod", "fchmodat", "utimensat", "setxattr", "mkdir"):
        assert kernel._DENY_X86_64[name] in denied
    assert 1234 in denied                                  # tgkill only to itself


def test_readable_by_others_needs_read_and_search_bits_up_to_the_root():
    top = Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp is 1777 on Linux; pytest's tmp_path is 0700
    try:
        d = top / "d"
        d.mkdir()
        os.chmod(top, 0o755)
        os.chmod(d, 0o755)
        assert kernel.readable_by_others(str(d))           # every ancestor searchable, d readable
        os.chmod(d, 0o711)
        assert not kernel.readable_by_others(str(d))       # searchable but not readable
        os.chmod(d, 0o755)
        os.chmod(top, 0o700)
        assert not kernel.readable_by_others(str(d))       # a parent others cannot enter
        os.chmod(top, 0o711)
        assert kernel.readable_by_others(str(d))           # search bit alone suffices on a parent
        assert not kernel.readable_by_others(str(top / "missing"))
    finally:
        os.chmod(top, 0o755)
        shutil.rmtree(top)
