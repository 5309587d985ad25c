"""Device-dependent kernels of the vision tokenizer: convolutions and GroupNorm.

The model code only builds `Conv2d`, `Conv3d` and `GroupNorm` cells from here; which kernel
runs is decided once, from `emu3_vq.device`, when a cell is built:

- CPU ("taps"): MindSpore's native convolutions are some 250x slower than torch on CPU, so a
  convolution is written as one matmul over its taps. The zero-padded input is laid out
  channels-first with the batch folded into one flat axis, so that every tap (dt, i, j) of
  the kernel is a contiguous 1-D window of that axis at a fixed offset. The windows of all
  taps are stacked into a [C*k, L] matrix and multiplied by the [O, C*k] weight; the flat
  output holds a few "garbage" positions (the padding columns/rows) that are cropped at the
  end. A stride s along an axis is handled by splitting the input into its s phases
  (x[a::s]), so a strided kernel is a stride-1 kernel over the phases and nothing is
  computed only to be dropped. The flat axis is cut into chunks so the stacked matrix stays
  small (memory, cache). Every step is an ordinary differentiable op, so gradients flow.
- GPU: `ops.conv2d` / `ops.conv3d`.
- Ascend: `mint.nn.functional.conv2d` / `conv3d` (the fast path there).

Parameters are named `weight` [out, in, *kernel] and `bias` [out], as in the checkpoints.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, mint, nn, ops

from emu3_vq.device import device_target

# Largest stacked-taps matrix built at once, in elements (64 MiB in fp32). Larger problems are
# cut into chunks along the flat output axis; each chunk is one matmul.
TAPS_CHUNK_ELEMENTS = 1 << 24

_IMPLS = ("taps", "ops", "mint")


def default_impl() -> str:
    """The convolution kernel for the current device: 'taps' (CPU), 'ops' (GPU), 'mint' (Ascend)."""
    return {"CPU": "taps", "GPU": "ops", "Ascend": "mint"}.get(device_target(), "ops")


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
    impl = default_impl() if impl is None else impl
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


def conv3d_taps(x, weight, stride=(1, 1, 1), pad=(0, 0, 0, 0, 0, 0), chunk=TAPS_CHUNK_ELEMENTS):
    """3-D convolution as matmuls over taps (no bias). Usable inside `@ms.jit` graphs.

    x: [N, C, T, H, W]; weight: [O, C, kt, kh, kw]; stride: (st, sh, sw);
    pad: zero padding in `F.pad` order (left, right, top, bottom, front, back).
    Returns [N, O, To, Ho, Wo].
    """
    n, c, t, h, w = x.shape
    o, _, kt, kh, kw = weight.shape
    st, sh, sw = stride
    pl, pr, pt, pb, pf, pk = pad
    tp, hp, wp = t + pf + pk, h + pt + pb, w + pl + pr
    to, ho, wo = (tp - kt) // st + 1, (hp - kh) // sh + 1, (wp - kw) // sw + 1
    if to < 1 or ho < 1 or wo < 1:
        raise ValueError(f"input {tuple(x.shape)} is smaller than the kernel {tuple(weight.shape[2:])}")
    # each phase of a strided axis has ceil(size / stride) entries: round the padded size up
    tq, hq, wq = -(-tp // st), -(-hp // sh), -(-wp // sw)
    x = ops.pad(x, (pl, pr + wq * sw - wp, pt, pb + hq * sh - hp, pf, pk + tq * st - tp))
    # channels first, batch folded into the flat axis
    if n == 1:
        x = x.reshape(c, 1, tq * st, hq * sh, wq * sw)
    else:
        x = x.transpose(1, 0, 2, 3, 4)
    frame = hq * wq
    length = n * tq * frame  # flat output positions computed (cropped afterwards)
    max_off = ((kt - 1) // st) * frame + ((kh - 1) // sh) * wq + (kw - 1) // sw
    phases = []  # phase (a, b, d) at index (a * sh + b) * sw + d
    for a in range(st):
        for b in range(sh):
            for d in range(sw):
                if st == 1 and sh == 1 and sw == 1:
                    p = x
                else:
                    p = x[:, :, a::st, b::sh, d::sw]
                p = p.reshape(c, length)
                if max_off:
                    p = ops.pad(p, (0, max_off))
                phases.append(p)
    taps = []  # (phase, offset) in the order of the flattened weight [O, kt, kh, kw, C]
    for dt in range(kt):
        for i in range(kh):
            for j in range(kw):
                phase = phases[((dt % st) * sh + i % sh) * sw + j % sw]
                taps.append((phase, (dt // st) * frame + (i // sh) * wq + j // sw))
    k = len(taps) * c
    w2 = weight.transpose(0, 2, 3, 4, 1).reshape(o, k)
    step = max(1, chunk // k)
    pieces = []
    for s in range(0, length, step):
        e = min(length, s + step)
        if len(taps) == 1:
            cols = taps[0][0][:, taps[0][1] + s:taps[0][1] + e]
        else:
            cols = ops.cat([p[:, off + s:off + e] for p, off in taps], 0)
        pieces.append(ops.matmul(w2, cols))
    y = pieces[0] if len(pieces) == 1 else ops.cat(pieces, 1)
    y = y.reshape(o, n, tq, hq, wq)[:, :, :to, :ho, :wo]
    if n == 1:
        return y.reshape(1, o, to, ho, wo)
    return y.transpose(1, 0, 2, 3, 4)


# Nearest x2 followed by a 3x3 conv (padding 1) equals, for each output phase (a, b), a 2x2
# conv over the small map: along one axis, output row 2r+a reads small rows (r-1, r) with
# kernel rows (w0, w1+w2) when a = 0 and rows (r, r+1) with (w0+w1, w2) when a = 1.
_UPSAMPLE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]],
                           [[1, 1, 0], [0, 0, 1]]], np.float32)  # [phase, tap, kernel row]
_UPSAMPLE_LEFT = [Tensor(_UPSAMPLE_TAPS[a]) for a in range(2)]  # [2, 3]
_UPSAMPLE_RIGHT = [Tensor(np.ascontiguousarray(_UPSAMPLE_TAPS[a].T)) for a in range(2)]  # [3, 2]


def upsample2x_conv3x3(x, weight, bias=None, dtype=None, chunk=TAPS_CHUNK_ELEMENTS):
    """conv3x3(nearest_upsample_x2(x)) with padding 1, computed as four 2x2 convs on x.

    x: [N, C, H, W]; weight: [O, C, 3, 3]; returns [N, O, 2H, 2W]. 16 instead of 36
    multiply-adds per output pixel and channel pair, and the large map is never built.
    """
    if dtype is not None:
        x = ops.cast(x, dtype)
        weight = ops.cast(weight, dtype)
        if bias is not None:
            bias = ops.cast(bias, dtype)
    n, c, h, w = x.shape
    o = weight.shape[0]
    hp, wp = h + 2, w + 2
    xp = ops.pad(x, (1, 1, 1, 1))
    if n == 1:
        xp = xp.reshape(c, hp * wp)
    else:
        xp = xp.transpose(1, 0, 2, 3).reshape(c, n * hp * wp)
    length = n * hp * wp
    xp = ops.pad(xp, (0, 2 * wp + 2))
    w3 = weight.reshape(o * c, 3, 3)
    phases = []  # (weight [O, 4C], tap offsets) per output phase (a, b)
    for a in range(2):
        for b in range(2):
            left = ops.cast(_UPSAMPLE_LEFT[a], weight.dtype)
            right = ops.cast(_UPSAMPLE_RIGHT[b], weight.dtype)
            wab = ops.matmul(ops.matmul(left, w3), right)  # [O*C, 2, 2]
            wab = wab.reshape(o, c, 2, 2).transpose(0, 2, 3, 1).reshape(o, 4 * c)
            offs = []
            for di in range(2):
                for dj in range(2):
                    offs.append((a + di) * wp + b + dj)
            phases.append((wab, offs))
    step = max(1, chunk // (4 * c))
    outs = []
    for wab, offs in phases:
        pieces = []
        for s in range(0, length, step):
            e = min(length, s + step)
            cols = ops.cat([xp[:, off + s:off + e] for off in offs], 0)
            pieces.append(ops.matmul(wab, cols))
        outs.append(pieces[0] if len(pieces) == 1 else ops.cat(pieces, 1))
    y = ops.stack(outs).reshape(2, 2, o, n, hp, wp)[:, :, :, :, :h, :w]
    y = y.transpose(3, 2, 4, 0, 5, 1).reshape(n, o, 2 * h, 2 * w)  # [N, O, H, a, W, b] interleaved
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


class Conv2d(nn.Cell):
    """2-D convolution, torch semantics; `padding` is an int or (left, right, top, bottom).

    impl: None picks by device ('taps' on CPU); 'taps', 'ops' or 'mint' forces one.
    dtype: compute dtype for the input and weight (e.g. ms.float16 on GPU); None keeps them.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, impl: str | None = None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        if isinstance(padding, int):
            padding = (padding,) * 4
        self.padding = tuple(int(p) for p in padding)  # left, right, top, bottom
        if len(self.padding) != 4:
            raise ValueError(f"padding must be an int or (left, right, top, bottom), got {padding}")
        self.impl = _check_impl(impl)
        self.dtype = dtype
        self.pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and not any(self.padding)
        _init_conv_params(self, out_channels, in_channels, self.kernel_size, bias)

    def construct(self, x):
        w = self.weight
        if self.dtype is not None:
            x = ops.cast(x, self.dtype)
            w = ops.cast(w, self.dtype)
        if self.pointwise and self.impl == "taps":
            y = pointwise_conv(x, w)
        elif self.impl == "taps":
            y = conv3d_taps(x.expand_dims(2), w.expand_dims(2), (1,) + self.stride,
                            self.padding + (0, 0)).squeeze(2)
        else:
            y = self._native(x, w)
        if self.bias is not None:
            b = self.bias if self.dtype is None else ops.cast(self.bias, self.dtype)
            y = ops.bias_add(y, b)
        return y

    def _native(self, x, w):
        pl, pr, pt, pb = self.padding
        if pl != pr or pt != pb:  # native kernels take symmetric padding only
            x = ops.pad(x, self.padding)
            pl = pr = pt = pb = 0
        if self.impl == "mint":
            return mint.nn.functional.conv2d(x, w, None, self.stride, (pt, pl))
        return ops.conv2d(x, w, None, self.stride, "pad", (pt, pl))


