"""The Emu3 causal language model on MindSpore: a Llama-style decoder with a static KV cache.

Architecture as in BAAI's `emu3/mllm/modeling_emu3.py`: grouped-query attention, RoPE
(theta, optional linear or dynamic-NTK scaling), RMSNorm computed in fp32, SwiGLU MLP, no
biases, an lm_head separate from the embedding. Dropout with p = attention_dropout on the
embeddings, the attention weights and both residual branches, in training only.
Parameter names are the original checkpoint's keys (`model.layers.N.self_attn.q_proj.weight`,
`lm_head.weight`, ...), so loading is a literal key table (see checkpoint.py).

Positions come from the attention mask (cumsum - 1), so left padding changes nothing for the
real tokens. Decoding runs over a preallocated cache (`setup_cache`, `prefill`, `decode_step`,
`extend`), each step compiled once with `@ms.jit`, new keys/values written into the cache in place.
"""

from __future__ import annotations

import itertools

import mindspore as ms
import numpy as np
from emu3_vq import device
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from .attention import make_attention
from .config import Emu3LMConfig


def _weight(shape, dtype, std: float | None) -> Parameter:
    """A parameter named `weight`: normal(0, std), ones (std None: norms) or zeros (std 0: to be loaded)."""
    if std is None:
        init = "ones"
    elif std == 0:
        init = "zeros"  # untouched zero pages cost no memory until a checkpoint fills them
    else:
        init = Normal(sigma=std)
    return Parameter(initializer(init, shape, dtype), name="weight")


class Emu3Linear(nn.Cell):
    """y = x W^T without bias; weight [out_features, in_features] as stored in the checkpoint."""

    def __init__(self, in_features: int, out_features: int, dtype, std: float):
        super().__init__()
        self.out_features = out_features
        self.weight = _weight((out_features, in_features), dtype, std)
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        return y.reshape(shape[:-1] + (self.out_features,))


class Emu3Head(nn.Cell):
    """lm_head: logits = x W^T, with W [vocab, hidden] in checkpoints.

    transposed=True holds W^T [hidden, vocab] instead (the default on CPU): MindSpore 2.10's CPU
    MatMul with transpose_b over the 184622 vocabulary rows runs at a third of the memory
    bandwidth, while the same product from W^T is 2.5x faster (hidden 1024: 27 ms vs 10 ms a
    token), and a token's text decode step is mostly this matmul. Checkpoints always hold W:
    `Emu3ForCausalLM.state_dict`/`load_state_dict` and from/save_pretrained turn it.
    """

    def __init__(self, in_features: int, out_features: int, dtype, std: float, transposed: bool):
        super().__init__()
        self.out_features = out_features
        self.transposed = transposed
        self.weight = _weight((in_features, out_features) if transposed else (out_features, in_features),
                              dtype, std)
        self.matmul = ops.MatMul(transpose_b=not transposed)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        return y.reshape(shape[:-1] + (self.out_features,))

    def rows(self, start: int, stop: int) -> Tensor:
        """A copy of W rows [start, stop): [stop - start, hidden], whatever the storage."""
        if self.transposed:
            return self.weight[:, start:stop].T.copy()
        return self.weight[start:stop].copy()


