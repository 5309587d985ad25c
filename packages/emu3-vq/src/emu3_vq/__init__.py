"""emu3-vq: the Emu3 vision tokenizer (VQ-VAE with temporal 3D convolutions) on MindSpore.

    from emu3_vq import Emu3VQModel, Emu3ImageProcessor
    vq = Emu3VQModel.from_pretrained("path/to/Emu3-VisionTokenizer")
    processor = Emu3ImageProcessor.from_pretrained("path/to/Emu3-VisionTokenizer")
    codes = vq.encode(processor.preprocess([image]))      # [1, H/8, W/8]
    image = processor.postprocess(vq.decode(codes))[0]
"""

__version__ = "0.1.0"

# Exported lazily: importing the package (e.g. for the `emu3` command) does not load MindSpore.
_EXPORTS = {
    "Emu3VQConfig": "emu3_vq.config",
    "Emu3VQModel": "emu3_vq.model",
    "Emu3ImageProcessor": "emu3_vq.processor",
    "smart_resize": "emu3_vq.processor",
    "CheckpointError": "emu3_vq.weights",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