class Conv3d(nn.Cell):
    """3-D convolution, torch semantics; `padding` is an int or the 6 `F.pad` values
    (left, right, top, bottom, front, back). Same `impl` / `dtype` options as `Conv2d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, impl: str | None = None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        if isinstance(padding, int):
            padding = (padding,) * 6
        self.padding = tuple(int(p) for p in padding)
        if len(self.padding) != 6:
            raise ValueError(f"padding must be an int or 6 F.pad values, got {padding}")
        self.impl = _check_impl(impl)
        self.dtype = dtype
        self.pointwise = self.kernel_size == (1, 1, 1) and self.stride == (1, 1, 1) and not any(self.padding)
        _init_conv_params(self, out_channels, in_channels, self.kernel_size, bias)

    def construct(self, x):
        w = self.weight
        if self.dtype is not None:
            x = ops.cast(x, self.dtype)
            w = ops.cast(w, self.dtype)
        if self.pointwise and self.impl == "taps":
            y = pointwise_conv(x, w)
        elif self.impl == "taps":
            y = conv3d_taps(x, w, self.stride, self.padding)
        else:
            y = self._native(x, w)
        if self.bias is not None:
            b = self.bias if self.dtype is None else ops.cast(self.bias, self.dtype)
            y = ops.bias_add(y, b)
        return y

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
        self.impl = _check_impl(impl)
        self.weight = Parameter(Tensor(np.ones(num_channels, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(num_channels, np.float32)), name="bias")

    def construct(self, x):
        dtype = x.dtype
        if dtype != ms.float32:
            x = ops.cast(x, ms.float32)
        if self.impl == "taps":
            y = self._explicit(x)
        else:
            y = mint.nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        if dtype != ms.float32:
            y = ops.cast(y, dtype)
        return y

    def _explicit(self, x):
        shape = x.shape
        n, c, g = shape[0], shape[1], self.num_groups
        xg = x.reshape(n, g, -1)
        mean = xg.mean(-1, keep_dims=True)
        d = xg - mean
        var = (d * d).mean(-1, keep_dims=True)
        rstd = ops.rsqrt(var + self.eps)  # [N, G, 1]
        # one per-channel scale: rstd of the channel's group times the affine weight
        scale = (rstd * self.weight.reshape(1, g, c // g)).reshape(n, c, 1)
        y = d.reshape(n, c, -1) * scale
        return ops.bias_add(y, self.bias).reshape(shape)
