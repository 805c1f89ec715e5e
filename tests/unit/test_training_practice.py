"""training.practice: deterministic procedural word problems, answers right, nothing from a benchmark."""

import json
import re
from fractions import Fraction

from rstar_app.eval import load_bench
from training import practice as P


def replay(question: str) -> int:
    """Recompute the answer from the sentences alone (an independent reading of the text)."""
    first, *rest = [s.strip() for s in re.split(r"(?<=[.?])\s+", question) if s.strip()]
    m = re.match(r"\w+ has (\d+) [\w ]+? of \w+ with (\d+) \w+ in each", first)
    x = Fraction(int(m.group(1)) * int(m.group(2))) if m else Fraction(int(re.search(r"has (\d+)", first).group(1)))
    for s in rest[:-1]:
        n = int(re.search(r"(\d+)", s).group(1))
        if re.search(r"buys|finds|is given|wins", s):
            x += n
        elif re.search(r"gives|loses|uses", s):
            x -= n
        elif "times as many" in s:
            x *= n
        elif "splits" in s:
            x /= n
        else:
            raise AssertionError(s)
    assert x.denominator == 1 and x >= 0
    return int(x)


def test_same_seed_same_problems_other_seed_others():
    assert P.generate(50, seed=3) == P.generate(50, seed=3)
    assert P.generate(50, seed=3) != P.generate(50, seed=4)
    assert [r["n_ops"] for r in P.generate(6)] == [1, 2, 3, 1, 2, 3]
    assert len({r["id"] for r in P.generate(300)}) == 300


def test_every_gold_matches_an_independent_reading_of_the_question():
    for r in P.generate(500, seed=1):
        assert str(replay(r["question"])) == r["gold"], r


def test_no_practice_problem_shares_a_long_phrase_with_an_eval_benchmark(benchmark_data):
    def grams(text, n=8):
        w = re.findall(r"[a-z0-9]+", text.lower())
        return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}
    bench = set()
    for name in ("gsm8k", "svamp", "multiarith"):
        for it in load_bench(name, benchmark_data):
            bench |= grams(it["question"])
    ours = set().union(*(grams(r["question"]) for r in P.generate(300)))
    assert not ours & bench


def test_ensure_rewrites_a_file_that_differs(tmp_path):
    p = tmp_path / "practice.jsonl"
    p.write_text('{"id": "stale"}\n')
    P.ensure(p, 5, seed=0)
    rows = [json.loads(l) for l in p.read_text().splitlines()]
    assert rows == P.generate(5, seed=0)
