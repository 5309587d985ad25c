"""emu3-lm."""

__version__ = "0.1.0"
