"""The torch backend's batched sampler (rstar_app.models.torch_hf._RowSampler) against the
sampler chain written out row by row: top-k, then top-p on the softmax at T=1, then temperature,
then an inverse-CDF draw with the row's own uniform."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rstar_app.models.torch_hf import GenRequest, GenRow, _RowSampler  # noqa: E402


def sampler(temps, top_p, top_k, seeds, length):
    rows = [GenRow(GenRequest("x", n=1, max_tokens=length, temperature=t), [1], t, s, length)
            for t, s in zip(temps, seeds)]
    return _RowSampler(temps, top_p, top_k, [r.uniforms for r in rows], "cpu")


def at(t: int, rows: int = 1):
    return torch.full((rows,), t, dtype=torch.long)


def reference(logits: np.ndarray, temp: float, top_p: float, top_k: int, u: float) -> int:
    if temp <= 0:
        return int(np.argmax(logits))
    order = np.argsort(-logits, kind="stable")
    k = top_k if top_k > 0 else len(logits)
    vals, idx = logits[order][:k], order[:k]
    if top_p < 1.0:
        p = np.exp(vals - vals.max())
        p /= p.sum()
        keep = int((np.cumsum(p) < top_p).sum()) + 1  # the smallest set whose mass reaches top_p
        vals, idx = vals[:keep], idx[:keep]
    q = np.exp((vals - vals.max()) / temp)
    cdf = np.cumsum(q / q.sum())
    return int(idx[min(int(np.searchsorted(cdf, u * cdf[-1])), len(idx) - 1)])


def test_batched_rows_draw_what_the_per_row_chain_draws():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, (5, 64)).astype(np.float32)
    temps, top_p, top_k = [0.7, 1.0, 0.0, 1.3, 0.5], [0.9, 1.0, 0.95, 0.5, 0.99], [10, 0, 40, 64, 3]
    s = sampler(temps, top_p, top_k, seeds=[1, 2, 3, 4, 5], length=50)
    for t in range(50):
        got = s.draw(torch.from_numpy(logits), at(t, 5)).tolist()
        want = [reference(logits[i], temps[i], top_p[i], top_k[i], float(s.u[i, t])) for i in range(5)]
        assert got == want, t
    assert s.draw(torch.from_numpy(logits), at(0, 5))[2] == int(np.argmax(logits[2]))  # T=0 is argmax
    # rows at different places of their streams
    got = s.draw(torch.from_numpy(logits), torch.tensor([3, 0, 7, 49, 1])).tolist()
    assert got == [reference(logits[i], temps[i], top_p[i], top_k[i], float(s.u[i, t]))
                   for i, t in enumerate([3, 0, 7, 49, 1])]


def test_a_rows_uniforms_depend_only_on_its_seed_and_length():
    a = sampler([1.0, 1.0], [1.0, 1.0], [0, 0], seeds=[7, 8], length=30)
    b = sampler([1.0], [1.0], [0], seeds=[7], length=30)
    assert torch.equal(a.u[0], b.u[0])
    assert not torch.equal(a.u[0], a.u[1])


def test_draws_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    counts = np.zeros(4)
    for seed in range(400):
        s = sampler([1.0], [1.0], [0], seeds=[seed], length=10)
        for t in range(10):
            counts[int(s.draw(logits, at(t)))] += 1
    freq = counts / counts.sum()
    assert np.allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03), freq
    # top-p 0.7 keeps the smallest prefix reaching 0.7 of the mass: the first two tokens
    s = sampler([1.0], [0.7], [0], seeds=[0], length=200)
    assert {int(s.draw(logits, at(t))) for t in range(200)} == {0, 1}
