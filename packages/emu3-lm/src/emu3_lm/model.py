"""The Emu3 causal language model on MindSpore: a Llama-style decoder.

Architecture as in BAAI's `emu3/mllm/modeling_emu3.py`: grouped-query attention, RoPE
(theta, optional linear or dynamic-NTK scaling), RMSNorm computed in fp32, SwiGLU MLP, no
biases, an lm_head separate from the embedding. Dropout with p = attention_dropout on the
embeddings, the attention weights and both residual branches, in training only (`set_train`).
Parameter names and shapes are the original checkpoint's (`model.layers.N.self_attn.q_proj.weight`,
`lm_head.weight` [vocab, hidden], ...) on every device, so loading is a literal key table
(see checkpoint.py) and a parameter means the same thing to every process and device.

One path through the layers, `Emu3Model.construct(input_ids, mask, positions, kv=None)`,
serves training (`Emu3ForCausalLM.loss`), the full forward (`__call__`) and cached decoding
(`cache.CachedRunner`, which passes the cache). Nothing here is compiled by itself: callers
compile at their call site (the runner's steps, emu3-decoding's step graphs, a train step).
Positions default to the attention mask's count of real tokens (cumsum - 1), so left padding
changes nothing for the real tokens; callers may pass `position_ids` (packed samples,
sequence-parallel offsets).
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from emu3_vq import device
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from .attention import make_attention, mask_spec, slots
from .config import Emu3LMConfig
from .loss import IGNORE_INDEX, HeadCrossEntropy, chunk_tokens


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


def embed(weight, ids, pad_id=None):
    """Rows `ids` of the table `weight`. The row of `pad_id` gets no gradient, as in the references
    (`nn.Embedding(vocab, hidden, padding_idx=pad)`): where a pad token is an input, its value is
    the row's, its gradient zero."""
    out = ops.gather(weight, ids, 0)
    if pad_id is None:
        return out
    return ops.where((ids == pad_id).expand_dims(-1), ops.stop_gradient(out), out)


def rms_norm(x, weight, eps: float):
    """x / rms(x) computed in fp32, cast back to the input dtype, then scaled by `weight`."""
    dtype = x.dtype
    x = x.astype(ms.float32)
    variance = ops.mean(x * x, -1, keep_dims=True)
    x = x * ops.rsqrt(variance + eps)
    return weight * x.astype(dtype)


