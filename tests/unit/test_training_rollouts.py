"""training.rollouts: resumable append-only trace JSONL, sharding, problem loading (fake search)."""

import json

import pytest

from rstar_app.steps import build_prompt
from rstar_app.tree import OK, TERMINAL, Tree
from training import rollouts as R
from training.extract import extract


def fake_solve(calls):
    def solve(prob):
        calls.append(prob["id"])
        if prob["id"] == "bad":
            raise RuntimeError("model crashed")
        t = Tree(prob["question"], build_prompt(prob["question"]), gold=prob["gold"])
        s = t.add(t.root, kind="final_code", text="# Now print the final answer\nprint(7)", code="print(7)\n",
                  output="7\n", status=OK)
        a = t.add(s, kind="answer", text="The answer is \\boxed{7}.", answer="7", status=TERMINAL,
                  correct=prob["gold"] == "7")
        t.backup(a, 1.0 if a.correct else -1.0)
        t.vote(4)
        return t
    return solve


PROBS = [{"id": f"p{i}", "question": f"What is 3 + 4 (variant {i})?", "gold": "7" if i % 2 == 0 else "8"}
         for i in range(5)]


def test_rows_written_and_rerun_skips_done(tmp_path):
    out = tmp_path / "r.jsonl"
    calls = []
    stats = R.run_rollouts(PROBS[:3], fake_solve(calls), out, progress=False)
    assert stats["ran"] == 3 and stats["solved"] == 2 and calls == ["p0", "p1", "p2"]
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p0", "p1", "p2"]
    assert rows[0]["correct"] is True and rows[1]["correct"] is False
    assert rows[0]["trace"]["events"] == [] and rows[0]["trace"]["meta"]["id"] == "p0"
    # killed while writing p3: a torn line is cut, p3 is redone, p0..p2 are not
    out.write_bytes(out.read_bytes() + b'{"id": "p3", "question": "What')
    calls.clear()
    stats = R.run_rollouts(PROBS, fake_solve(calls), out, progress=False)
    assert calls == ["p3", "p4"] and stats["skipped_done"] == 3
    assert [json.loads(l)["id"] for l in out.read_text().splitlines()] == ["p0", "p1", "p2", "p3", "p4"]
    # the traces feed extract directly
    sft, pairs, st = extract([out])
    assert st["problems"] == 5 and st["solved"] == 3 and len(sft) == 3


def test_a_failing_problem_is_recorded_and_the_run_goes_on(tmp_path):
    out = tmp_path / "r.jsonl"
    probs = [PROBS[0], {"id": "bad", "question": "q", "gold": "1"}, PROBS[2]]
    stats = R.run_rollouts(probs, fake_solve([]), out, progress=False)
    assert stats["errors"] == 1 and stats["ran"] == 2
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert "RuntimeError" in rows[1]["error"]
    assert extract([out])[2]["problems"] == 2  # error rows carry no trace and are skipped


def test_a_problem_whose_search_raised_is_tried_again_by_the_rerun_and_counted_once(tmp_path):
    out = tmp_path / "r.jsonl"
    flaky = {"id": "flaky", "question": "What is 3 + 4 (flaky)?", "gold": "7"}
    failures_left = [1]

    def solve(prob):
        if prob["id"] == "flaky" and failures_left[0]:
            failures_left[0] -= 1
            raise MemoryError("out of memory")  # a transient failure, not the problem's fault
        return fake_solve([])(prob)
    assert R.run_rollouts([PROBS[0], flaky], solve, out, progress=False)["errors"] == 1
    calls = []
    stats = R.run_rollouts([PROBS[0], flaky], lambda p: (calls.append(p["id"]), solve(p))[1], out, progress=False)
    assert calls == ["flaky"] and stats["ran"] == 1 and stats["skipped_done"] == 1
    assert R.run_rollouts([PROBS[0], flaky], fake_solve(calls), out, progress=False)["ran"] == 0
    ids = [json.loads(l)["id"] for l in out.read_text().splitlines()]
    assert ids == ["p0", "flaky", "flaky"]  # the error row stays, append-only
    sft, _, st = extract([out])
    assert st["problems"] == 2 and st["solved"] == 2 and len(sft) == 2


