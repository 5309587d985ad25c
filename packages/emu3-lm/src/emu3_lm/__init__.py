"""emu3-lm: the Emu3 causal language model, its static KV cache, text tokenizer and processor.

    from emu3_lm import Emu3ForCausalLM, Emu3Tokenizer, Emu3Processor
    model = Emu3ForCausalLM.from_pretrained("path/to/Emu3-Gen")      # original or -hf layout
    tokenizer = Emu3Tokenizer.from_pretrained("path/to/Emu3-Gen")
"""

__version__ = "0.1.0"

# Exported lazily: importing the package (e.g. for the `emu3` command) does not load MindSpore.
_EXPORTS = {
    "Emu3LMConfig": "emu3_lm.config",
    "Emu3ForCausalLM": "emu3_lm.model",
    "Emu3Processor": "emu3_lm.processor",
    "Emu3Tokenizer": "emu3_lm.tokenizer",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
