"""training.unseen: the training problems no shipped SFT saw a solution of (round 1's held-out split,
never replayed, never extracted or rolled out, plus the ones the bootstrap could not convert), and
the recall check that compares the policy's confidence on trained and held-out solutions."""

import json
import random

from rstar_app.steps import build_prompt
from training.common import write_jsonl
from training.sft import select
from training.unseen import heldout_ids, main, recall_gap, replayed_ids, unseen_problems


def _data(n_problems=40, n_boot=30):
    problems = [{"id": f"p{i:02d}", "question": f"q{i}", "gold": str(i)} for i in range(n_problems)]
    boot = [{"id": f"p{i:02d}", "question": f"q{i}", "text": f"# step\nx = {i}\n<output>{i}"} for i in range(n_boot)]
    return problems, boot


def test_heldout_ids_are_exactly_the_split_sft_holds_out():
    _, boot = _data()
    _, ev = select(boot, 0, 8, 0)
    assert heldout_ids(boot, eval_size=8, seed=0) == {r["id"] for r in ev}
    assert heldout_ids(boot, eval_size=8, seed=1) != heldout_ids(boot, eval_size=8, seed=0)


def test_replayed_ids_match_evolves_seeded_sample():
    _, boot = _data()
    want = {r["id"] for r in random.Random(2).sample(boot, 5)} | {r["id"] for r in random.Random(3).sample(boot, 5)}
    assert replayed_ids(boot, {2: 5, 3: 5}) == want
    assert len(replayed_ids(boot, {2: 999})) == len(boot)  # more than there are: all of them


def test_unseen_is_held_out_minus_replayed_minus_seen_plus_unconverted():
    problems, boot = _data()
    held = heldout_ids(boot, eval_size=10, seed=0)
    replay = replayed_ids(boot, {2: 6})
    extra = sorted(held - replay)[:1]
    got = unseen_problems(problems, boot, eval_size=10, sft_seed=0, replay={2: 6}, seen=extra, shuffle_seed=None)
    want = [p for p in problems if p["id"] in (held - replay - set(extra)) or int(p["id"][1:]) >= 30]
    assert got == want
    assert {f"p{i}" for i in range(30, 40)} <= {p["id"] for p in got}  # never converted, never trained
    assert all(p["id"] not in replay for p in got) and extra[0] not in {p["id"] for p in got}


def test_unseen_order_is_a_fixed_shuffle():
    problems, boot = _data()
    a = unseen_problems(problems, boot, eval_size=10, shuffle_seed=0)
    b = unseen_problems(problems, boot, eval_size=10, shuffle_seed=0)
    plain = unseen_problems(problems, boot, eval_size=10, shuffle_seed=None)
    assert a == b and sorted(a, key=lambda p: p["id"]) == plain and a != plain
    fewer = unseen_problems(problems, boot, eval_size=10, seen=[a[3]["id"]], shuffle_seed=0)
    assert fewer == a[:3] + a[4:]  # dropping one problem moves no other: a stopped run stays a prefix


class RecitingPolicy:
    """Sure (log p -0.1 a token) of texts it was 'trained' on, unsure (-2.0) of the rest."""

    def __init__(self, trained_texts):
        self.trained, self.seen = set(trained_texts), []

    def token_logprobs(self, prefix, text):
        self.seen.append((prefix, text))
        lp = -0.1 if any(t.startswith(text) for t in self.trained) else -2.0
        return [(w.encode(), lp) for w in text.split(" ")]


def test_recall_gap_reports_how_much_surer_the_policy_is_of_trained_solutions():
    _, boot = _data()
    trained, held = boot[:5], boot[5:10]
    pol = RecitingPolicy(r["text"] for r in trained)
    r = recall_gap(pol, trained, held)
    assert r["trained"] == {"rows": 5, "mean_logprob_per_token": -0.1}
    assert r["held_out"] == {"rows": 5, "mean_logprob_per_token": -2.0}
    assert r["p_trained_surer"] == 1.0
    assert all("<output>" not in text for _, text in pol.seen)  # the executor's output is not the policy's
    assert [prefix for prefix, _ in pol.seen] == [build_prompt(r["question"]) for r in trained + held]
    even = recall_gap(RecitingPolicy([]), trained, held)
    assert even["p_trained_surer"] == 0.5


def test_cli_writes_the_unseen_problems(tmp_path, capsys):
    problems, boot = _data()
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps({"id": p["id"], "question": p["question"], "gold": p["gold"]}) + "\n"
                           for p in problems))
    write_jsonl(tmp_path / "boot.jsonl", boot)
    write_jsonl(tmp_path / "rolled.jsonl", [{"id": "p35"}])
    write_jsonl(tmp_path / "pairs.jsonl", [{"problem_id": "p36", "pos": "a", "neg": "b"}])
    out = tmp_path / "unseen.jsonl"
    assert main(["--problems", str(src), "--bootstrap", str(tmp_path / "boot.jsonl"), "--eval-size", "10",
                 "--replay", "", "--extracted", "",
                 "--exclude", f"{tmp_path / 'rolled*.jsonl'},{tmp_path / 'pairs.jsonl'}",
                 "--out", str(out), "--held-out-out", str(tmp_path / "held.jsonl"),
                 "--trained-out", str(tmp_path / "trained.jsonl"), "--trained-n", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert report["unseen"] == len(rows) == 10 + 8 and report["not_converted"] == 8 and report["held_out"] == 10
    assert not {"p35", "p36"} & {r["id"] for r in rows}
    held = [json.loads(x) for x in (tmp_path / "held.jsonl").read_text().splitlines()]
    assert held == [r for r in rows if int(r["id"][1:]) < 30]  # converted, held out: same order
    trained = [json.loads(x) for x in (tmp_path / "trained.jsonl").read_text().splitlines()]
    assert len(trained) == 5 and not {r["id"] for r in trained} & {r["id"] for r in rows}
    assert all(int(r["id"][1:]) < 30 and set(r) == {"id", "question", "gold"} for r in trained)


def test_sft_holds_out_whole_problems_so_no_repeated_trajectory_is_on_both_sides():
    # evolve repeats the round's own trajectories (x3) and extraction keeps two per problem
    own = [{"question": f"q{i}", "text": f"solution {i}{v}"} for i in range(10) for v in "ab"] * 3
    boot = [{"question": f"b{i}", "text": f"bootstrap {i}"} for i in range(40)]
    for seed in range(5):
        tr, ev = select(own + boot, 0, 16, seed)
        assert len(ev) >= 16 and len(tr) + len(ev) == 100
        assert not {r["question"] for r in tr} & {r["question"] for r in ev}


def test_extracted_sft_rows_name_their_problem_by_problem_id_not_their_own_id(tmp_path):
    from training.unseen import _ids
    f = tmp_path / "sft_extracted.jsonl"
    write_jsonl(f, [{"id": "gsm8k-train-00217#73", "problem_id": "gsm8k-train-00217", "text": "x"},
                    {"id": "gsm8k-train-00009", "question": "q", "text": "y"}])  # a bootstrap row
    assert _ids([f]) == {"gsm8k-train-00217", "gsm8k-train-00009"}
