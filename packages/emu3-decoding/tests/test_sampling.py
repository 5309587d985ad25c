"""Sampling: masks against transformers' warpers, the drawn distribution, seeds."""

import mindspore as ms
import numpy as np
import pytest
import torch
from emu3_decoding.sampling import GREEDY, Sampling, check_seeds, filtered_logits, sample, uniforms
from mindspore import Tensor, nn
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def torch_filtered(logits, s: Sampling):
    x = torch.from_numpy(logits)
    if s.temperature != 1.0:
        x = TemperatureLogitsWarper(s.temperature)(None, x)
    if s.top_k:
        x = TopKLogitsWarper(s.top_k)(None, x)
    if s.top_p < 1.0:
        x = TopPLogitsWarper(s.top_p)(None, x)
    return x.numpy()


@pytest.mark.parametrize("s", [
    Sampling(top_k=7), Sampling(top_p=0.6), Sampling(top_k=20, top_p=0.8),
    Sampling(temperature=0.7, top_k=9, top_p=0.5), Sampling(top_p=0.05),
])
def test_filter_matches_transformers_warpers(s):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((3, 50)) * 2).astype(np.float32)
    ours = filtered_logits(Tensor(logits), s).asnumpy()
    ref = torch_filtered(logits, s)
    assert np.array_equal(np.isinf(ours), np.isinf(ref))
    kept = ~np.isinf(ref)
    np.testing.assert_allclose(ours[kept], ref[kept], rtol=1e-6)
    assert kept.sum(-1).min() >= 1


class SampleCell(nn.Cell):
    """The sampler compiled as it runs in the decode step."""

    def __init__(self, s):
        super().__init__()
        self.s = s

    @ms.jit
    def construct(self, logits, u):
        return sample(logits, u, self.s)


@pytest.mark.parametrize("s", [Sampling(), Sampling(top_k=5), Sampling(temperature=0.5, top_k=8, top_p=0.7)])
def test_inverse_cdf_draws_the_filtered_distribution(s):
    # u on a regular grid: token j must be drawn for a fraction p_j of the grid
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((1, 12)).astype(np.float32)
    m = 4000
    u = ((np.arange(m) + 0.5) / m).astype(np.float32)
    tokens = SampleCell(s)(Tensor(np.repeat(logits, m, 0)), Tensor(u)).asnumpy()
    ref = torch.softmax(torch.from_numpy(torch_filtered(logits, s)), -1).numpy()[0]
    counts = np.bincount(tokens, minlength=12) / m
    np.testing.assert_allclose(counts, ref, atol=2.0 / m)
    assert np.all(counts[ref == 0] == 0)


def test_greedy_is_argmax():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 100)).astype(np.float32)
    got = SampleCell(GREEDY)(Tensor(logits), Tensor(np.zeros(4, np.float32))).asnumpy()
    assert np.array_equal(got, logits.argmax(-1))


def test_seed_reproducibility_and_batches():
    a, b, c = uniforms(5, 10, 3), uniforms(5, 10, 3), uniforms(6, 10, 3)
    assert a.shape == (10, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 <= a.min() and a.max() < 1
    assert not np.array_equal(uniforms(None, 4, 2), uniforms(None, 4, 2))
    # same seed, same tokens; rows of a batch draw independently
    rng = np.random.default_rng(4)
    logits = Tensor(np.repeat(rng.standard_normal((1, 2048)).astype(np.float32), 3, 0))
    cell = SampleCell(Sampling(top_k=256))
    runs = [[cell(logits, Tensor(u)).asnumpy() for u in uniforms(seed, 8, 3)] for seed in (11, 11, 12)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert len({tuple(r) for r in np.array(runs[0]).T}) == 3


def test_one_seed_per_row_draws_what_the_row_draws_alone():
    """A list of seeds: column i is what a batch of one draws with seed[i] (the pipeline's
    image j with seed s + j is the image made alone with that seed)."""
    both = uniforms([5, 9], 10, 2)
    np.testing.assert_array_equal(both[:, 0], uniforms(5, 10, 1)[:, 0])
    np.testing.assert_array_equal(both[:, 1], uniforms(9, 10, 1)[:, 0])
    assert check_seeds(3, 4) == 3 and check_seeds(None, 2) is None and check_seeds((1, 2), 2) == [1, 2]
    with pytest.raises(ValueError, match="seed: 1 seeds given for 2 rows"):
        uniforms([5], 10, 2)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        check_seeds([1, -1], 2)
    with pytest.raises(ValueError, match="seed must be an integer >= 0 or a list of them"):
        check_seeds("5", 1)


def test_bad_settings():
    with pytest.raises(ValueError):
        Sampling(top_p=0.0)
    with pytest.raises(ValueError):
        Sampling(top_k=-1)
    with pytest.raises(ValueError):
        Sampling(temperature=-1)
