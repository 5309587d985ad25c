"""emu3-decoding: constrained text-to-image with classifier-free guidance, VQA answers and
video continuation, over emu3-lm's static KV cache with one compiled graph per step.

    from emu3_decoding import generate_image, answer, continue_video
    image = generate_image(model, processor, "a red circle", ratio="16:9", seed=0)[0]
"""

__version__ = "0.1.0"

# Exported lazily: importing the package (e.g. for the `emu3` command) does not load MindSpore.
_EXPORTS = {
    "NEGATIVE_PROMPT": "emu3_decoding.image",
    "POSITIVE_PROMPT": "emu3_decoding.image",
    "generate_image": "emu3_decoding.image",
    "generate": "emu3_decoding.loop",
    "Sampling": "emu3_decoding.sampling",
    "continue_video": "emu3_decoding.video",
    "answer": "emu3_decoding.vqa",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
