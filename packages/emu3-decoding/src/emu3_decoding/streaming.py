"""Text as it is generated: a streamer that turns the tokens of `loop.generate` into text.

The decode loop hands a streamer the tokens of each position as they come (`loop.streamer_calls`:
an object with `put(ids)` and `end()`, or a callable). `TextStreamer` follows one sequence (an
`answer`): at each token it decodes the tokens so far and passes on the new end of the text,
except while that end is U+FFFD, the replacement character, which is what an unfinished
multi-byte character decodes to (a token can end halfway through the UTF-8 bytes of a
character); the character is passed on whole once its last byte arrives. The pieces joined are
the text `answer` returns: decoded without special tokens, up to the first eos, stripped.

Decoding the whole sequence at each token costs time that grows with its length: 0.15 ms for
a thousand tokens of the tiny tiktoken tokenizer, far less than a decode step of any model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class TextStreamer:
    """Pass on the text of one generated sequence as it grows.

    tokenizer: an `Emu3Tokenizer` (its `decode` and `eos_id`). on_text: called with each new
    piece of text (default: written to stdout and flushed). Tokens from the first eos on are
    ignored. With `strip` (as `answer` does), leading whitespace is dropped and trailing
    whitespace held back until text follows it, so the pieces join to
    `decode(tokens, skip_special_tokens=True).strip()`. `text` holds what was passed on so far.
    Use one streamer per sequence.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None = None, *,
                 skip_special_tokens: bool = True, strip: bool = True):
        self.tokenizer = tokenizer
        self.on_text = on_text or _print
        self.skip_special_tokens = skip_special_tokens
        self.strip = strip
        self.tokens: list[int] = []
        self.text = ""
        self.stopped = False  # eos seen

    def put(self, ids) -> None:
        """The next token of the sequence: an int or an array of one (a batch of one row)."""
        ids = np.asarray(ids).reshape(-1)
        if len(ids) != 1:
            raise ValueError(f"a TextStreamer follows one sequence, got {len(ids)} tokens at once")
        if self.stopped:
            return
        token = int(ids[0])
        if token == self.tokenizer.eos_id:
            self.stopped = True
            return
        self.tokens.append(token)
        self._pass_on(final=False)

    def end(self) -> None:
        """The sequence is complete: pass on what was held back (trailing whitespace is dropped
        with `strip`, a final incomplete character is passed on as U+FFFD, as `decode` gives it)."""
        self._pass_on(final=True)

    def _pass_on(self, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=self.skip_special_tokens)
        if not final and text.endswith(REPLACEMENT):
            return  # a character still incomplete: wait for its last bytes
        if self.strip:  # trailing whitespace waits until text follows it, or is dropped at the end
            text = text.strip()
        if not text.startswith(self.text) or len(text) == len(self.text):
            return
        piece = text[len(self.text):]
        self.text = text
        self.on_text(piece)
