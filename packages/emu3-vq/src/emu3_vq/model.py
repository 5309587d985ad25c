"""The Emu3 vision tokenizer: a VQ-VAE with temporal 3-D convolutions (MoVQGAN-style decoder).

Written for MindSpore after the architecture of BAAI's `Emu3VisionVQModel`
(baaivision/Emu3, emu3/tokenizer/modeling_emu3visionvq.py) and transformers' `Emu3VQVAE`.
Cell attribute paths equal the keys of the original checkpoint (BAAI/Emu3-VisionTokenizer),
e.g. `encoder.down.0.block.0.norm1.weight`, `decoder.up.3.attn.0.q.weight`,
`encoder.time_res_stack.0.norm1.running_mean`; `checkpoint.py` maps the `-hf` names.

Shapes: images [B, 3, H, W] in [-1, 1] <-> codes [B, H/8, W/8]; videos [B, T, 3, H, W]
(T a multiple of 4) <-> codes [B, T/4, H/8, W/8] (released configuration).
Kernels that depend on the device (convolutions, GroupNorm) come from `kernels.py`.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from emu3_vq import device, kernels
from emu3_vq.config import Emu3VQConfig
from emu3_vq.kernels import Conv2d, Conv3d, GroupNorm

# Largest [rows, codebook] distance matrix the quantizer builds at once, in elements.
QUANT_CHUNK_ELEMENTS = 1 << 24


def silu(x):
    return x * ops.sigmoid(x)


def repeat_nearest(x, fh: int, fw: int):
    """Nearest-neighbour upsampling of [N, C, h, w] by integer factors (copies each pixel)."""
    if fh == 1 and fw == 1:
        return x
    n, c, h, w = x.shape
    x = ops.broadcast_to(x.reshape(n, c, h, 1, w, 1), (n, c, h, fh, w, fw))
    return x.reshape(n, c, h * fh, w * fw)


# ---- normalisation ----------------------------------------------------------------------

class BatchNorm3d(nn.Cell):
    """BatchNorm over [N, C, T, H, W] with torch's parameter names and semantics.

    `running_mean`, `running_var` and `num_batches_tracked` are non-trainable Parameters so
    they load from and save to checkpoints. Eval uses the running statistics; training uses
    the batch statistics and updates the running ones (momentum 0.1, unbiased variance).
    Always computed in fp32.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(Tensor(np.ones(num_features, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(num_features, np.float32)), name="bias")
        self.running_mean = Parameter(Tensor(np.zeros(num_features, np.float32)), name="running_mean",
                                      requires_grad=False)
        self.running_var = Parameter(Tensor(np.ones(num_features, np.float32)), name="running_var",
                                     requires_grad=False)
        self.num_batches_tracked = Parameter(Tensor(0, ms.int64), name="num_batches_tracked",
                                             requires_grad=False)

    def construct(self, x):
        dtype = x.dtype
        x = ops.cast(x, ms.float32)
        c = self.num_features
        if self.training:
            mean = x.mean((0, 2, 3, 4))
            d = x - mean.reshape(1, c, 1, 1, 1)
            var = (d * d).mean((0, 2, 3, 4))
            count = x.size // c
            m = self.momentum
            unbiased = ops.stop_gradient(var) * (count / max(count - 1, 1))
            ops.assign(self.running_mean, self.running_mean * (1 - m) + ops.stop_gradient(mean) * m)
            ops.assign(self.running_var, self.running_var * (1 - m) + unbiased * m)
            ops.assign_add(self.num_batches_tracked, Tensor(1, ms.int64))
            y = d * (ops.rsqrt(var + self.eps) * self.weight).reshape(1, c, 1, 1, 1)
            y = y + self.bias.reshape(1, c, 1, 1, 1)
        else:
            scale = ops.rsqrt(self.running_var + self.eps) * self.weight
            shift = self.bias - self.running_mean * scale
            y = x * scale.reshape(1, c, 1, 1, 1) + shift.reshape(1, c, 1, 1, 1)
        return ops.cast(y, dtype)


class SpatialNorm(nn.Cell):
    """GroupNorm(x) * conv_y(zq') + conv_b(zq'), zq' = zq resized (nearest) to x's size.

    conv_y and conv_b are 1x1, so they are applied at zq's own resolution and the results
    upsampled (identical values, a fraction of the work on the large maps).
    """

    def __init__(self, f_channels: int, zq_channels: int, impl=None, dtype=None):
        super().__init__()
        self.norm_layer = GroupNorm(32, f_channels, eps=1e-6, impl=impl)
        self.conv_y = Conv2d(zq_channels, f_channels, 1, impl=impl, dtype=dtype)
        self.conv_b = Conv2d(zq_channels, f_channels, 1, impl=impl, dtype=dtype)

    def construct(self, x, zq):
        h, w = x.shape[2], x.shape[3]
        zh, zw = zq.shape[2], zq.shape[3]
        if h % zh or w % zw:
            raise ValueError(f"SpatialNorm: map {h}x{w} is not a multiple of the latent {zh}x{zw}")
        # computed from zq alone, the large y and b maps could be scheduled long before they
        # are used (and held in memory meanwhile): tie them to x
        zq = ops.depend(zq, x)
        y = repeat_nearest(self.conv_y(zq), h // zh, w // zw)
        b = repeat_nearest(self.conv_b(zq), h // zh, w // zw)
        return self.norm_layer(x) * y + b


def _norm(channels: int, zq_ch: int | None, impl, dtype):
    if zq_ch is None:
        return GroupNorm(32, channels, eps=1e-6, impl=impl)
    return SpatialNorm(channels, zq_ch, impl=impl, dtype=dtype)


# ---- 2-D blocks -------------------------------------------------------------------------

class ResnetBlock(nn.Cell):
    """norm, SiLU, conv3x3, norm, SiLU, (dropout), conv3x3, plus a (1x1) shortcut.

    With `zq_ch` the norms are SpatialNorms conditioned on the latent (decoder)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, zq_ch: int | None = None,
                 impl=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.spatial = zq_ch is not None
        self.norm1 = _norm(in_channels, zq_ch, impl, dtype)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, impl=impl, dtype=dtype)
        self.norm2 = _norm(out_channels, zq_ch, impl, dtype)
        self.use_dropout = dropout > 0
        if self.use_dropout:
            self.dropout = nn.Dropout(p=dropout)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, impl=impl, dtype=dtype)
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.nin_shortcut = Conv2d(in_channels, out_channels, 1, impl=impl, dtype=dtype)

    def construct(self, x, zq=None):
        h = self.norm1(x, zq) if self.spatial else self.norm1(x)
        h = self.conv1(silu(h))
        h = self.norm2(h, zq) if self.spatial else self.norm2(h)
        h = silu(h)
        if self.use_dropout:
            h = self.dropout(h)
        h = self.conv2(h)
        if self.has_shortcut:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Cell):
    """Single-head self-attention over the pixels of a map, scale C^-1/2, residual.

    q, k, v, proj_out are 1x1 convolutions ([C, C, 1, 1] weights, as in the checkpoint)."""

    def __init__(self, channels: int, zq_ch: int | None = None, impl=None, dtype=None):
        super().__init__()
        self.spatial = zq_ch is not None
        self.norm = _norm(channels, zq_ch, impl, dtype)
        self.q = Conv2d(channels, channels, 1, impl=impl, dtype=dtype)
        self.k = Conv2d(channels, channels, 1, impl=impl, dtype=dtype)
        self.v = Conv2d(channels, channels, 1, impl=impl, dtype=dtype)
        self.proj_out = Conv2d(channels, channels, 1, impl=impl, dtype=dtype)
        self.scale = channels ** -0.5
        self.bmm_qk = ops.BatchMatMul(transpose_a=True)  # [C, L]^T @ [C, L] -> [L, L]
        self.bmm_vs = ops.BatchMatMul(transpose_b=True)  # [C, L] @ [L, L]^T -> [C, L]

    def construct(self, x, zq=None):
        nx = self.norm(x, zq) if self.spatial else self.norm(x)
        n, c, h, w = nx.shape
        q = self.q(nx).reshape(n, c, h * w)
        k = self.k(nx).reshape(n, c, h * w)
        v = self.v(nx).reshape(n, c, h * w)
        score = self.bmm_qk(q, k) * self.scale
        dtype = score.dtype
        score = ops.softmax(ops.cast(score, ms.float32), -1)
        out = self.bmm_vs(v, ops.cast(score, dtype)).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Cell):
    """Zero pad (0, 1, 0, 1) then 3x3 conv with stride 2: the pad is part of the conv."""

    def __init__(self, channels: int, impl=None, dtype=None):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=(0, 1, 0, 1), impl=impl, dtype=dtype)

    def construct(self, x):
        return self.conv(x)


class Upsample(nn.Cell):
    """Nearest x2 then 3x3 conv (on CPU fused into four 2x2 convs on the small map)."""

    def __init__(self, channels: int, impl=None, dtype=None):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1, impl=impl, dtype=dtype)
        self.fused = self.conv.impl == "im2col"

    def construct(self, x):
        if self.fused:
            return kernels.upsample2x_conv3x3(x, self.conv.weight, self.conv.bias, self.conv.compute_dtype)
        return self.conv(repeat_nearest(x, 2, 2))


# ---- 3-D (temporal) blocks --------------------------------------------------------------

class CausalConv3d(nn.Cell):
    """Conv3d with Emu3's padding: spatial (k - s) split (p//2 + p%2, p//2), time (2, 0).

    The temporal front padding is 2 for every kernel, as in the released model."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(3, 1, 1), stride=(1, 1, 1),
                 impl=None, dtype=None):
        super().__init__()
        kernel_size = kernels._triple(kernel_size)
        stride = kernels._triple(stride)
        padding = ()
        for k, s in reversed(list(zip(kernel_size[1:], stride[1:]))):  # W first, as F.pad wants
            p = k - s
            padding += (p // 2 + p % 2, p // 2)
        padding += (2, 0)
        self.conv = Conv3d(in_channels, out_channels, kernel_size, stride, padding, impl=impl, dtype=dtype)

    def construct(self, x):
        return self.conv(x)


class ResnetTemporalBlock(nn.Cell):
    """BatchNorm3d, SiLU, causal 3x3x3 conv, twice, plus the identity."""

    def __init__(self, channels: int, dropout: float = 0.0, impl=None, dtype=None):
        super().__init__()
        self.norm1 = BatchNorm3d(channels)
        self.conv1 = CausalConv3d(channels, channels, (3, 3, 3), impl=impl, dtype=dtype)
        self.norm2 = BatchNorm3d(channels)
        self.use_dropout = dropout > 0
        if self.use_dropout:
            self.dropout = nn.Dropout(p=dropout)
        self.conv2 = CausalConv3d(channels, channels, (3, 3, 3), impl=impl, dtype=dtype)

    def construct(self, x):
        h = self.conv1(silu(self.norm1(x)))
        h = silu(self.norm2(h))
        if self.use_dropout:
            h = self.dropout(h)
        return x + self.conv2(h)


class TemporalDownsample(nn.Cell):
    def __init__(self, channels: int, impl=None, dtype=None):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (4, 3, 3), (2, 1, 1), impl=impl, dtype=dtype)

    def construct(self, x):
        return self.conv(x)


class TemporalUpsample(nn.Cell):
    """Nearest x2 along time only, then a causal 3x3x3 conv."""

    def __init__(self, channels: int, impl=None, dtype=None):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (3, 3, 3), impl=impl, dtype=dtype)

    def construct(self, x):
        n, c, t, h, w = x.shape
        x = ops.broadcast_to(x.reshape(n, c, t, 1, h, w), (n, c, t, 2, h, w)).reshape(n, c, 2 * t, h, w)
        return self.conv(x)


# ---- encoder / decoder ------------------------------------------------------------------

class EncoderLevel(nn.Cell):
    """One resolution of the encoder: `block`, `attn` (maybe empty), `downsample` (maybe absent)."""

    def __init__(self, block_in: int, block_out: int, num_blocks: int, with_attn: bool, with_down: bool,
                 dropout: float, impl=None, dtype=None):
        super().__init__()
        blocks, attns = [], []
        for _ in range(num_blocks):
            blocks.append(ResnetBlock(block_in, block_out, dropout, impl=impl, dtype=dtype))
            block_in = block_out
            if with_attn:
                attns.append(AttnBlock(block_out, impl=impl, dtype=dtype))
        self.block = nn.CellList(blocks)
        self.attn = nn.CellList(attns)
        self.with_attn, self.with_down = with_attn, with_down
        if with_down:
            self.downsample = Downsample(block_out, impl=impl, dtype=dtype)

    def construct(self, h):
        for i in range(len(self.block)):
            h = self.block[i](h)
            if self.with_attn:
                h = self.attn[i](h)
        if self.with_down:
            h = self.downsample(h)
        return h


class MidBlock(nn.Cell):
    def __init__(self, channels: int, dropout: float, zq_ch: int | None = None, impl=None, dtype=None):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, zq_ch, impl=impl, dtype=dtype)
        self.attn_1 = AttnBlock(channels, zq_ch, impl=impl, dtype=dtype)
        self.block_2 = ResnetBlock(channels, channels, dropout, zq_ch, impl=impl, dtype=dtype)

    def construct(self, h, zq=None):
        h = self.block_1(h, zq)
        h = self.attn_1(h, zq)
        return self.block_2(h, zq)


