"""Static KV caches and their compiled steps: the one owner of both.

- `KVCache`: every layer's keys and values, preallocated, and which slots hold real tokens.
- `CachedRunner`: the compiled `prefill` / `extend` / `decode` of one model over one cache.
  Its steps are plain graph-safe methods too (`run`), so a caller can call them from inside
  its own compiled graph (emu3-decoding makes a whole decode step, sampling included, one graph).
- `CachePool`: the runners of one model (`model.cache_pool`), reused by (role, batch, length)
  so that calls alternating between sizes keep their compiled graphs; the least recently used
  are dropped past `keep_bytes`. `model.setup_cache` and emu3-decoding both take runners here;
  nothing else constructs a cache.

Every step goes through the model's one forward (`Emu3Model.construct`) with the cache passed
in; keys/values are written in place with ScatterUpdate at the new tokens' slots.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from .attention import mask_spec

KEEP_CACHE_BYTES = 1 << 30  # caches a pool keeps for reuse beyond those a caller holds on to

_cache_ids = itertools.count()


class KVCache(nn.Cell):
    """Preallocated keys/values of every layer and which slots hold real tokens.

    k[i], v[i]: [B*Hkv*S, D] parameters, i.e. [B, Hkv, S, D] in memory order with row
    (b*Hkv + h)*S + slot, so that a ScatterUpdate writes a step's rows in place.
    valid: int32 [B*S], 1 where slot s of row b holds a real (not padding) token.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype):
        super().__init__()
        tag = next(_cache_ids)
        rows = batch_size * num_kv_heads * max_seq_len
        self.batch_size, self.max_seq_len, self.num_kv_heads, self.head_dim = (
            batch_size, max_seq_len, num_kv_heads, head_dim)
        self.dtype = dtype

        def zeros(shape, dtype, name):
            return Parameter(initializer("zeros", shape, dtype), name=f"kv{tag}.{name}", requires_grad=False)

        self.k = ms.ParameterTuple([zeros((rows, head_dim), dtype, f"k.{i}") for i in range(num_layers)])
        self.v = ms.ParameterTuple([zeros((rows, head_dim), dtype, f"v.{i}") for i in range(num_layers)])
        self.valid = zeros((batch_size * max_seq_len,), ms.int32, "valid")

    @property
    def nbytes(self) -> int:
        return 2 * len(self.k) * self.k[0].size * self.k[0].itemsize

    def reset(self) -> None:
        """Forget every token (a new sequence); keys/values are overwritten as slots fill."""
        self.valid.set_data(ops.zeros_like(self.valid))

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Keys and values of layer i as [B, Hkv, S, D] (copies)."""
        shape = (self.batch_size, self.num_kv_heads, self.max_seq_len, self.head_dim)
        return self.k[i].reshape(shape), self.v[i].reshape(shape)


class CachedRunner(nn.Cell):
    """The compiled prefill/extend/decode steps of one model over one KVCache.

    `prefill`, `extend` and `decode` are compiled (one graph each per input shape). Inside
    another compiled graph call `run_prefill` / `run` instead (the same steps, uncompiled), so
    that the caller's step is one graph. Get runners from `model.cache_pool`; the model and
    the cache are held outside the Cell tree so their parameters keep their names.
    """

    def __init__(self, model, cache: KVCache):
        super().__init__()
        object.__setattr__(self, "lm", model)
        object.__setattr__(self, "cache", cache)
        self.num_kv_heads = model.config.num_key_value_heads
        self.batch_size = cache.batch_size
        self.max_seq_len = cache.max_seq_len
        self.write = ops.ScatterUpdate()

    def run(self, input_ids, mask, start):
        """Tokens [B, C] (mask 1/0 [B, C]) at cache slots start..start+C-1 -> hidden [B, C, hidden] fp32.

        Positions continue from each row's count of real tokens before `start`. Graph-safe.
        """
        b, c, s = self.batch_size, input_ids.shape[1], self.max_seq_len
        slot_idx = ops.arange(0, s, 1, dtype=ms.int32)
        valid = self.cache.valid.reshape(b, s)
        before = (valid * (slot_idx < start).astype(ms.int32)).sum(1).astype(ms.int32)
        positions = before.reshape(b, 1) + ops.maximum(ops.cumsum(mask, 1) - 1, 0)
        new_slots = start + ops.arange(0, c, 1, dtype=ms.int32)  # [C]
        batch = ops.arange(0, b, 1, dtype=ms.int32)
        valid_rows = (batch.reshape(b, 1) * s + new_slots.reshape(1, c)).reshape(-1)
        valid = self.write(self.cache.valid, valid_rows, mask.reshape(-1)).reshape(b, s)
        heads = ops.arange(0, b * self.num_kv_heads, 1, dtype=ms.int32)
        kv_rows = (heads.reshape(-1, 1) * s + new_slots.reshape(1, c)).reshape(-1)
        h = self.lm.model(input_ids, mask_spec(new_slots, valid), positions,
                          (self.cache.k, self.cache.v, kv_rows))
        return h.astype(ms.float32)

    def run_prefill(self, input_ids, attention_mask):
        """A new sequence in slots 0..L-1 -> the last position's hidden state [B, hidden]. Graph-safe."""
        ops.assign(self.cache.valid, ops.zeros_like(self.cache.valid))
        return self.run(input_ids, attention_mask.astype(ms.int32), 0)[:, -1]

    def run_decode(self, tokens, slot):
        """One token per row [B] at cache slot `slot` -> [B, hidden]. Graph-safe."""
        ids = tokens.reshape(-1, 1)
        return self.run(ids, ops.ones_like(ids), slot)[:, 0]

    @ms.jit
    def prefill(self, input_ids, attention_mask):
        return self.run_prefill(input_ids, attention_mask)

    @ms.jit
    def extend(self, input_ids, attention_mask, start):
        return self.run(input_ids, attention_mask.astype(ms.int32), start)

    @ms.jit
    def decode(self, tokens, slot):
        return self.run_decode(tokens, slot)


