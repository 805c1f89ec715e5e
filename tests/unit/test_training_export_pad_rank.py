"""training.export._pad_rank: a LoRA pair padded to a larger rank keeps llama.cpp's delta, so a
stacked adapter whose parts have different ranks imports into one peft LoRA."""

import numpy as np
import pytest

from training.export import _pad_rank


@pytest.mark.parametrize("alpha", [0.0, 32.0])
def test_padded_pair_keeps_the_delta_llama_cpp_applies(alpha):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(16, 12)).astype(np.float32), rng.normal(size=(10, 16)).astype(np.float32)
    # llama.cpp: scale alpha / rank of the tensor, or 1 when alpha is 0 (stacked adapters)
    want = (alpha / 16 if alpha else 1.0) * b @ a
    pa, pb = _pad_rank(a, b, 32, scaled=bool(alpha))
    assert pa.shape == (32, 12) and pb.shape == (10, 32) and pa.dtype == pb.dtype == np.float32
    # peft: one scale for every tensor, alpha / 32 (alpha = rank, i.e. 1, for a stacked adapter)
    got = (alpha / 32 if alpha else 1.0) * pb @ pa
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not pa[16:].any() and not pb[:, 16:].any()


def test_a_pair_already_at_the_rank_is_returned_unchanged():
    a, b = np.ones((4, 3), np.float32), np.ones((2, 4), np.float32)
    pa, pb = _pad_rank(a, b, 4, scaled=True)
    assert pa is a and pb is b