class Encoder(nn.Cell):
    """2-D encoder applied per frame (`frames`), then the temporal stage (`temporal`)."""

    def __init__(self, config: Emu3VQConfig, impl=None, dtype=None):
        super().__init__()
        c = config
        levels = len(c.ch_mult)
        in_mult = (1,) + tuple(c.ch_mult)
        self.conv_in = Conv2d(c.in_channels, c.ch, 3, padding=1, impl=impl, dtype=dtype)
        down = []
        for i in range(levels):
            down.append(EncoderLevel(c.ch * in_mult[i], c.ch * c.ch_mult[i], c.num_res_blocks,
                                     i in c.attn_resolutions, i != levels - 1, c.dropout, impl, dtype))
        self.down = nn.CellList(down)
        block_in = c.ch * c.ch_mult[-1]
        self.mid = MidBlock(block_in, c.dropout, impl=impl, dtype=dtype)
        self.norm_out = GroupNorm(32, block_in, eps=1e-6, impl=impl)
        z_out = 2 * c.z_channels if c.double_z else c.z_channels
        self.conv_out = Conv2d(block_in, z_out, 3, padding=1, impl=impl, dtype=dtype)
        self.time_conv = nn.CellList(
            [TemporalDownsample(z_out, impl, dtype) for _ in range(c.num_time_convs)])
        self.time_res_stack = nn.CellList(
            [ResnetTemporalBlock(z_out, c.dropout, impl, dtype) for _ in range(c.num_res_blocks)])

    def frames(self, x):
        """[N, 3, H, W] frames -> [N, z, H/f, W/f]."""
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.head(h)

    def head(self, h):
        """After the last level: mid, norm_out, SiLU, conv_out."""
        return self.conv_out(silu(self.norm_out(self.mid(h))))

    def temporal(self, h):
        """[B, z, T, h, w] -> [B, z, T/4, h, w]."""
        for conv in self.time_conv:
            h = silu(conv(h))
        for block in self.time_res_stack:
            h = block(h)
        return h


