"""Device-dependent kernels of the vision tokenizer: convolutions and GroupNorm.

The model code only builds `Conv2d`, `Conv3d` and `GroupNorm` cells from here; which kernel
runs is decided once, from `emu3_vq.device.policy().conv`, when a cell is built:

- CPU ("im2col"): MindSpore's native CPU convolutions are some 250x slower than torch's, so
  a convolution is an im2col (`ops.unfold`, MindSpore's Im2Col kernel) followed by one matmul
  with the [O, C*kh*kw] weight; a 1x1 convolution is the matmul alone. Padding that is not
  symmetric is applied first by concatenating zeros (`zero_pad`: MindSpore's CPU Pad kernel
  is ~10x slower). A stride is Im2Col's own, so a strided conv computes nothing it drops.
  Large maps are cut into bands of output rows, one after the other (`ops.depend`), so the
  column matrix stays under `IM2COL_CHUNK_ELEMENTS`. A 3-D conv concatenates the 2-D columns
  of its kt time taps. Every step is differentiable, so gradients flow for training.
  Measured on 2 cores (256 -> 256 channels, 256x256, fp32): 0.52 s against torch's 0.41 s
  per conv. Also measured and dropped: the padded map flattened so that each tap is a
  contiguous 1-D window (every tap slice is a graph node costing ~50 ms of compilation), and
  nine accumulated matmuls over such windows (`ops.addmm`; ~10% faster on the largest maps,
  twice the compile time).
- GPU: `ops.conv2d` / `ops.conv3d`.
- Ascend: `mint.nn.functional.conv2d` / `conv3d` (the fast path there).

Parameters are named `weight` [out, in, *kernel] and `bias` [out], as in the checkpoints.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, mint, nn, ops

from emu3_vq import device

# Largest im2col matrix built at once, in elements (256 MiB in fp32); larger problems are cut
# into bands of output rows, one matmul each.
IM2COL_CHUNK_ELEMENTS = 1 << 26

_IMPLS = ("im2col", "ops", "mint")


def _triple(v) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 3:
        raise ValueError(f"expected an int or 3 values, got {v}")
    return v


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or 2 values, got {v}")
    return v


def _check_impl(impl: str | None) -> str:
    impl = device.policy().conv if impl is None else impl
    if impl not in _IMPLS:
        raise ValueError(f"conv impl must be one of {_IMPLS}, got {impl!r}")
    return impl


def _init_conv_params(cell: nn.Cell, out_ch: int, in_ch: int, kernel: tuple, bias: bool) -> None:
    # torch's default init (kaiming-uniform with a=sqrt(5)); checkpoints overwrite it anyway
    fan_in = in_ch * int(np.prod(kernel))
    bound = 1.0 / math.sqrt(fan_in)
    rng = np.random.default_rng()
    w = rng.uniform(-bound, bound, size=(out_ch, in_ch, *kernel)).astype(np.float32)
    cell.weight = Parameter(Tensor(w), name="weight")
    if bias:
        b = rng.uniform(-bound, bound, size=(out_ch,)).astype(np.float32)
        cell.bias = Parameter(Tensor(b), name="bias")
    else:
        cell.bias = None


def _row_bands(rows: int, elements_per_row: int, budget: int):
    """[(r0, r1), ...] covering range(rows) with at most `budget` elements per band."""
    step = max(1, budget // max(1, elements_per_row))
    bands = []
    for r0 in range(0, rows, step):
        bands.append((r0, min(rows, r0 + step)))
    return bands


def zero_pad(x, pad):
    """Zero padding in `F.pad` order (last axis first: left, right, top, bottom, front, back),
    written as concatenations with zeros: MindSpore's CPU Pad kernel is about 10x slower."""
    for i in range(len(pad) // 2):
        lo, hi = pad[2 * i], pad[2 * i + 1]
        if lo or hi:
            axis = len(x.shape) - 1 - i
            parts = []
            if lo:
                parts.append(ops.zeros(x.shape[:axis] + (lo,) + x.shape[axis + 1:], x.dtype))
            parts.append(x)
            if hi:
                parts.append(ops.zeros(x.shape[:axis] + (hi,) + x.shape[axis + 1:], x.dtype))
            x = ops.cat(parts, axis)
    return x


def _matmul_cols(w2, cols):
    """[O, K] @ [N, K, L] -> [N, O, L] (a plain 2-D matmul when N == 1)."""
    n = cols.shape[0]
    if n == 1:
        return ops.matmul(w2, cols.reshape(cols.shape[1], cols.shape[2])).expand_dims(0)
    return ops.matmul(w2, cols)


def conv2d_im2col(x, weight, stride=(1, 1), pad=(0, 0, 0, 0), chunk=IM2COL_CHUNK_ELEMENTS):
    """2-D convolution as im2col + matmul (no bias). Usable inside `@ms.jit` graphs.

    x: [N, C, H, W]; weight: [O, C, kh, kw]; stride: (sh, sw);
    pad: zero padding in `F.pad` order (left, right, top, bottom). Returns [N, O, Ho, Wo].
    """
    pl, pr, pt, pb = pad
    p = 0
    if pl == pr == pt == pb:
        p = pl  # Im2Col pads symmetrically itself
    else:
        x = zero_pad(x, (pl, pr, pt, pb))
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    sh, sw = stride
    ho, wo = (h + 2 * p - kh) // sh + 1, (w + 2 * p - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input {tuple(x.shape)} is smaller than the kernel {(kh, kw)}")
    k = c * kh * kw
    w2 = weight.reshape(o, k)
    bands = _row_bands(ho, n * k * wo, chunk)
    if len(bands) == 1:
        cols = ops.unfold(x, (kh, kw), 1, p, (sh, sw))  # [N, C*kh*kw, Ho*Wo], rows (c, i, j)
        return _matmul_cols(w2, cols).reshape(n, o, ho, wo)
    if p:
        x = zero_pad(x, (p, p, p, p))
    pieces = []
    for r0, r1 in bands:
        band = x[:, :, r0 * sh:(r1 - 1) * sh + kh, :]
        if pieces:  # one band at a time: the next columns are built after the last matmul
            band = ops.depend(band, pieces[-1])
        pieces.append(_matmul_cols(w2, ops.unfold(band, (kh, kw), 1, 0, (sh, sw))))
    return ops.cat(pieces, 2).reshape(n, o, ho, wo)


def conv3d_im2col(x, weight, stride=(1, 1, 1), pad=(0, 0, 0, 0, 0, 0)):
    """3-D convolution as the 2-D im2col columns of its time taps + one matmul (no bias).

    x: [N, C, T, H, W]; weight: [O, C, kt, kh, kw]; stride: (st, sh, sw); pad: `F.pad` order
    (left, right, top, bottom, front, back). Returns [N, O, To, Ho, Wo]. Meant for the
    latent-sized 3-D convs of the VQ (few channels): the columns are built in one piece.
    """
    pl, pr, pt, pb, pf, pk = pad
    n, c, t, h, w = x.shape
    o, _, kt, kh, kw = weight.shape
    st, sh, sw = stride
    t, h, w = t + pf + pk, h + pt + pb, w + pl + pr
    to, ho, wo = (t - kt) // st + 1, (h - kh) // sh + 1, (w - kw) // sw + 1
    if to < 1 or ho < 1 or wo < 1:
        raise ValueError(f"input {tuple(x.shape)} is smaller than the kernel {(kt, kh, kw)}")
    tq = -(-t // st)  # time padded up to a multiple of the stride, so frames split into phases
    x = zero_pad(x, (pl, pr, pt, pb, pf, pk + tq * st - t))
    # [N, Tq, st, C, H, W]: time tap dt of output frame i reads frame st*i + dt, that is
    # block i + dt // st, phase dt % st (a plain slice; strided-slice grads fail on CPU)
    xt = x.transpose(0, 2, 1, 3, 4).reshape(n, tq, st, c, h, w)
    cols = []
    for dt in range(kt):
        frames = xt[:, dt // st:dt // st + to, dt % st].reshape(n * to, c, h, w)
        cols.append(ops.unfold(frames, (kh, kw), 1, 0, (sh, sw)))  # [N*To, C*kh*kw, Ho*Wo]
    cols = cols[0] if kt == 1 else ops.cat(cols, 1)  # rows (dt, c, i, j)
    w2 = weight.transpose(0, 2, 1, 3, 4).reshape(o, kt * c * kh * kw)
    y = _matmul_cols(w2, cols).reshape(n, to, o, ho, wo)
    return y.transpose(0, 2, 1, 3, 4)


# Nearest x2 followed by a 3x3 conv (padding 1) equals, for each output phase (a, b), a 2x2
# conv over the small map: along one axis, output row 2r+a reads small rows (r-1, r) with
# kernel rows (w0, w1+w2) when a = 0 and rows (r, r+1) with (w0+w1, w2) when a = 1.
_UPSAMPLE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]],
                           [[1, 1, 0], [0, 0, 1]]], np.float32)  # [phase, tap, kernel row]
