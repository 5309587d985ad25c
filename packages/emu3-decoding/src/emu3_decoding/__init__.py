"""emu3-decoding: constrained text-to-image with classifier-free guidance, VQA answers and
video continuation, over emu3-lm's static KV cache with one compiled graph per step.

    from emu3_decoding import Emu3Pipeline, TextStreamer
    pipe = Emu3Pipeline.from_pretrained("BAAI/Emu3-Gen", vq="BAAI/Emu3-VisionTokenizer")
    out = pipe("a red circle", ratio="16:9", num_images=2)     # out.images, out.seeds
    pipe.answer("photo.png", "What is in it?", streamer=TextStreamer(pipe.processor.tokenizer))

The pipeline fills in the checkpoint's generation defaults and the seeds over the plain
functions, which take a loaded model and processor:

    from emu3_decoding import generate_image, answer, continue_video
    image = generate_image(pipe.model, pipe.processor, "a red circle", ratio="16:9", seed=0)[0]
"""

__version__ = "0.1.0"

# Exported lazily: importing the package (e.g. for the `emu3` command) does not load MindSpore.
_EXPORTS = {
    "Emu3Pipeline": "emu3_decoding.pipeline",
    "TextStreamer": "emu3_decoding.streaming",
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
