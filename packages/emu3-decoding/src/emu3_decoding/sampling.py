"""Picking the next token from logits: greedy, temperature, top-k, top-p, inside the graph.

Everything here is written with MindSpore ops so that it runs inside the compiled decode
step. Randomness needs no per-step host work over the vocabulary: one uniform number per row
and step is drawn up front from numpy's PCG64 with the seed (`uniforms`), and a token is
picked by inverting the cumulative distribution of the kept candidates. The same seed gives
the same tokens on every device (up to float rounding of the logits).

Order and semantics follow transformers' warpers: temperature, then top-k (keep the k largest),
then top-p (keep the smallest set of most probable tokens whose probability reaches p, at least
one), then sample from the softmax of what is left.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import ops


def finite(value, name: str) -> float:
    """`value` as a float, or ValueError naming `name` unless it is a finite number. NaN passes
    every comparison-based range check (`nan < 0` is False), then turns every logit into NaN:
    argmax picks token 0 at each step and the result is a flat image, without an error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_temperature(value, name: str = "temperature") -> float:
    """A finite number >= 0 (0: greedy)."""
    value = finite(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_top_k(value, name: str = "top_k") -> int:
    """An integer >= 0 (0: off)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def check_top_p(value, name: str = "top_p") -> float:
    """A finite number in (0, 1] (1: off)."""
    value = finite(value, name)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


def check_seed(seed, name: str = "seed") -> int | None:
    """None (a fresh seed from the operating system) or an integer >= 0, numpy's seeds."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {seed!r}")
    return int(seed)


def check_seeds(seed, rows: int, name: str = "seed") -> int | list[int] | None:
    """The seed of a batch of `rows` rows: None, one integer (the rows share one generator), or
    a sequence of `rows` integers, one per row (each row its own generator: row i draws what a
    run of that row alone with seed[i] draws)."""
    if seed is None or isinstance(seed, numbers.Integral):
        return check_seed(seed, name)
    if isinstance(seed, (str, bytes)) or not hasattr(seed, "__len__"):
        raise ValueError(f"{name} must be an integer >= 0 or a list of them, got {seed!r}")
    seeds = [check_seed(s, name) for s in seed]
    if len(seeds) != rows or None in seeds:
        raise ValueError(f"{name}: {len(seeds)} seeds given for {rows} rows")
    return seeds


@dataclass(frozen=True)
class Sampling:
    """How to pick a token. temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off; 2048 is the original recipe for images
    top_p: float = 1.0  # 1.0: off

    def __post_init__(self):
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        object.__setattr__(self, "top_k", check_top_k(self.top_k))
        object.__setattr__(self, "top_p", check_top_p(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling(temperature=0.0)


def uniforms(seed, steps: int, batch: int) -> np.ndarray:
    """The uniform numbers in [0, 1) used at each step and row: [steps, batch] float32.

    seed None draws a fresh seed from the operating system; a list gives each row its own
    generator (column i is what `uniforms(seed[i], steps, 1)` draws).
    """
    seed = check_seeds(seed, int(batch))
    steps = max(int(steps), 1)
    if isinstance(seed, list):
        return np.stack([np.random.default_rng(s).random(steps, dtype=np.float32) for s in seed], axis=1)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    rng = np.random.default_rng(seed)
    return rng.random((steps, int(batch)), dtype=np.float32)


def candidates(logits, top_k: int, top_p: float, temperature: float = 1.0):
    """The kept candidates, sorted by decreasing logit: (values [B, k], token indices [B, k]).

    Filtered entries have value -inf. `top_k` 0 keeps the whole row (a full sort: slow for a
    large vocabulary; `sample` avoids it when top-p is off).
    """
    x = logits / temperature if temperature != 1.0 else logits
    n = x.shape[-1]
    k = top_k if 0 < top_k < n else n
    values, index = ops.topk(x, k)
    if top_p < 1.0:
        probs = ops.softmax(values, -1)
        mass_before = ops.cumsum(probs, -1) - probs  # probability of strictly better candidates
        rank = ops.arange(0, k, dtype=ms.int32).reshape(1, -1)
        drop = ops.logical_and(mass_before >= top_p, rank > 0)
        values = ops.masked_fill(values, drop, float("-inf"))
    return values, index


def _invert_cdf(values, u):
    """Index j of the candidate picked by u [B] in [0, 1): the first j whose cumulative mass
    exceeds u * total mass."""
    probs = ops.softmax(values, -1)
    cdf = ops.cumsum(probs, -1)
    target = u.reshape(-1, 1) * cdf[:, -1:]
    j = (cdf <= target).astype(ms.int32).sum(-1)
    return ops.clip(j, 0, values.shape[-1] - 1)


def sample(logits, u, sampling: Sampling):
    """Token index [B] int32 from logits [B, n] (float32) and uniforms u [B]."""
    if sampling.greedy:
        return ops.argmax(logits, -1).astype(ms.int32)
    n = logits.shape[-1]
    if (sampling.top_k == 0 or sampling.top_k >= n) and sampling.top_p >= 1.0:
        # no filtering: invert the cdf over the row in vocabulary order, no sort needed
        x = logits / sampling.temperature if sampling.temperature != 1.0 else logits
        return _invert_cdf(x, u).astype(ms.int32)
    values, index = candidates(logits, sampling.top_k, sampling.top_p, sampling.temperature)
    j = _invert_cdf(values, u).reshape(-1, 1)
    return ops.gather_elements(index, 1, j.astype(index.dtype)).reshape(-1).astype(ms.int32)


def filtered_logits(logits, sampling: Sampling):
    """Logits [B, n] after temperature, top-k and top-p, with -inf where filtered out.

    The distribution `sample` draws from is softmax of this (for inspection and tests).
    """
    if sampling.greedy:
        raise ValueError("greedy decoding has no filtered distribution")
    values, index = candidates(logits, sampling.top_k, sampling.top_p, sampling.temperature)
    full = ops.full(logits.shape, float("-inf"), dtype=logits.dtype)
    return ops.tensor_scatter_elements(full, index, values, axis=1)
