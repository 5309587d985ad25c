"""emu3-train: fine-tuning Emu3 on MindSpore. So far the optimiser side, proven equal to torch:
AdamW, its parameter groups, the cosine-with-min-lr schedule and global-norm clipping.

    from emu3_train import AdamW, param_groups, cosine_with_min_lr, clip_by_global_norm
    optimizer = AdamW(param_groups(model, weight_decay=0.1))        # betas (0.9, 0.95), eps 1e-6
"""

__version__ = "0.1.0"

# Exported lazily: importing the package does not load MindSpore.
_EXPORTS = {
    "AdamW": "emu3_train.optim",
    "clip_by_global_norm": "emu3_train.optim",
    "cosine_with_min_lr": "emu3_train.optim",
    "param_groups": "emu3_train.optim",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