class Emu3Embedding(nn.Cell):
    """Token embedding table [vocab, hidden] named `weight` (the checkpoint's name)."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype, std: float):
        super().__init__()
        self.weight = _weight((vocab_size, hidden_size), dtype, std)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class Emu3RMSNorm(nn.Cell):
    """x / rms(x) computed in fp32, cast back to the input dtype, then scaled by `weight`."""

    def __init__(self, hidden_size: int, eps: float, dtype):
        super().__init__()
        self.eps = eps
        self.weight = _weight((hidden_size,), dtype, None)

    def construct(self, x):
        dtype = x.dtype
        x = x.astype(ms.float32)
        variance = ops.mean(x * x, -1, keep_dims=True)
        x = x * ops.rsqrt(variance + self.eps)
        return self.weight * x.astype(dtype)


class Emu3RotaryEmbedding(nn.Cell):
    """cos/sin of the RoPE angles for integer positions [B, L] -> two [B, L, head_dim] fp32 tensors.

    'linear' divides the frequencies by the factor. 'dynamic' (NTK) raises the base once the
    longest position in the call exceeds max_position_embeddings, recomputed each call from
    the positions as transformers does; keys already in a cache keep the angles they got.
    """

    def __init__(self, config: Emu3LMConfig):
        super().__init__()
        dim = config.head_dim
        self.dim = dim
        self.base = float(config.rope_theta)
        self.max_positions = config.max_position_embeddings
        scaling = config.rope_scaling or {}
        self.dynamic = scaling.get("type") == "dynamic"
        self.factor = float(scaling.get("factor", 1.0))
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        inv_freq = 1.0 / (np.float32(self.base) ** exponents)
        if scaling.get("type") == "linear":
            inv_freq = inv_freq / np.float32(self.factor)
        self.inv_freq = Tensor(inv_freq.astype(np.float32))
        self.exponents = Tensor(exponents)

    def construct(self, positions):
        inv_freq = self.inv_freq
        if self.dynamic:
            seq_len = ops.maximum(positions.max() + 1, self.max_positions).astype(ms.float32)
            ratio = self.factor * seq_len / self.max_positions - (self.factor - 1)
            base = self.base * ratio ** (self.dim / (self.dim - 2))
            inv_freq = 1.0 / ops.pow(base, self.exponents)
        freqs = positions.astype(ms.float32).expand_dims(-1) * inv_freq
        angles = ops.concat((freqs, freqs), -1)
        return ops.cos(angles), ops.sin(angles)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return ops.concat((-x[..., half:], x[..., :half]), -1)


def _apply_rope(x, cos, sin):
    """x [B, heads, L, D]; cos/sin [B, L, D] (fp32, cast to x's dtype as the references do)."""
    cos = cos.expand_dims(1).astype(x.dtype)
    sin = sin.expand_dims(1).astype(x.dtype)
    return x * cos + _rotate_half(x) * sin


class Emu3Attention(nn.Cell):
    def __init__(self, config: Emu3LMConfig, dtype, std: float):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = d
        self.q_proj = Emu3Linear(h, self.num_heads * d, dtype, std)
        self.k_proj = Emu3Linear(h, self.num_kv_heads * d, dtype, std)
        self.v_proj = Emu3Linear(h, self.num_kv_heads * d, dtype, std)
        self.o_proj = Emu3Linear(self.num_heads * d, h, dtype, std)
        self.core = make_attention(self.num_heads, self.num_kv_heads, d, config.attention_dropout,
                                   config.attn_implementation)
        self.write = ops.ScatterUpdate()

    def _qkv(self, x, cos, sin):
        b, n = x.shape[0], x.shape[1]
        q = self.q_proj(x).reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        return _apply_rope(q, cos, sin), _apply_rope(k, cos, sin), v

    def construct(self, x, cos, sin, allowed):
        """Self-attention over x [B, L, hidden]; allowed bool [B, L, L]."""
        q, k, v = self._qkv(x, cos, sin)
        return self.o_proj(self.core(q, k, v, allowed))

    def forward_cached(self, x, cos, sin, allowed, k_cache, v_cache, rows):
        """Write this call's keys/values into the cache rows `rows`, then attend over the whole cache.

        k_cache, v_cache: [B*Hkv*S, D] parameters (row (b*Hkv + h)*S + slot); rows: int32
        [B*Hkv*L] in (b, h, l) order; allowed: bool [B, L, S].
        """
        q, k, v = self._qkv(x, cos, sin)
        b, d = x.shape[0], self.head_dim
        slots = k_cache.shape[0] // (b * self.num_kv_heads)
        # ScatterUpdate along the first axis writes in place (slice assignment would rebuild the
        # cache). The reshape for the batched matmuls still copies the layer's cache once per step
        # in MindSpore 2.10 on CPU (profiled; so did every other arrangement tried), which is what
        # makes a step at 8k slots slower than at 512.
        k_all = self.write(k_cache, rows, k.reshape(-1, d)).reshape(b, self.num_kv_heads, slots, d)
        v_all = self.write(v_cache, rows, v.reshape(-1, d)).reshape(b, self.num_kv_heads, slots, d)
        return self.o_proj(self.core(q, k_all, v_all, allowed))


class Emu3MLP(nn.Cell):
    def __init__(self, config: Emu3LMConfig, dtype, std: float):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = Emu3Linear(h, i, dtype, std)
        self.up_proj = Emu3Linear(h, i, dtype, std)
        self.down_proj = Emu3Linear(i, h, dtype, std)

    def construct(self, x):
        return self.down_proj(ops.silu(self.gate_proj(x)) * self.up_proj(x))


class Emu3DecoderLayer(nn.Cell):
    def __init__(self, config: Emu3LMConfig, dtype, std: float):
        super().__init__()
        self.dropout = config.attention_dropout
        self.self_attn = Emu3Attention(config, dtype, std)
        self.mlp = Emu3MLP(config, dtype, std)
        self.input_layernorm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def _drop(self, x):
        if self.training and self.dropout > 0:
            return ops.dropout(x, p=self.dropout, training=True)
        return x

    def _mlp_block(self, h):
        return h + self._drop(self.mlp(self.post_attention_layernorm(h)))

    def construct(self, h, cos, sin, allowed):
        h = h + self._drop(self.self_attn(self.input_layernorm(h), cos, sin, allowed))
        return self._mlp_block(h)

    def forward_cached(self, h, cos, sin, allowed, k_cache, v_cache, rows):
        a = self.self_attn.forward_cached(self.input_layernorm(h), cos, sin, allowed, k_cache, v_cache, rows)
        return self._mlp_block(h + self._drop(a))


class Emu3Model(nn.Cell):
    """Embedding, decoder layers and final norm: input ids -> normalised hidden states."""

    def __init__(self, config: Emu3LMConfig, dtype, std: float):
        super().__init__()
        self.dropout = config.attention_dropout
        self.embed_tokens = Emu3Embedding(config.vocab_size, config.hidden_size, dtype, std)
        self.layers = nn.CellList(
            [Emu3DecoderLayer(config, dtype, std) for _ in range(config.num_hidden_layers)])
        self.norm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary_emb = Emu3RotaryEmbedding(config)

    def embed(self, ids):
        h = self.embed_tokens(ids)
        if self.training and self.dropout > 0:  # the original drops the embeddings too
            h = ops.dropout(h, p=self.dropout, training=True)
        return h

    @ms.jit
    def construct(self, input_ids, attention_mask=None):
        """input_ids int32 [B, L], attention_mask 1/0 [B, L] -> hidden states [B, L, hidden]."""
        if attention_mask is None:
            attention_mask = ops.ones_like(input_ids)
        mask = attention_mask.astype(ms.int32)
        n = input_ids.shape[1]
        positions = ops.maximum(ops.cumsum(mask, 1) - 1, 0)
        idx = ops.arange(0, n, 1, dtype=ms.int32)
        causal = idx.reshape(1, n, 1) >= idx.reshape(1, 1, n)
        # a query sees earlier real tokens; padding queries see themselves (no empty rows)
        allowed = ops.logical_or(ops.logical_and(causal, mask.reshape(-1, 1, n) > 0),
                                 idx.reshape(1, n, 1) == idx.reshape(1, 1, n))
        h = self.embed(input_ids)
        cos, sin = self.rotary_emb(positions)
        for layer in self.layers:
            h = layer(h, cos, sin, allowed)
        return self.norm(h)


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

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Keys and values of layer i as [B, Hkv, S, D] (copies)."""
        shape = (self.batch_size, self.num_kv_heads, self.max_seq_len, self.head_dim)
        return self.k[i].reshape(shape), self.v[i].reshape(shape)


class CachedRunner(nn.Cell):
    """The compiled prefill/extend/decode steps of one model over one KVCache.

    Public so that a caller can own several caches (e.g. the unbatched guidance branch of
    emu3-decoding) and call `prefill`/`decode` from inside its own compiled graph, making a whole
    decode step one graph: `CachedRunner(model, KVCache(...))`. `model.setup_cache` is the
    simple path, one cache per model. A new cache (other batch size or length) gets a new runner, hence fresh compiled graphs;
    the model and the cache are held outside the Cell tree so their parameters keep their names.
    """

    def __init__(self, model: "Emu3ForCausalLM", cache: KVCache):
        super().__init__()
        object.__setattr__(self, "lm", model)
        object.__setattr__(self, "cache", cache)
        self.num_layers = model.config.num_hidden_layers
        self.num_kv_heads = model.config.num_key_value_heads
        self.batch_size = cache.batch_size
        self.max_seq_len = cache.max_seq_len
        self.write = ops.ScatterUpdate()

    def _extend(self, input_ids, mask, start):
        """Run tokens [B, C] (mask [B, C]) at cache slots start..start+C-1 -> hidden [B, C, hidden] fp32."""
        b, c, s = self.batch_size, input_ids.shape[1], self.max_seq_len
        slot_idx = ops.arange(0, s, 1, dtype=ms.int32)
        valid = self.cache.valid.reshape(b, s)
        # each row continues from its own count of real tokens
        before = (valid * (slot_idx < start).astype(ms.int32)).sum(1).astype(ms.int32)
        positions = before.reshape(b, 1) + ops.maximum(ops.cumsum(mask, 1) - 1, 0)
        new_slots = start + ops.arange(0, c, 1, dtype=ms.int32)  # [C]
        batch = ops.arange(0, b, 1, dtype=ms.int32)
        valid_rows = (batch.reshape(b, 1) * s + new_slots.reshape(1, c)).reshape(-1)
        valid = self.write(self.cache.valid, valid_rows, mask.reshape(-1)).reshape(b, 1, s)
        # a token sees the real tokens up to its own slot; padding sees itself (no empty softmax rows)
        query_slot = new_slots.reshape(1, c, 1)
        allowed = ops.logical_or(ops.logical_and(valid > 0, slot_idx.reshape(1, 1, s) <= query_slot),
                                 slot_idx.reshape(1, 1, s) == query_slot)
        heads = ops.arange(0, b * self.num_kv_heads, 1, dtype=ms.int32)
        kv_rows = (heads.reshape(-1, 1) * s + new_slots.reshape(1, c)).reshape(-1)

        model = self.lm.model
        h = model.embed(input_ids)
        cos, sin = model.rotary_emb(positions)
        k, v = self.cache.k, self.cache.v
        for i in range(self.num_layers):
            h = model.layers[i].forward_cached(h, cos, sin, allowed, k[i], v[i], kv_rows)
        return model.norm(h).astype(ms.float32)

    @ms.jit
    def prefill(self, input_ids, attention_mask):
        ops.assign(self.cache.valid, ops.zeros_like(self.cache.valid))  # a new sequence
        h = self._extend(input_ids, attention_mask.astype(ms.int32), 0)
        return h[:, -1]

    @ms.jit
    def extend(self, input_ids, attention_mask, start):
        return self._extend(input_ids, attention_mask.astype(ms.int32), start)

    @ms.jit
    def decode(self, tokens, slot):
        ids = tokens.reshape(-1, 1)
        h = self._extend(ids, ops.ones_like(ids), slot)
        return h[:, 0]


def _as_int_tensor(x, name: str) -> Tensor:
    """An int32 Tensor from a Tensor, array or int; float input is an error, not silently truncated."""
    if isinstance(x, Tensor):
        if x.dtype in (ms.float16, ms.float32, ms.float64, ms.bfloat16):
            raise ValueError(f"{name} must be integer, got {x.dtype}")
        return x if x.dtype == ms.int32 else x.astype(ms.int32)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must be integer, got {arr.dtype}")
    return Tensor(arr.astype(np.int32))


class Emu3ForCausalLM(nn.Cell):
    """Emu3's language model: `model` (Emu3Model) and `lm_head` (untied), MindSpore Cell.

    Args:
        config: the architecture.
        dtype: parameter/compute dtype; default `emu3_vq.device.default_dtype()` (fp32 on CPU,
            fp16 on GPU, bf16 on Ascend).
        init_weights: draw fresh normal(0, initializer_range) weights; False leaves them zero
            (cheap) for a checkpoint to fill, as `from_pretrained` does.
    """

    def __init__(self, config: Emu3LMConfig, dtype=None, init_weights: bool = True,
                 transposed_head: bool | None = None):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.dtype = device.default_dtype() if dtype is None else dtype
        std = config.initializer_range if init_weights else 0.0
        self.model = Emu3Model(config, self.dtype, std)
        transposed = device.is_cpu() if transposed_head is None else bool(transposed_head)
        self.lm_head = Emu3Head(config.hidden_size, config.vocab_size, self.dtype, std, transposed)
        self.slice_matmul = ops.MatMul(transpose_b=not transposed)  # for lm_head rows [start, stop)
        object.__setattr__(self, "_runner", None)

    # ---- weights in checkpoint orientation -------------------------------------------------
    def _stored_transposed(self) -> frozenset[str]:
        """Parameter names held transposed relative to the checkpoint."""
        return frozenset({"lm_head.weight"}) if self.lm_head.transposed else frozenset()

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape as a checkpoint holds it ([vocab, hidden] for lm_head.weight)."""
        turned = self._stored_transposed()
        return {name: tuple(p.shape)[::-1] if name in turned else tuple(p.shape)
                for name, p in self.parameters_and_names()}

    def to_checkpoint(self, name: str, array: np.ndarray) -> np.ndarray:
        """A parameter's array (as stored here) in checkpoint orientation."""
        return np.ascontiguousarray(array.T) if name in self._stored_transposed() else array

    def from_checkpoint(self, name: str, array: np.ndarray) -> np.ndarray:
        """A checkpoint array in the orientation this model stores it (views keep their type,
        e.g. emu3_vq.weights.BF16Bits)."""
        if name in self._stored_transposed():
            return np.ascontiguousarray(array.T).view(type(array))
        return array

    def checkpoint_arrays(self):
        """(name, array) in checkpoint orientation, bf16 as float32; arrays may share the
        parameters' memory (for writing files without a second copy of the model)."""
        for name, param in self.parameters_and_names():
            value = param.astype(ms.float32) if param.dtype == ms.bfloat16 else param
            yield name, self.to_checkpoint(name, value.asnumpy())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter name -> numpy copy in checkpoint orientation (bf16 parameters as float32)."""
        return {name: np.array(arr) for name, arr in self.checkpoint_arrays()}

    def load_state_dict(self, arrays) -> None:
        """Assign checkpoint-oriented arrays (a mapping or (name, array) pairs) strictly: missing,
        unexpected or misshapen names raise emu3_vq.weights.CheckpointError naming them."""
        from emu3_vq.weights import load_into

        if hasattr(arrays, "items"):
            expected = {name: np.shape(a) for name, a in arrays.items()}
            arrays = arrays.items()
        else:
            expected = None
        turned = self._stored_transposed()
        if expected is not None:
            expected = {n: tuple(s)[::-1] if n in turned else s for n, s in expected.items()}
        load_into(self, ((n, self.from_checkpoint(n, a)) for n, a in arrays), what="state dict",
                  expected_names=expected)

    # ---- checkpoints (checkpoint.py) -----------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=None) -> Emu3ForCausalLM:
        """Load a local checkpoint directory (original or -hf layout) or a hub id already in the local
        Hugging Face cache; strict about keys and shapes. dtype: default `emu3_vq.device.default_dtype()`."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, path, dtype)

    def save_pretrained(self, directory, layout: str = "original", max_shard_bytes: int | None = None,
                        dtype=None):
        """Write config.json and safetensors shards in the 'original' or 'hf' layout; returns the files."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory, layout=layout, max_shard_bytes=max_shard_bytes, dtype=dtype)

    # ---- full sequence -------------------------------------------------------------------
    @ms.jit
    def construct(self, input_ids, attention_mask=None):
        """input_ids int32 [B, L], attention_mask 1/0 [B, L] (left padding) -> logits [B, L, V] fp32."""
        return self.lm_head(self.model(input_ids, attention_mask)).astype(ms.float32)

    # ---- static KV cache -----------------------------------------------------------------
    @property
    def cache(self) -> KVCache | None:
        """The KVCache allocated by `setup_cache` (None before)."""
        return None if self._runner is None else self._runner.cache

    def setup_cache(self, batch_size: int, max_seq_len: int) -> KVCache:
        """Allocate (or reuse, when the size is unchanged) the cache for batch_size rows of max_seq_len slots.

        Every new size compiles the steps anew (seconds), and MindSpore keeps each compiled graph with
        its working memory for the life of the process; so keep one size (e.g. prompt bound + longest
        output) rather than sizing the cache to each request. Likewise each distinct prompt length
        compiles `prefill` once: left-padding prompts to a few bucket lengths changes no result.
        """
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be positive, got {batch_size}, {max_seq_len}")
        old = self.cache
        if old is not None and (old.batch_size, old.max_seq_len, old.dtype) == (
                batch_size, max_seq_len, self.dtype):
            old.valid.set_data(ops.zeros_like(old.valid))
            return old
        object.__setattr__(self, "_runner", None)  # free the old cache first
        c = self.config
        cache = KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_seq_len, c.head_dim,
                        self.dtype)
        object.__setattr__(self, "_runner", CachedRunner(self, cache))
        return cache

    def _check_tokens(self, input_ids, attention_mask, start: int):
        if self._runner is None:
            raise RuntimeError("call setup_cache(batch_size, max_seq_len) before prefill/extend/decode_step")
        cache = self.cache
        if len(input_ids.shape) != 2 or input_ids.shape[0] != cache.batch_size:
            raise ValueError(f"input_ids must be [{cache.batch_size}, L] (the cache's batch size), "
                             f"got {tuple(input_ids.shape)}")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                             f"{tuple(input_ids.shape)}")
        n = input_ids.shape[1]
        if start + n > cache.max_seq_len:
            raise ValueError(f"{n} tokens at slot {start} do not fit the cache of {cache.max_seq_len} slots; "
                             f"call setup_cache with a larger max_seq_len")

    def prefill(self, input_ids, attention_mask=None) -> Tensor:
        """Start a sequence: fill cache slots 0..L-1 with the prompt and return the last hidden state.

        input_ids int32 [B, L], attention_mask 1/0 [B, L] (left padding). Returns [B, hidden] fp32,
        after the final norm (feed it to `logits`).
        """
        input_ids = _as_int_tensor(input_ids, "input_ids")
        attention_mask = ops.ones_like(input_ids) if attention_mask is None else _as_int_tensor(
            attention_mask, "attention_mask")
        self._check_tokens(input_ids, attention_mask, 0)
        if (np.diff(attention_mask.asnumpy(), axis=1) < 0).any():
            raise ValueError("prefill needs left padding: each attention_mask row must be 0...0 1...1")
        return self._runner.prefill(input_ids, attention_mask)

    def extend(self, input_ids, attention_mask, start) -> Tensor:
        """Append tokens [B, C] at cache slots start..start+C-1 (chunked prefill, several tokens at once).

        Positions continue from each row's count of real tokens before `start`; tokens with mask 0
        are never attended to later. Returns hidden states [B, C, hidden] fp32.
        """
        input_ids = _as_int_tensor(input_ids, "input_ids")
        attention_mask = _as_int_tensor(attention_mask, "attention_mask")
        start = _as_int_tensor(start, "start")
        self._check_tokens(input_ids, attention_mask, int(start.asnumpy()))
        return self._runner.extend(input_ids, attention_mask, start)

    def decode_step(self, tokens, slot) -> Tensor:
        """One token per row: tokens int32 [B], written at cache slot `slot` (int32 scalar Tensor).

        Returns [B, hidden] fp32. Compiled once per cache and reused for every step.
        """
        if self._runner is None:
            raise RuntimeError("call setup_cache(batch_size, max_seq_len) and prefill before decode_step")
        tokens = _as_int_tensor(tokens, "tokens")
        slot = _as_int_tensor(slot, "slot")
        cache = self.cache
        if tuple(tokens.shape) != (cache.batch_size,):
            raise ValueError(f"tokens must be [{cache.batch_size}], got {tuple(tokens.shape)}")
        if not isinstance(slot, Tensor) or slot.shape != ():
            raise ValueError(f"slot must be a scalar, got shape {slot.shape}")
        value = int(slot.asnumpy())
        if not 0 <= value < cache.max_seq_len:
            raise ValueError(f"slot {value} is outside the cache of {cache.max_seq_len} slots")
        return self._runner.decode(tokens, slot)

    # ---- output head ---------------------------------------------------------------------
    def logits(self, h, start: int = 0, stop: int | None = None) -> Tensor:
        """h [..., hidden] -> logits [..., stop-start] fp32 from lm_head rows [start, stop) only."""
        vocab = self.config.vocab_size
        stop = vocab if stop is None else int(stop)
        start = int(start)
        if not 0 <= start < stop <= vocab:
            raise ValueError(f"need 0 <= start < stop <= vocab_size {vocab}, got start={start}, stop={stop}")
        return self._logits(h, start, stop)

    @ms.jit
    def _logits(self, h, start, stop):
        head = self.lm_head
        w = head.weight
        shape = h.shape
        x = h.reshape(-1, shape[-1]).astype(w.dtype)
        if start == 0 and stop == self.vocab_size:
            out = head.matmul(x, w)
        elif head.transposed:
            out = self.slice_matmul(x, w[:, start:stop])
        else:
            out = self.slice_matmul(x, w[start:stop])
        return out.astype(ms.float32).reshape(shape[:-1] + (stop - start,))
