"""Which device MindSpore runs on, and the choices that follow from it.

Every kernel choice that depends on the device reads `device_target()` here, so that the
same model code runs on CPU (tests, CI), GPU and Ascend.
"""

from __future__ import annotations

import mindspore as ms


def device_target() -> str:
    """'CPU', 'GPU' or 'Ascend', as set in MindSpore's context."""
    return ms.get_context("device_target")


def is_cpu() -> bool:
    return device_target() == "CPU"


def default_dtype() -> ms.Type:
    """fp32 on CPU (no fast half-precision kernels there); bf16 on Ascend; fp16 on GPU."""
    return {"CPU": ms.float32, "GPU": ms.float16, "Ascend": ms.bfloat16}[device_target()]
