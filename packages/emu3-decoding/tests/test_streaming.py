"""Streaming: the decode loop hands each position's tokens to a streamer as they come, and
`TextStreamer` turns one sequence into text pieces that never split a character and join to
the answer returned without streaming."""

import numpy as np
import pytest
from emu3_decoding import loop
from emu3_decoding.sampling import Sampling
from emu3_decoding.streaming import REPLACEMENT, TextStreamer
from emu3_lm.blocks import image_table
from PIL import Image


def picture(seed=0, size=32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_text_streamer_never_splits_a_character(pipe):
    """Multi-byte characters span several tokens of the tiny tokenizer (each decodes alone to
    U+FFFD): no piece holds U+FFFD, and the pieces join to decode(...).strip()."""
    tok = pipe.processor.tokenizer
    text = "  héllo wörld 世界 🙂!  "
    ids = tok.encode(text)
    assert any(REPLACEMENT in tok.decode([i]) for i in ids)  # the case under test happens
    pieces = []
    streamer = TextStreamer(tok, pieces.append)
    for i in [*ids, tok.eos_id, tok.pad_id, tok.encode("x")[0]]:  # after eos: ignored
        streamer.put(np.array([i]))
    streamer.end()
    assert not any(REPLACEMENT in p for p in pieces)
    assert "".join(pieces) == streamer.text == text.strip()
    assert len(pieces) > 5  # piece by piece, not all at the end
    raw = TextStreamer(tok, pieces.append, strip=False)
    for i in ids:
        raw.put(i)
    raw.end()
    assert raw.text == text
    with pytest.raises(ValueError, match="follows one sequence"):
        raw.put(np.array([1, 2]))


def test_an_incomplete_character_at_the_end_comes_out_as_decode_gives_it(pipe):
    tok = pipe.processor.tokenizer
    ids = tok.encode("ab世")[:-1]  # the last byte of 世 missing
    pieces = []
    streamer = TextStreamer(tok, pieces.append)
    for i in ids:
        streamer.put(i)
    assert REPLACEMENT not in streamer.text
    streamer.end()
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True).strip()


def test_the_loop_streams_each_position(tiny_model, ids):
    """generate(streamer=callable): one [B] array per position, in order, equal to the returned
    tokens; an object's end() is called once at the end. Not for a table."""
    prompts = [[ids.bos, 11, 12, 13], [ids.bos, 20, 21]]
    seen = []
    tokens = loop.generate(tiny_model, prompts, max_new_tokens=10, sampling=Sampling(top_k=40), seed=2,
                           streamer=seen.append, eos_id=ids.eos, pad_id=ids.pad)
    assert all(s.shape == (2,) and s.dtype == np.int64 for s in seen)
    np.testing.assert_array_equal(np.stack(seen, axis=1), tokens[:, : len(seen)])

    class Recorder:
        def __init__(self):
            self.puts, self.ends = 0, 0

        def put(self, ids):
            self.puts += 1

        def end(self):
            self.ends += 1

    rec = Recorder()
    loop.generate(tiny_model, prompts[:1], max_new_tokens=6, streamer=rec)
    assert rec.ends == 1 and 1 <= rec.puts <= 6
    with pytest.raises(ValueError, match="a constrained block \\(table\\) is not streamed"):
        loop.generate(tiny_model, prompts[:1], table=image_table(2, 2, ids), streamer=rec)
    with pytest.raises(TypeError, match="streamer must be callable or have a put"):
        loop.generate(tiny_model, prompts[:1], max_new_tokens=6, streamer=42)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_k": 200, "seed": 5}],
                         ids=["greedy", "sampled"])
def test_streamed_answer_equals_the_answer(pipe, sampling):
    image = picture(3)
    plain = pipe.answer(image, "what is this?", max_new_tokens=24, **sampling)
    pieces = []
    streamed = pipe.answer(image, "what is this?", max_new_tokens=24,
                           streamer=TextStreamer(pipe.processor.tokenizer, pieces.append), **sampling)
    assert streamed.text == plain.text
    assert "".join(pieces) == plain.text and len(pieces) > 1