class DecoderLevel(nn.Cell):
    """One resolution of the decoder: `block`, `attn` (maybe empty), `upsample` (maybe absent)."""

    def __init__(self, block_in: int, block_out: int, num_blocks: int, with_attn: bool, with_up: bool,
                 dropout: float, zq_ch: int, impl=None, dtype=None):
        super().__init__()
        blocks, attns = [], []
        for _ in range(num_blocks):
            blocks.append(ResnetBlock(block_in, block_out, dropout, zq_ch, impl=impl, dtype=dtype))
            block_in = block_out
            if with_attn:
                attns.append(AttnBlock(block_out, zq_ch, impl=impl, dtype=dtype))
        self.block = nn.CellList(blocks)
        self.attn = nn.CellList(attns)
        self.with_attn, self.with_up = with_attn, with_up
        if with_up:
            self.upsample = Upsample(block_out, impl=impl, dtype=dtype)

    def construct(self, h, zq):
        for i in range(len(self.block)):
            h = self.block[i](h, zq)
            if self.with_attn:
                h = self.attn[i](h, zq)
        if self.with_up:
            h = self.upsample(h)
        return h


class Decoder(nn.Cell):
    """Temporal stage (`temporal`) on quant and post_quant_conv(quant) together, then the
    2-D decoder per frame (`frames`), every norm a SpatialNorm conditioned on the latent."""

    def __init__(self, config: Emu3VQConfig, impl=None, dtype=None):
        super().__init__()
        c = config
        levels = len(c.ch_mult)
        zq_ch = c.embed_dim
        self.time_res_stack = nn.CellList(
            [ResnetTemporalBlock(c.z_channels, c.dropout, impl, dtype) for _ in range(c.num_res_blocks)])
        self.time_conv = nn.CellList(
            [TemporalUpsample(c.z_channels, impl, dtype) for _ in range(c.num_time_convs)])
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = Conv2d(c.z_channels, block_in, 3, padding=1, impl=impl, dtype=dtype)
        self.mid = MidBlock(block_in, c.dropout, zq_ch, impl=impl, dtype=dtype)
        up = [None] * levels
        for i in reversed(range(levels)):  # built from the bottom, stored by level as in the checkpoint
            block_out = c.ch * c.ch_mult[i]
            up[i] = DecoderLevel(block_in, block_out, c.num_res_blocks + 1, i in c.attn_resolutions, i != 0,
                                 c.dropout, zq_ch, impl, dtype)
            block_in = block_out
        self.up = nn.CellList(up)
        self.norm_out = SpatialNorm(block_in, zq_ch, impl=impl, dtype=dtype)
        self.conv_out = Conv2d(block_in, c.out_channels, 3, padding=1, impl=impl, dtype=dtype)

    def temporal(self, x):
        """[2B, z, t, h, w] -> [2B, z, 4t, h, w]."""
        for block in self.time_res_stack:
            x = block(x)
        for conv in self.time_conv:
            x = silu(conv(x))
        return x

    def frames(self, h, zq):
        """h [N, z, h, w], zq [N, embed_dim, h, w] -> [N, out_channels, H, W]."""
        h = self.stem(h, zq)
        for i in range(len(self.up) - 1, -1, -1):
            h = self.up[i](h, zq)
        return self.head(h, zq)

    def stem(self, h, zq):
        """Before the first (deepest) level: conv_in, mid."""
        return self.mid(self.conv_in(h), zq)

    def head(self, h, zq):
        """After the last level: norm_out, SiLU, conv_out."""
        return self.conv_out(silu(self.norm_out(h, zq)))