_UPSAMPLE_LEFT = [Tensor(_UPSAMPLE_TAPS[a]) for a in range(2)]  # [2, 3]
_UPSAMPLE_RIGHT = [Tensor(np.ascontiguousarray(_UPSAMPLE_TAPS[a].T)) for a in range(2)]  # [3, 2]


def upsample2x_conv3x3(x, weight, bias=None, dtype=None, chunk=IM2COL_CHUNK_ELEMENTS):
    """conv3x3(nearest_upsample_x2(x)) with padding 1, computed as 2x2 convs on x.

    x: [N, C, H, W]; weight: [O, C, 3, 3]; returns [N, O, 2H, 2W]. The four output phases
    share one 2x2 im2col of the padded small map and one [4O, 4C] matmul: 16 instead of 36
    multiply-adds per output pixel and channel pair, and the large map is never built.
    """
    if dtype is not None:
        x = ops.cast(x, dtype)
        weight = ops.cast(weight, dtype)
        if bias is not None:
            bias = ops.cast(bias, dtype)
    n, c, h, w = x.shape
    o = weight.shape[0]
    w3 = weight.reshape(o * c, 3, 3)
    phase_weights = []  # rows (a, b, o), columns (c, di, dj) as Im2Col lays them out
    for a in range(2):
        for b in range(2):
            left = ops.cast(_UPSAMPLE_LEFT[a], weight.dtype)
            right = ops.cast(_UPSAMPLE_RIGHT[b], weight.dtype)
            phase_weights.append(ops.matmul(ops.matmul(left, w3), right).reshape(o, 4 * c))
    w_all = ops.cat(phase_weights, 0)  # [4O, 4C]
    xp = zero_pad(x, (1, 1, 1, 1))
    pieces = []
    for r0, r1 in _row_bands(h, n * 4 * c * (w + 1), chunk):
        # output rows 2r+a, r in [r0, r1), read 2x2 windows starting at padded rows r+a
        cols = ops.unfold(xp[:, :, r0:r1 + 2, :], 2, 1, 0, 1)  # [N, 4C, (rows+1)*(W+1)]
        y = _matmul_cols(w_all, cols).reshape(n, 2, 2, o, r1 - r0 + 1, w + 1)
        rows = []
        for a in range(2):
            cols_b = []
            for b in range(2):
                cols_b.append(y[:, a, b, :, a:a + r1 - r0, b:b + w])  # [N, O, rows, W]
            rows.append(ops.stack(cols_b, -1))  # [N, O, rows, W, 2]
        pieces.append(ops.stack(rows, 3))  # [N, O, rows, 2, W, 2]
    y = pieces[0] if len(pieces) == 1 else ops.cat(pieces, 2)
    y = y.reshape(n, o, 2 * h, 2 * w)
    if bias is not None:
        y = ops.bias_add(y, bias)
    return y


