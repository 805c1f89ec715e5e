"""`python -m training.rollouts` killed with SIGKILL in the middle of a problem, then rerun with
the same command: the file never holds a half row, the finished rows stay byte for byte, only the
problem in flight is lost and redone (real model, real sandbox, tiny budgets)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytest.importorskip("llama_cpp")

PROBLEMS = [{"id": f"p{i}", "question": q, "gold": g} for i, (q, g) in enumerate([
    ("Sara has 4 pens and buys 2 more. How many pens does she have?", "6"),
    ("Tom has 3 boxes with 4 apples in each box. How many apples does he have?", "12"),
    ("Jake has 15 marbles and gives 6 away. How many marbles does he have left?", "9"),
])]
TIMEOUT = 900  # however slow the machine is today


def rollouts(problems, out):
    # 1 rollout x 1 candidate, short steps and a time limit: a problem takes seconds, not minutes
    return subprocess.Popen(
        [sys.executable, "-m", "training.rollouts", "--problems", str(problems), "--out", str(out),
         "--rollouts", "1", "--candidates", "1", "--max-depth", "4", "--max-step-tokens", "48",
         "--time-limit", "20", "--n-ctx", "1024", "--threads", "2", "--no-progress"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_rollouts_killed_with_sigkill_resume_and_lose_only_the_problem_in_flight(tmp_path):
    problems, out = tmp_path / "problems.jsonl", tmp_path / "rollouts.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    proc = rollouts(problems, out)
    deadline = time.monotonic() + TIMEOUT
    while not (out.exists() and out.read_bytes().count(b"\n") >= 1):  # the first row is written
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # now in the middle of the second problem
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = out.read_bytes()
    complete = kept[:kept.rfind(b"\n") + 1]
    assert [json.loads(line)["id"] for line in complete.splitlines()] in (["p0"], ["p0", "p1"])

    again = rollouts(problems, out)
    stdout, stderr = again.communicate(timeout=TIMEOUT)
    assert again.returncode == 0, stderr[-2000:]
    stats = json.loads(stdout.strip().splitlines()[-1])
    data = out.read_bytes()
    assert data.startswith(complete)  # finished rows untouched, a torn tail cut off
    rows = [json.loads(line) for line in data.splitlines()]  # every line is a whole row
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    done_before = complete.count(b"\n")
    # a search that raised would leave an error row in place of a trace: none may here
    assert stats["skipped_done"] == done_before and stats["ran"] == 3 - done_before and stats["errors"] == 0
    assert all("error" not in r and r["trace"]["format"] == "rstar-app-trace" for r in rows)