class Emu3Embedding(nn.Cell):
    """Token embedding table [vocab, hidden] named `weight` (the checkpoint's name); see `embed`."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype, std: float, pad_id: int | None = None):
        super().__init__()
        self.pad_id = pad_id
        self.weight = _weight((vocab_size, hidden_size), dtype, std)

    def construct(self, ids):
        return embed(self.weight, ids, self.pad_id)


class Emu3RMSNorm(nn.Cell):
    """RMSNorm with its `weight` (see `rms_norm`)."""

    def __init__(self, hidden_size: int, eps: float, dtype):
        super().__init__()
        self.eps = eps
        self.weight = _weight((hidden_size,), dtype, None)

    def construct(self, x):
        return rms_norm(x, self.weight, self.eps)


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

    def construct(self, x, cos, sin, mask, kv=None):
        """Self-attention over x [B, L, hidden].

        kv None: the keys are this call's own tokens. kv (k_cache, v_cache, rows): the layer's
        cache, [B*Hkv*S, D] parameters (row (b*Hkv + h)*S + slot), and the int32 rows [B*Hkv*L]
        ((b, h, l) order) where this call's keys/values are written before attending over all S.
        """
        b, n, d = x.shape[0], x.shape[1], self.head_dim
        q = self.q_proj(x).reshape(b, n, self.num_heads, d).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(b, n, self.num_kv_heads, d).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, n, self.num_kv_heads, d).transpose(0, 2, 1, 3)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if kv is not None:
            k_cache, v_cache, rows = kv
            slots = k_cache.shape[0] // (b * self.num_kv_heads)
            # ScatterUpdate along the first axis writes in place (slice assignment would rebuild the
            # cache). The reshape for the batched matmuls still copies the layer's cache once per step
            # in MindSpore 2.10 on CPU (profiled; so did every other arrangement tried), which is what
            # makes a step at 8k slots slower than at 512.
            k = self.write(k_cache, rows, k.reshape(-1, d)).reshape(b, self.num_kv_heads, slots, d)
            v = self.write(v_cache, rows, v.reshape(-1, d)).reshape(b, self.num_kv_heads, slots, d)
        return self.o_proj(self.core(q, k, v, mask))


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
    """Pre-norm attention and MLP blocks with residuals. A Cell of its own, so that
    `layer.recompute()` trades its activations for a second forward in the backward."""

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

    def construct(self, h, cos, sin, mask, kv=None):
        h = h + self._drop(self.self_attn(self.input_layernorm(h), cos, sin, mask, kv))
        return h + self._drop(self.mlp(self.post_attention_layernorm(h)))


class Emu3Model(nn.Cell):
    """Embedding, decoder layers and final norm: input ids -> normalised hidden states."""

    def __init__(self, config: Emu3LMConfig, dtype, std: float):
        super().__init__()
        self.dropout = config.attention_dropout
        self.num_layers = config.num_hidden_layers
        self.embed_tokens = Emu3Embedding(config.vocab_size, config.hidden_size, dtype, std,
                                          pad_id=config.pad_token_id)
        self.layers = nn.CellList(
            [Emu3DecoderLayer(config, dtype, std) for _ in range(config.num_hidden_layers)])
        self.norm = Emu3RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary_emb = Emu3RotaryEmbedding(config)

    def construct(self, input_ids, mask, positions, kv=None):
        """The one path through the layers: input_ids int32 [B, L], a mask description (attention.mask_spec), int32
        positions [B, L] -> hidden states [B, L, hidden] after the final norm.

        kv None (training, full forward), or (k_caches, v_caches, rows): every layer's cache
        and the rows this call's keys/values go to (see Emu3Attention; cache.CachedRunner).
        """
        h = self.embed_tokens(input_ids)
        if self.training and self.dropout > 0:  # the original drops the embeddings too
            h = ops.dropout(h, p=self.dropout, training=True)
        cos, sin = self.rotary_emb(positions)
        for i in range(self.num_layers):
            layer_kv = None if kv is None else (kv[0][i], kv[1][i], kv[2])
            h = self.layers[i](h, cos, sin, mask, layer_kv)
        return self.norm(h)


def sequence_inputs(input_ids, attention_mask=None, position_ids=None, segment_ids=None):
    """The mask description and positions of a whole sequence (no cache); graph-safe.

    attention_mask 1/0 [B, L] (None: all real); position_ids [B, L] (None: each row's count of
    real tokens so far, cumsum - 1, so left padding shifts nothing); segment_ids [B, L] for
    packed samples (a token attends within its segment; pass position_ids that restart too).
    """
    n = input_ids.shape[1]
    valid = ops.ones_like(input_ids) if attention_mask is None else attention_mask.astype(ms.int32)
    if position_ids is None:
        positions = ops.maximum(ops.cumsum(valid, 1) - 1, 0)
    else:
        positions = position_ids.astype(ms.int32)
    segments = None if segment_ids is None else segment_ids.astype(ms.int32)
    return mask_spec(slots(n), valid, segments), positions


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
        dtype: parameter/compute dtype; default `emu3_vq.device.policy().dtype` (fp32 on CPU,
            fp16 on GPU, bf16 on Ascend).
        init_weights: draw fresh normal(0, initializer_range) weights; False leaves them zero
            (cheap) for a checkpoint to fill, as `from_pretrained` does.

    Training: `loss(input_ids, labels, ...)` under `mindspore.value_and_grad`; `set_train(True)`
    turns dropout on; `layer.recompute()` on `model.layers[i]` recomputes a layer in the backward.
    Inference: `__call__` gives full-sequence logits; `setup_cache`/`prefill`/`extend`/
    `decode_step` run over a static KV cache (cache.py); `logits(h, start, stop)` a head slice.
    """

    def __init__(self, config: Emu3LMConfig, dtype=None, init_weights: bool = True):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.dtype = device.policy().dtype if dtype is None else dtype
        std = config.initializer_range if init_weights else 0.0
        self.model = Emu3Model(config, self.dtype, std)
        self.lm_head = Emu3Linear(config.hidden_size, config.vocab_size, self.dtype, std)
        self.slice_matmul = ops.MatMul(transpose_b=True)  # h W[start:stop]^T
        self.head_loss = HeadCrossEntropy(chunk_tokens(config.vocab_size))
        object.__setattr__(self, "_pool", None)
        object.__setattr__(self, "_runner", None)

    # ---- weights in checkpoint orientation -------------------------------------------------
    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape, as a checkpoint holds it (the parameters' own shapes)."""
        return {name: tuple(p.shape) for name, p in self.parameters_and_names()}

    def checkpoint_arrays(self):
        """(name, array), bf16 as float32; arrays may share the parameters' memory (for writing
        files without a second copy of the model)."""
        for name, param in self.parameters_and_names():
            value = param.astype(ms.float32) if param.dtype == ms.bfloat16 else param
            yield name, value.asnumpy()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter name -> numpy copy (bf16 parameters as float32)."""
        return {name: np.array(arr) for name, arr in self.checkpoint_arrays()}

    def load_state_dict(self, arrays) -> None:
        """Assign arrays (a mapping or (name, array) pairs) strictly: missing, unexpected or
        misshapen names raise emu3_vq.weights.CheckpointError naming them."""
        from emu3_vq.weights import load_into

        expected = None
        if hasattr(arrays, "items"):
            expected = {name: np.shape(a) for name, a in arrays.items()}
            arrays = arrays.items()
        load_into(self, arrays, what="state dict", expected_names=expected)

    # ---- checkpoints (checkpoint.py) -----------------------------------------------------
    @classmethod
    def from_pretrained(cls, path=None, dtype=None, *, revision=None, cache_dir=None,
                        local_files_only: bool = False) -> Emu3ForCausalLM:
        """Load a checkpoint (original or -hf layout) from a local directory or a hub repo id (only
        config.json and the LM's shards are fetched; see emu3_vq.hub); strict about keys and shapes.
        None: the default model (`emu3_vq.defaults`; NoDefaultModel when none is installed).
        dtype: "fp32" | "fp16" | "bf16" or a MindSpore dtype; default `emu3_vq.device.policy().dtype`."""
        from .checkpoint import load_pretrained

        if path is None:
            from emu3_vq.defaults import lm_dir

            path = lm_dir()

        return load_pretrained(cls, path, dtype, revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only)

    def save_pretrained(self, directory, layout: str = "original", max_shard_bytes: int | None = None,
                        dtype=None):
        """Write config.json and safetensors shards in the 'original' or 'hf' layout; returns the files."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory, layout=layout, max_shard_bytes=max_shard_bytes, dtype=dtype)

    # ---- full sequence: logits and loss ----------------------------------------------------
    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, segment_ids=None):
        """input_ids int32 [B, L] -> hidden states [B, L, hidden] after the final norm (see
        `sequence_inputs` for the optional arguments)."""
        mask, positions = sequence_inputs(input_ids, attention_mask, position_ids, segment_ids)
        return self.model(input_ids, mask, positions)

    def construct(self, input_ids, attention_mask=None, position_ids=None, segment_ids=None):
        """input_ids int32 [B, L], attention_mask 1/0 [B, L] -> logits [B, L, V] fp32.

        Not compiled here: wrap the call in `mindspore.jit` where speed matters.
        """
        h = self.hidden_states(input_ids, attention_mask, position_ids, segment_ids)
        return self.lm_head(h).astype(ms.float32)

    def loss(self, input_ids, labels, attention_mask=None, position_ids=None, segment_ids=None):
        """Mean next-token cross-entropy, 0-d fp32, as transformers' `Emu3ForCausalLM(labels=...)`.

        labels int32 [B, L], unshifted (position t is scored on predicting labels[t] from tokens
        before t; the shift happens here), IGNORE_INDEX (-100) where not supervised. The mean is
        over supervised positions (0 when there are none). The head and the loss are computed
        chunk by chunk in fp32 (loss.HeadCrossEntropy): no [B, L, vocab] logits are kept.
        Differentiable with `mindspore.value_and_grad`; compile the step at the call site.
        """
        h = self.hidden_states(input_ids, attention_mask, position_ids, segment_ids)
        b, n, width = h.shape
        h = h[:, :-1].reshape(b * (n - 1), width)
        target = labels[:, 1:].astype(ms.int32).reshape(-1)
        total = self.head_loss(h, self.lm_head.weight, target)
        count = ops.stop_gradient((target != IGNORE_INDEX).astype(ms.float32).sum())
        return total / ops.maximum(count, 1.0)

    # ---- static KV cache (cache.py) ------------------------------------------------------
    @property
    def cache_pool(self):
        """This model's caches and their compiled runners (cache.CachePool), shared by
        `setup_cache` and the decoders."""
        if self._pool is None:
            from .cache import CachePool

            object.__setattr__(self, "_pool", CachePool(self))
        return self._pool

    @property
    def cache(self):
        """The KVCache allocated by `setup_cache` (None before)."""
        return None if self._runner is None else self._runner.cache

    def setup_cache(self, batch_size: int, max_seq_len: int):
        """Allocate (or reuse, when the size is unchanged) the cache for batch_size rows of max_seq_len slots.

        Every new size compiles the steps anew (seconds), and MindSpore keeps each compiled graph with
        its working memory for the life of the process; so keep one size (e.g. prompt bound + longest
        output) rather than sizing the cache to each request. Likewise each distinct prompt length
        compiles `prefill` once: left-padding prompts to a few bucket lengths changes no result.
        """
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be positive, got {batch_size}, {max_seq_len}")
        object.__setattr__(self, "_runner", None)
        runner = self.cache_pool.runner(batch_size, max_seq_len, role="setup_cache", exclusive=True)
        runner.cache.reset()
        object.__setattr__(self, "_runner", runner)
        return runner.cache

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
        w = self.lm_head.weight
        shape = h.shape
        x = h.reshape(-1, shape[-1]).astype(w.dtype)
        out = self.slice_matmul(x, w if start == 0 and stop == self.vocab_size else w[start:stop])
        return out.astype(ms.float32).reshape(shape[:-1] + (stop - start,))