def pointwise_conv(x, weight):
    """1x1 (or 1x1x1) convolution as a matmul (no bias): x [N, C, *S], weight [O, C, 1, ...]."""
    shape = x.shape
    o, c = weight.shape[0], weight.shape[1]
    w2 = weight.reshape(o, c)
    if shape[0] == 1:
        y = ops.matmul(w2, x.reshape(c, -1))
    else:
        y = ops.matmul(w2, x.reshape(shape[0], c, -1))
    return y.reshape((shape[0], o) + tuple(shape[2:]))


class _ConvNd(nn.Cell):
    """What Conv2d and Conv3d share: parameters, compute dtype, the kernel choice and bias."""

    ndim = 0  # spatial dimensions, set by the subclass

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding,
                 bias: bool, impl: str | None, dtype):
        super().__init__()
        n = self.ndim
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _triple(kernel_size) if n == 3 else _pair(kernel_size)
        self.stride = _triple(stride) if n == 3 else _pair(stride)
        if isinstance(padding, int):
            padding = (padding,) * (2 * n)
        self.padding = tuple(int(p) for p in padding)  # F.pad order: left, right, top, bottom, ...
        if len(self.padding) != 2 * n:
            raise ValueError(f"padding must be an int or {2 * n} F.pad values, got {padding}")
        self.impl = _check_impl(impl)
        self.compute_dtype = dtype
        self.pointwise = self.kernel_size == (1,) * n and self.stride == (1,) * n and not any(self.padding)
        _init_conv_params(self, out_channels, in_channels, self.kernel_size, bias)

    def construct(self, x):
        w = self.weight
        if self.compute_dtype is not None:
            x = ops.cast(x, self.compute_dtype)
            w = ops.cast(w, self.compute_dtype)
        if self.pointwise and self.impl == "im2col":
            y = pointwise_conv(x, w)
        elif self.impl == "im2col":
            y = self._im2col(x, w)
        else:
            y = self._native(x, w)
        if self.bias is not None:
            b = self.bias if self.compute_dtype is None else ops.cast(self.bias, self.compute_dtype)
            y = ops.bias_add(y, b)
        return y


