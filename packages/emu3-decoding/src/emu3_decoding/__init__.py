"""emu3-decoding."""

__version__ = "0.1.0"