class VectorQuantizer(nn.Cell):
    """Nearest codebook vector by squared L2: argmin |z|^2 + |e|^2 - 2 z.e (no normalisation)."""

    def __init__(self, codebook_size: int, embed_dim: int):
        super().__init__()
        self.embedding = Embedding(codebook_size, embed_dim)

    def codes(self, z):
        """z [M, C] fp32 -> int32 codes [M], computed in row chunks to bound memory."""
        e = self.embedding.weight
        e_sq = (e * e).sum(1).reshape(1, -1)
        rows = z.shape[0]
        step = max(1, QUANT_CHUNK_ELEMENTS // e.shape[0])
        out = []
        for s in range(0, rows, step):
            zc = z[s:min(rows, s + step)]
            d = (zc * zc).sum(1, keepdims=True) + e_sq - 2 * ops.matmul(zc, e.T)
            out.append(ops.cast(ops.argmin(d, 1), ms.int32))
        return out[0] if len(out) == 1 else ops.cat(out, 0)


class Embedding(nn.Cell):
    """A codebook: `weight` [codebook_size, embed_dim]."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        w = np.random.default_rng().uniform(-1.0 / num, 1.0 / num, size=(num, dim)).astype(np.float32)
        self.weight = Parameter(Tensor(w), name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


# ---- the model --------------------------------------------------------------------------

class Emu3VQModel(nn.Cell):
    """Emu3's vision tokenizer. `encode` pixels to int32 codes, `decode` codes to pixels.

    config: an `Emu3VQConfig` (see its presets).
    dtype: compute dtype of the convolutions and attention matmuls (None = fp32; fp16/bf16
        are for GPU/Ascend; norms, softmax and the quantizer stay fp32).
    impl: convolution kernel ("im2col", "ops", "mint"; None: `device.policy().conv`).
    jit: compile the stages with `ms.jit` (graph mode, once per input shape).
    frame_batch: frames per call of the 2-D encoder/decoder (they work frame by frame);
        bounds memory on long videos and large images. None: `device.policy().vq_frame_batch`
        (1 on CPU, 16 elsewhere).

    Work the model skips, exactly: an image is `temporal_downsample_factor` equal frames, so
    the 2-D encoder runs once and its output is repeated along time; decoding an image keeps
    frame 0 of the clip, so only that frame goes through the 2-D decoder.
    Load weights (`Emu3VQModel.from_pretrained`) before the first call: a compiled graph
    keeps the parameter buffers it was built with.
    """

    def __init__(self, config: Emu3VQConfig, dtype=None, impl: str | None = None, jit: bool = True,
                 frame_batch: int | None = None):
        super().__init__()
        self.config = config
        dtype = device.resolve_dtype(dtype)
        self.compute_dtype = None if dtype in (None, ms.float32) else dtype
        self.encoder = Encoder(config, impl, self.compute_dtype)
        self.decoder = Decoder(config, impl, self.compute_dtype)
        self.quantize = VectorQuantizer(config.codebook_size, config.embed_dim)
        dt = self.compute_dtype
        self.quant_conv = CausalConv3d(config.z_channels, config.embed_dim, impl=impl, dtype=dt)
        self.post_quant_conv = CausalConv3d(config.embed_dim, config.z_channels, impl=impl, dtype=dt)
        self.t_factor = config.temporal_downsample_factor
        if frame_batch is None:
            frame_batch = device.policy().vq_frame_batch
        if frame_batch < 1:
            raise ValueError(f"frame_batch must be at least 1, got {frame_batch}")
        self.frame_batch = frame_batch
        self.set_train(False)
        # The 2-D encoder and decoder run as one compiled graph per resolution level, not one
        # for the whole network: MindSpore's CPU runtime then holds about the memory of one
        # level at a time (decoding 256x256: 2.1 GB above the weights instead of 3.6 GB).
        wrap = ms.jit if jit else (lambda f: f)
        enc, dec = self.encoder, self.decoder
        self._encoder_stages = ([wrap(self.encoder_stem)] + [wrap(level) for level in enc.down]
                                + [wrap(enc.head)])
        self._decoder_stages = ([wrap(dec.stem)] + [wrap(dec.up[i]) for i in reversed(range(len(dec.up)))]
                                + [wrap(self.decoder_head)])
        self._codes_from_images = wrap(self.codes_from_images)
        self._codes_from_videos = wrap(self.codes_from_videos)
        self._latents = wrap(self.latents)

    # -- stages (tensors in, tensors out; shapes already checked) --

    def encoder_stem(self, x):
        """First stage of the 2-D encoder: frames [N, 3, H, W] (fp32) -> conv_in."""
        if self.compute_dtype is not None:
            x = ops.cast(x, self.compute_dtype)
        return self.encoder.conv_in(x)

    def _encode_frames(self, x):
        """2-D encoder: frames [N, 3, H, W] -> [N, z_channels, h, w], stage by stage."""
        for stage in self._encoder_stages:
            x = stage(x)
        return x

    def _quantize(self, z):
        """z [B, z_channels, t, h, w] (after the encoder's temporal stage) -> codes [B, t, h, w]."""
        z = self.quant_conv(z)
        b, c, t, h, w = z.shape
        z = ops.cast(z, ms.float32).transpose(0, 2, 3, 4, 1).reshape(-1, c)
        return self.quantize.codes(z).reshape(b, t, h, w)

    def codes_from_images(self, f):
        """Encoded images [B, z, h, w] -> codes [B, h, w]: each stands for 4 equal frames."""
        b, c, h, w = f.shape
        z = ops.broadcast_to(f.reshape(b, c, 1, h, w), (b, c, self.t_factor, h, w))
        return self._quantize(self.encoder.temporal(z)).reshape(b, h, w)

    def codes_from_videos(self, f):
        """Encoded frames [B, T, z, h, w] -> codes [B, T/4, h, w]."""
        return self._quantize(self.encoder.temporal(f.transpose(0, 2, 1, 3, 4)))

    def latents(self, codes):
        """codes [B, t, h, w] -> (h, zq), each [B, 4t, C, h, w]: quant and post_quant_conv(quant)
        after the decoder's temporal stage, which they go through together."""
        b, t, h, w = codes.shape
        quant = self.quantize.embedding(codes.reshape(-1))  # [B*t*h*w, C]
        c = quant.shape[-1]
        quant = quant.reshape(b, t, h, w, c).transpose(0, 4, 1, 2, 3)  # [B, C, t, h, w]
        if self.compute_dtype is not None:
            quant = ops.cast(quant, self.compute_dtype)
        post = self.post_quant_conv(quant)
        both = self.decoder.temporal(ops.cat((post, quant), 0)).transpose(0, 2, 1, 3, 4)
        return both[:b], both[b:]

    def decoder_head(self, h, zq):
        """Last stage of the 2-D decoder, output in fp32."""
        return ops.cast(self.decoder.head(h, zq), ms.float32)

    def _decode_frames(self, h, zq):
        """2-D decoder: h [N, z, h, w], zq [N, C, h, w] -> float32 frames [N, 3, H, W]."""
        for stage in self._decoder_stages:
            h = stage(h, zq)
        return h

    def _in_groups(self, fn, *frames):
        """fn over `frame_batch` frames at a time; outputs concatenated along axis 0."""
        n = frames[0].shape[0]
        g = self.frame_batch
        if n <= g:
            return fn(*frames)
        outs = [fn(*(f[s:s + g] for f in frames)) for s in range(0, n, g)]
        return ops.cat(outs, 0)

    # -- public API --

    def encode(self, pixels) -> Tensor:
        """Pixels (numpy or Tensor, values in [-1, 1]) -> int32 codes.

        images [B, 3, H, W] -> [B, H/f, W/f]; videos [B, T, 3, H, W] with T a multiple of
        `temporal_downsample_factor` -> [B, T/4, H/f, W/f] (f = config.spatial_factor).
        """
        x = _as_float_tensor(pixels)
        c = self.config
        if x.ndim not in (4, 5):
            raise ValueError(f"encode expects images [B, {c.in_channels}, H, W] or videos "
                             f"[B, T, {c.in_channels}, H, W], got shape {tuple(x.shape)}")
        if x.shape[-3] != c.in_channels:
            raise ValueError(f"encode expects {c.in_channels} channels, got shape {tuple(x.shape)}")
        hh, ww = x.shape[-2], x.shape[-1]
        f = c.spatial_factor
        if hh % f or ww % f or hh < f or ww < f:
            raise ValueError(f"image sides must be positive multiples of {f}, got {hh}x{ww}")
        if x.shape[0] < 1:
            raise ValueError("encode got an empty batch")
        if x.ndim == 4:
            return self._codes_from_images(self._in_groups(self._encode_frames, x))
        b, t = x.shape[0], x.shape[1]
        if t < 1 or t % c.temporal_downsample_factor:
            raise ValueError(f"a video needs a multiple of {c.temporal_downsample_factor} frames, got {t}")
        f = self._in_groups(self._encode_frames, x.reshape((b * t,) + tuple(x.shape[2:])))
        return self._codes_from_videos(f.reshape((b, t) + tuple(f.shape[1:])))

    def decode(self, codes) -> Tensor:
        """int codes (numpy or Tensor) -> float32 pixels in about [-1, 1].

        [B, h, w] -> images [B, 3, H, W] (frame 0 of the decoded clip);
        [B, t, h, w] -> videos [B, 4t, 3, H, W].
        """
        ids = codes.asnumpy() if isinstance(codes, Tensor) else np.asarray(codes)
        if ids.ndim not in (3, 4):
            raise ValueError(f"decode expects codes [B, h, w] or [B, t, h, w], got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError(f"decode got empty codes of shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.config.codebook_size:
            raise ValueError(
                f"codes must lie in [0, {self.config.codebook_size}), got values in [{lo}, {hi}]")
        x = Tensor(ids.astype(np.int32))
        if ids.ndim == 3:
            hs, zq = self._latents(x.expand_dims(1))
            return self._in_groups(self._decode_frames, hs[:, 0], zq[:, 0])
        hs, zq = self._latents(x)
        b, t = hs.shape[0], hs.shape[1]
        frames = self._in_groups(self._decode_frames, hs.reshape((b * t,) + tuple(hs.shape[2:])),
                                 zq.reshape((b * t,) + tuple(zq.shape[2:])))
        return frames.reshape((b, t) + tuple(frames.shape[1:]))

    @classmethod
    def from_pretrained(cls, path=None, dtype=None, *, revision=None, cache_dir=None, local_files_only: bool = False,
                        **kwargs) -> Emu3VQModel:
        """Load a checkpoint, original or `-hf` layout (see checkpoint.py): a local directory or a
        hub repo id (only config.json and the tokenizer's own shards are fetched; see emu3_vq.hub);
        None: the default model's (`emu3_vq.defaults`).
        `dtype`: "fp32" | "fp16" | "bf16" or a MindSpore dtype."""
        from emu3_vq.checkpoint import from_pretrained

        if path is None:
            from .defaults import vq_dir

            path = vq_dir(quiet=False)

        return from_pretrained(cls, path, dtype=dtype, revision=revision, cache_dir=cache_dir,
                               local_files_only=local_files_only, **kwargs)

    def save_pretrained(self, directory, layout: str = "original", **kwargs) -> None:
        """Write config.json + safetensors in the `original` or `hf` layout (see checkpoint.py)."""
        from emu3_vq.checkpoint import save_pretrained

        save_pretrained(self, directory, layout=layout, **kwargs)


def _as_float_tensor(pixels) -> Tensor:
    if isinstance(pixels, Tensor):
        return pixels if pixels.dtype == ms.float32 else ops.cast(pixels, ms.float32)
    arr = np.asarray(pixels)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"pixels must be floating point values in [-1, 1], got dtype {arr.dtype}")
    return Tensor(np.ascontiguousarray(arr, dtype=np.float32))