def test_a_problem_in_two_rollout_files_counts_once_in_extraction(tmp_path):
    # e.g. a round whose shard layout changed midway: rollouts.jsonl and rollouts.shard0.jsonl
    a, b = tmp_path / "rollouts.jsonl", tmp_path / "rollouts.shard0.jsonl"
    R.run_rollouts(PROBS[:2], fake_solve([]), a, progress=False)
    R.run_rollouts(PROBS[:3], fake_solve([]), b, progress=False)
    sft, _, st = extract([a, b])
    assert st["problems"] == 3 and [r["problem_id"] for r in sft] == ["p0", "p2"]


def test_should_stop_ends_between_problems(tmp_path):
    out = tmp_path / "r.jsonl"
    calls = []
    stats = R.run_rollouts(PROBS, fake_solve(calls), out, progress=False, should_stop=lambda: len(calls) >= 2)
    assert calls == ["p0", "p1"] and stats["stopped"] is True  # training.evolve must not mark it done
    assert R.run_rollouts(PROBS, fake_solve(calls), out, progress=False)["stopped"] is False


def test_parallel_threads_write_every_row_once_in_finishing_order(tmp_path):
    import threading
    import time
    out = tmp_path / "r.jsonl"
    probs = PROBS + [{"id": "bad", "question": "q", "gold": "1"}]
    calls, inflight, peak = [], [0], [0]
    lock, first_three = threading.Lock(), threading.Barrier(3, timeout=30)
    inner = fake_solve(calls)

    def solve(prob):
        with lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
        if prob["id"] in ("p0", "p1", "p2"):
            first_three.wait()  # all three run at once
        if prob["id"] == "p0":  # p0 finishes after the rows of all five others are written
            deadline = time.monotonic() + 30
            while len(out.read_text().splitlines()) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
        try:
            return inner(prob)
        finally:
            with lock:
                inflight[0] -= 1

    stats = R.run_rollouts(probs, solve, out, progress=False, parallel=3)
    assert stats["ran"] == 5 and stats["errors"] == 1 and stats["solved"] == 3
    assert peak[0] == 3  # three problems at once, never more
    ids = [json.loads(l)["id"] for l in out.read_text().splitlines()]
    assert sorted(ids) == sorted(p["id"] for p in probs) and ids[-1] == "p0"
    rerun = R.run_rollouts(probs, solve, out, progress=False, parallel=3)
    assert rerun["skipped_done"] == 5 and rerun["errors"] == 1  # only the failed problem is tried again


def test_parallel_should_stop_starts_nothing_new_and_finishes_what_runs(tmp_path):
    out = tmp_path / "r.jsonl"
    calls = []
    stats = R.run_rollouts(PROBS, fake_solve(calls), out, progress=False, parallel=2,
                           should_stop=lambda: len(calls) >= 2)
    assert sorted(calls) == ["p0", "p1"] and stats["stopped"] is True
    assert sorted(json.loads(l)["id"] for l in out.read_text().splitlines()) == ["p0", "p1"]


def test_shard():
    items = list(range(10))
    assert R.shard(items, "0/3") == [0, 3, 6, 9] and R.shard(items, "2/3") == [2, 5, 8]
    assert sorted(sum((R.shard(items, f"{i}/4") for i in range(4)), [])) == items
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError):
            R.shard(items, bad)


def test_load_problems_gsm8k_and_bootstrap_forms(tmp_path):
    g = tmp_path / "gsm8k_train.jsonl"
    g.write_text(json.dumps({"question": "q1", "answer": "a <<1+1=2>>2\n#### 1,002"}) + "\n")
    (p,) = R.load_problems(g, id_prefix="gsm8k-train-")
    assert p == {"id": "gsm8k-train-00000", "question": "q1", "gold": "1002"}
    b = tmp_path / "boot.jsonl"
    b.write_text(json.dumps({"id": "x7", "question": "q", "gold": "5", "text": "..."}) + "\n")
    assert R.load_problems(b)[0]["id"] == "x7"


def test_max_calc_steps_keeps_short_gsm8k_problems_with_their_file_ids(tmp_path):
    g = tmp_path / "gsm8k_train.jsonl"
    rows = [{"question": "one", "answer": "a <<1+1=2>>2\n#### 2"},
            {"question": "three", "answer": "<<1+1=2>>2 <<2+1=3>>3 <<3+1=4>>4\n#### 4"},
            {"question": "two", "answer": "<<1+1=2>>2 <<2*3=6>>6\n#### 6"}]
    g.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = R.load_problems(g, id_prefix="t-", max_calc_steps=2)
    assert [(p["id"], p["question"]) for p in kept] == [("t-00000", "one"), ("t-00002", "two")]
    assert len(R.load_problems(g, id_prefix="t-")) == 3
