"""emu3-vq."""

__version__ = "0.1.0"
