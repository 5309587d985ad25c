"""Which device MindSpore runs on, and every choice that follows from it, in one table.

`policy()` is the one place in the project that decides by device target: the VQ's kernels
(`kernels.py`), its frame batch (`model.py`), `--jit auto` (`commands.py`), the LM's
attention kernel, dtype and lm_head layout, and emu3-train's collectives all read a field of it, so that the same model
code runs on CPU (tests, CI), GPU and Ascend. Nothing else reads MindSpore's device_target.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms


@dataclass(frozen=True)
class DevicePolicy:
    """The per-device choices; `policy(target)` gives the one for a target."""

    target: str  # 'CPU' | 'GPU' | 'Ascend', as MindSpore's context names it
    # Default parameter/compute dtype. fp32 on CPU: bf16 matmul has no CPU kernel and fp16 has no
    # fast one (sixteen 2048x2048 GEMVs: 10.8 ms fp32, 58.8 ms fp16); half precision on accelerators.
    dtype: ms.Type
    # VQ convolution kernel. 'im2col' on CPU: MindSpore's native CPU convolutions are some 250x
    # slower than torch's; 'ops' convolutions on GPU; 'mint' on Ascend, the fast path there.
    conv: str
    # LM attention core. 'matmul' (fp32 softmax) on CPU/GPU: ops.flash_attention_score has no CPU
    # kernel; 'flash' (the fused ops.flash_attention_score) on Ascend.
    attention: str
    # Decoders keep lm_head copies as W^T [hidden, vocab]: on CPU only, where MatMul with
    # transpose_b over the vocabulary rows runs at a third of the memory bandwidth (hidden 1024:
    # 27 ms vs 10 ms a token from W^T); accelerators use the checkpoint's W [vocab, hidden].
    transposed_head: bool
    # Latent frames per call of the VQ's 2-D encoder/decoder, bounding peak memory on long videos
    # and large images: it grows with the frames in a call, and one 256x256 frame decoded on CPU
    # already holds ~2.1 GB above the weights (model.py), so 1 there; 16 on accelerators (not
    # measured here), where a batch of frames keeps the chip busy.
    vq_frame_batch: int
    # Whether `--jit auto` compiles models below real size. False on CPU: compiling costs seconds
    # per input size, more than a tiny model's eager run; True elsewhere.
    jit_small_models: bool
    # Collectives the backend runs itself (emu3-train builds the others from these, exactly):
    # MindSpore 2.10's CPU backend has AllReduce and AllGather only, on the world group only.
    native_collectives: frozenset = frozenset(
        {"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "sub_groups"})


_POLICIES = {
    p.target: p for p in (
        DevicePolicy("CPU", ms.float32, conv="im2col", attention="matmul", transposed_head=True,
                     vq_frame_batch=1, jit_small_models=False,
                     native_collectives=frozenset({"all_reduce", "all_gather"})),
        DevicePolicy("GPU", ms.float16, conv="ops", attention="matmul", transposed_head=False,
                     vq_frame_batch=16, jit_small_models=True),
        DevicePolicy("Ascend", ms.bfloat16, conv="mint", attention="flash", transposed_head=False,
                     vq_frame_batch=16, jit_small_models=True),
    )
}


def policy(target: str | None = None) -> DevicePolicy:
    """The policy of `target` ('CPU', 'GPU', 'Ascend'); None: MindSpore's current device_target."""
    if target is None:
        target = ms.get_context("device_target")
    try:
        return _POLICIES[target]
    except KeyError:
        raise ValueError(f"no device policy for device target {target!r}; "
                         f"known targets: {', '.join(_POLICIES)}") from None


def device_target() -> str:
    """'CPU', 'GPU' or 'Ascend', as set in MindSpore's context."""
    return policy().target


def is_cpu() -> bool:
    return policy().target == "CPU"


def default_dtype() -> ms.Type:
    """fp32 on CPU, fp16 on GPU, bf16 on Ascend (see `DevicePolicy.dtype`)."""
    return policy().dtype


# The one spelling of a dtype across the project (API `dtype=` arguments and `--dtype` flags).
DTYPES = {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}
DEVICES = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}  # --device value -> MindSpore's target name


def resolve_dtype(dtype) -> ms.Type | None:
    """`"fp32" | "fp16" | "bf16"` or a MindSpore floating dtype -> the MindSpore dtype; None stays
    None (the caller's default: the device policy's). Anything else is a ValueError naming the
    accepted spellings."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype in DTYPES:
            return DTYPES[dtype]
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)} or a MindSpore dtype "
                         f"(ms.float32, ms.float16, ms.bfloat16)")
    if dtype in DTYPES.values():
        return dtype
    raise ValueError(f"unsupported dtype {dtype!r}: use one of {', '.join(DTYPES)} or a MindSpore dtype "
                     f"(ms.float32, ms.float16, ms.bfloat16)")


def dtype_name(dtype) -> str:
    """The project's spelling ("fp32", "fp16", "bf16") of a dtype accepted by `resolve_dtype`."""
    resolved = resolve_dtype(dtype)
    return next(name for name, value in DTYPES.items() if value == resolved)


def select(device: str | None = None, device_id: int | None = None, threads: int | None = None) -> None:
    """Pick where MindSpore runs, before any model is built: `device` 'cpu' | 'gpu' | 'ascend'
    (None: MindSpore's default), `device_id` the chip, `threads` the CPU kernels' thread count.
    Uses `mindspore.set_device` (the context argument device_target is deprecated)."""
    if device is not None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
        try:
            if device_id is not None:
                ms.set_device(DEVICES[device], device_id)
            else:
                ms.set_device(DEVICES[device])
        except RuntimeError:  # MindSpore's runtime already started in this process
            if device_id is not None or DEVICES[device] != ms.get_context("device_target"):
                raise ValueError(f"cannot move to {device}: MindSpore already runs on "
                                 f"{ms.get_context('device_target')} in this process; choose the device "
                                 f"before any model runs") from None
    elif device_id is not None:
        raise ValueError("a device id needs a device (--device gpu or ascend)")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        try:
            ms.device_context.cpu.op_tuning.threads_num(threads)
        except RuntimeError:
            raise ValueError("cannot change the CPU thread count once MindSpore has run in this process; set "
                             "it before any model runs") from None