class Conv2d(_ConvNd):
    """2-D convolution, torch semantics; `padding` is an int or (left, right, top, bottom).

    impl: None: `device.policy().conv` ('im2col' on CPU); 'im2col', 'ops' or 'mint' forces one.
    dtype: compute dtype for the input and weight (e.g. ms.float16 on GPU); None keeps them.
    """

    ndim = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, impl: str | None = None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, impl, dtype)

    def _im2col(self, x, w):
        return conv2d_im2col(x, w, self.stride, self.padding)

    def _native(self, x, w):
        pl, pr, pt, pb = self.padding
        if pl != pr or pt != pb:  # native kernels take symmetric padding only
            x = ops.pad(x, self.padding)
            pl = pr = pt = pb = 0
        if self.impl == "mint":
            return mint.nn.functional.conv2d(x, w, None, self.stride, (pt, pl))
        return ops.conv2d(x, w, None, self.stride, "pad", (pt, pl))


class Conv3d(_ConvNd):
    """3-D convolution, torch semantics; `padding` is an int or the 6 `F.pad` values
    (left, right, top, bottom, front, back). Same `impl` / `dtype` options as `Conv2d`."""

    ndim = 3

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, impl: str | None = None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, impl, dtype)

    def _im2col(self, x, w):
        return conv3d_im2col(x, w, self.stride, self.padding)

    def _native(self, x, w):
        pl, pr, pt, pb, pf, pk = self.padding
        if pl != pr or pt != pb or pf != pk:  # native kernels take symmetric padding only
            x = ops.pad(x, self.padding)
            pl = pr = pt = pb = pf = pk = 0
        if self.impl == "mint":
            return mint.nn.functional.conv3d(x, w, None, self.stride, (pf, pt, pl))
        return ops.conv3d(x, w, None, self.stride, "pad", (pf, pt, pl))


class GroupNorm(nn.Cell):
    """GroupNorm over [N, C, *], torch semantics, parameters `weight` / `bias` [C].

    Statistics are computed in fp32 whatever the input dtype; the output has the input's dtype.
    On CPU it is written out (MindSpore's CPU group_norm kernel is several times slower than
    these few reductions); elsewhere it calls `mint.nn.functional.group_norm`.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6, impl: str | None = None):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels {num_channels} is not divisible by num_groups {num_groups}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.explicit = _check_impl(impl) == "im2col"  # CPU
        self.weight = Parameter(Tensor(np.ones(num_channels, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(num_channels, np.float32)), name="bias")

    def construct(self, x):
        dtype = x.dtype
        if dtype != ms.float32:
            x = ops.cast(x, ms.float32)
        if self.explicit:
            y = self._explicit(x)
        else:
            y = mint.nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        if dtype != ms.float32:
            y = ops.cast(y, dtype)
        return y

    def _explicit(self, x):
        # written for MindSpore's CPU kernels: reductions over the last axis of 2-D views,
        # per-row factors broadcast explicitly before multiplying, the shift as a bias_add
        shape = x.shape
        n, c, g = shape[0], shape[1], self.num_groups
        xg = x.reshape(n * g, -1)
        mean = mint.mean(xg, 1, keepdim=True)
        d = xg - ops.broadcast_to(mean, xg.shape)
        var = mint.mean(d * d, 1, keepdim=True)
        # one factor per (sample, channel): rstd of the channel's group times its weight
        rstd = ops.rsqrt(var + self.eps).reshape(n, g, 1)
        scale = (rstd * self.weight.reshape(1, g, c // g)).reshape(n * c, 1)
        d = d.reshape(n * c, -1)
        y = d * ops.broadcast_to(scale, d.shape)
        bias = self.bias if n == 1 else ops.tile(self.bias, (n,))
        return ops.bias_add(y.reshape(1, n * c, -1), bias).reshape(shape)