class CachePool:
    """The caches of one model with their runners, kept by (role, batch, length) for reuse.

    `runner(batch, length, role)` returns a kept runner of that size or makes one; `evict`
    drops the least recently used beyond `keep_bytes`, sparing those named. A role keeps
    callers apart (emu3-decoding's unbatched guidance needs two caches of one size).
    """

    def __init__(self, model, keep_bytes: int = KEEP_CACHE_BYTES):
        self.model = model
        self.keep_bytes = int(keep_bytes)
        self._runners: OrderedDict = OrderedDict()

    def runner(self, batch: int, length: int, role: str = "main", exclusive: bool = False) -> CachedRunner:
        """A runner over a cache of `batch` rows and `length` slots (most recently used now).
        exclusive: first drop this role's runners of other sizes (frees their memory before
        the new cache is allocated)."""
        if batch < 1 or length < 1:
            raise ValueError(f"a cache needs positive batch and length, got {batch}, {length}")
        model = self.model
        key = (role, int(batch), int(length), model.dtype)
        if exclusive:
            for k in [k for k in self._runners if k[0] == role and k != key]:
                del self._runners[k]
        r = self._runners.pop(key, None)
        if r is None:
            c = model.config
            r = CachedRunner(model, KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, length,
                                            c.head_dim, model.dtype))
        self._runners[key] = r
        return r

    def evict(self, keep=()) -> None:
        """Drop least recently used runners, except `keep`, until the rest fit `keep_bytes`."""
        extra = [k for k, r in self._runners.items() if not any(r is x for x in keep)]
        while extra and sum(self._runners[k].cache.nbytes for k in extra) > self.keep_bytes:
            del self._runners[extra.pop(0)]

    def clear(self) -> None:
        self._runners.clear()

    def holds(self, runner) -> bool:
        return any(r is runner for r in self._runners.values())

    def __len__(self) -> int:
        return len(self._runners)
