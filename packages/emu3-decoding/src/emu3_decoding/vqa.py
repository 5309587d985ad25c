"""Visual question answering: the original multimodal_understanding.py recipe.

Prompt (mode U): bos + "You are a helpful assistant. USER: " + image block + question +
". ASSISTANT:"; greedy decoding over the whole vocabulary, up to 1024 new tokens, stopping at
eos; the answer is the decoded text without special tokens, stripped. A `streamer` sees the
tokens as they come (`streaming.TextStreamer` prints the text as it grows).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from .loop import Progress, check_max_new_tokens, generate, streamer_calls
from .sampling import GREEDY, Sampling, check_seed


def _load(image):
    if isinstance(image, (str, os.PathLike)):
        from emu3_vq.media import load_image

        return load_image(image)
    return image


def answer(model, processor, image, question: str, max_new_tokens: int = 1024, *,
           sampling: Sampling = GREEDY, seed: int | None = None,
           progress: Callable[[Progress], None] | None = None, streamer=None) -> str:
    """Answer `question` about `image` (a PIL image or a path); greedy unless `sampling` says
    otherwise. Stops at eos or after max_new_tokens (or at the end of the model's context).
    streamer: receives each new token id as an array [1] (`loop.streamer_calls`), e.g. a
    `streaming.TextStreamer`, whose pieces join to the returned text. The arguments are checked
    before the image is encoded."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    check_max_new_tokens(max_new_tokens)
    check_seed(seed)
    if streamer is not None:
        streamer_calls(streamer)
    codes = processor.encode_images([_load(image)])[0]
    prompt = processor.understanding_prompt_ids(question, codes)
    tok = processor.tokenizer
    tokens = generate(model, [prompt], max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                      progress=progress, eos_id=tok.eos_id, pad_id=tok.pad_id, streamer=streamer)[0]
    ends = np.nonzero(tokens == tok.eos_id)[0]
    if len(ends):
        tokens = tokens[: ends[0]]
    return tok.decode(tokens, skip_special_tokens=True).strip()
