"""Training sequences and labels for Emu3 SFT, laid out as BAAI's and mindone's datasets do.

Text-to-image (BAAI's layout; its rule for labels)::

    bos  caption  boi "H*W" img  H rows of [W visual, eol]  eof  eoi
    labels: the token where it is a visual token, IGNORE_INDEX elsewhere

The caption is replaced by "" with probability `null_prompt_prob` (0.05), which trains the
unconditional branch that classifier-free guidance needs. mindone's last revision also ends
the sequence with eos; its label is ignored by the visual-only rule and nothing follows it, so
the loss is the same either way.

Video continuation (our layout, docs/video_layout.md: the image block with one frame per
latent frame, then eos as the generated block ends)::

    bos  caption  boi "H*W" img  T x (H rows of [W visual, eol], eof)  eoi  eos
    labels: the token where it is a visual token (every frame), IGNORE_INDEX elsewhere

Its prefix up to any frame's eof is the continuation prompt `emu3_decoding.video` gives the
model (bos + caption + boi "H*W" img + the given frames, block left open). The caption is
replaced by "" with probability `null_prompt_prob`, as for text-to-image.

VQA (mindone's layout; the mode-U prompt of `emu3_lm.processor`, then the answer)::

    bos "You are a helpful assistant. USER: " <image block> question ". ASSISTANT:"  response eos
    labels: IGNORE_INDEX on the prompt, the tokens of the response and eos

Labels are unshifted (position t holds the label of token t; the loss predicts it from the
tokens before). A sequence longer than `max_length` is an error naming the sample, never
truncated: a cut image block would teach the model broken grammar. Batches are padded on the
right with the pad id, labels IGNORE_INDEX and attention mask 0 there.
"""

from __future__ import annotations

import os

import numpy as np
from emu3_lm import blocks
from emu3_lm.loss import IGNORE_INDEX
from emu3_lm.processor import Emu3Processor

from .dataset import read_list

TASKS = ("t2i", "vqa", "video")
_CAPTIONED = ("t2i", "video")  # tasks whose caption may be dropped (null_prompt_prob)


def t2i_sequence(tokenizer, caption: str, codes) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels), int32 [n]: bos + caption + the image block; labels on visual tokens."""
    ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(caption),
                          blocks.block_ids(codes, tokenizer)]).astype(np.int32)
    labels = np.where(blocks.label_mask(ids, blocks.VisualIds.from_tokenizer(tokenizer)), ids, IGNORE_INDEX)
    return ids, labels.astype(np.int32)


def video_sequence(tokenizer, caption: str, codes) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels), int32 [n]: bos + caption + the video block (codes [t, h, w], t latent
    frames: `blocks.block_ids`) + eos; labels on the visual tokens of every frame."""
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"video codes must be [t, h, w], got shape {codes.shape}")
    ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(caption), blocks.block_ids(codes, tokenizer),
                          [tokenizer.eos_id]]).astype(np.int32)
    labels = np.where(blocks.label_mask(ids, blocks.VisualIds.from_tokenizer(tokenizer)), ids, IGNORE_INDEX)
    return ids, labels.astype(np.int32)


def vqa_sequence(processor: Emu3Processor, question: str, codes, response: str) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels), int32 [n]: the mode-U prompt (`processor.understanding_prompt_ids`),
    then response + eos; labels on the response and eos only."""
    tok = processor.tokenizer
    prompt = processor.understanding_prompt_ids(question, np.asarray(codes))
    answer = tok.encode(response) + [tok.eos_id]
    ids = np.asarray(prompt + answer, dtype=np.int32)
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    labels[len(prompt):] = answer
    return ids, labels


class SftDataset:
    """Prepared samples (a list file, see `emu3_train.dataset`) as training sequences.

    Args:
        list_path: OUT/list/train.json as `emu3 train prepare-t2i|prepare-vqa|prepare-video`
            (or the reference scripts) wrote it.
        tokenizer: an `emu3_lm.tokenizer.Emu3Tokenizer`.
        task: "t2i", "vqa" or "video".
        max_length: padded length of a batch; a longer sample is an error (`validate`).
        null_prompt_prob: T2I and video only, the probability of training on an empty caption.
        seed: with the epoch and the index, decides the null-prompt draws, so that a resumed
            run sees the same data.

    Samples are read from disk when used; nothing but the list is held.
    """

    def __init__(self, list_path: str | os.PathLike, tokenizer, task: str, max_length: int,
                 null_prompt_prob: float = 0.05, seed: int = 0):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if not 0.0 <= float(null_prompt_prob) <= 1.0:
            raise ValueError(f"null_prompt_prob must lie in [0, 1], got {null_prompt_prob}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.samples = read_list(list_path)
        if len(self.samples) == 0:
            raise ValueError(f"list file {self.samples.path} names no samples")
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.null_prompt_prob = float(null_prompt_prob)
        self.seed = seed
        self._processor = Emu3Processor(None, None, tokenizer) if task == "vqa" else None
        self.supervised: np.ndarray | None = None  # supervised tokens per sample, once `lengths` ran

    def __len__(self) -> int:
        return len(self.samples)

    def null_prompt(self, index: int, epoch: int = 0) -> bool:
        """Whether sample `index` is trained on an empty caption in `epoch` (T2I, video): a draw
        of numpy's default_rng([seed, epoch, index]), the same in every run and process."""
        if self.task not in _CAPTIONED or self.null_prompt_prob == 0.0:
            return False
        return bool(np.random.default_rng([self.seed, epoch, index]).random() < self.null_prompt_prob)

    def _sequence(self, index: int, null_prompt: bool) -> tuple[np.ndarray, np.ndarray, str]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"sample index {index!r} out of range [0, {len(self)})")
        sample = self.samples.read(int(index))
        where = f"sample {sample.name!r} ({sample.path})"
        try:
            if self.task != "video" and sample.images.ndim != 2:
                raise ValueError(f"it holds video codes {sample.images.shape}: a video sample, not {self.task} "
                                 "(use task video)")
            if self.task == "t2i":
                caption = "" if null_prompt else sample.texts
                ids, labels = t2i_sequence(self.tokenizer, caption, sample.images)
            elif self.task == "video":
                if sample.images.ndim != 3:
                    raise ValueError(f"it holds image codes {sample.images.shape}, not video codes [t, h, w] "
                                     "(prepared for text-to-image or VQA?)")
                caption = "" if null_prompt else sample.texts
                ids, labels = video_sequence(self.tokenizer, caption, sample.images)
            else:
                if sample.response is None:
                    raise ValueError("it has no 'response': not a VQA sample (prepared for text-to-image?)")
                ids, labels = vqa_sequence(self._processor, sample.texts, sample.images, sample.response)
        except ValueError as exc:  # e.g. a code beyond the tokenizer's visual tokens
            raise ValueError(f"{where}: {exc}") from None
        return ids, labels, where

    def example(self, index: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of sample `index` in `epoch`, int32 [n], unpadded.
        ValueError naming the sample if it is longer than max_length."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        ids, labels, where = self._sequence(index, self.null_prompt(index, epoch))
        if len(ids) > self.max_length:
            raise ValueError(f"{where} has {len(ids)} tokens, more than max_length={self.max_length}; "
                             "samples are never truncated: raise max_length or leave the sample out")
        return ids, labels

    def batch(self, indices, epoch: int = 0) -> dict[str, np.ndarray]:
        """Samples `indices` as int32 arrays [len(indices), max_length], right-padded:
        input_ids (pad id), labels (IGNORE_INDEX) and attention_mask (0) on the padding."""
        indices = list(indices)
        if not indices:
            raise ValueError("batch needs at least one sample index")
        shape = (len(indices), self.max_length)
        input_ids = np.full(shape, self.tokenizer.pad_id, dtype=np.int32)
        labels = np.full(shape, IGNORE_INDEX, dtype=np.int32)
        attention_mask = np.zeros(shape, dtype=np.int32)
        for row, index in enumerate(indices):
            ids, lab = self.example(index, epoch)
            n = len(ids)
            input_ids[row, :n] = ids
            labels[row, :n] = lab
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    def lengths(self) -> np.ndarray:
        """Token count of every sample with its full caption (the longest it can be), int64 [N].
        Reads every sample file once; errors name the file. Also records each sample's number
        of supervised tokens (`supervised`: the caption never holds any, so it is the same
        with an empty one)."""
        lengths, supervised = [], []
        for i in range(len(self)):
            ids, labels, _ = self._sequence(i, null_prompt=False)
            lengths.append(len(ids))
            supervised.append(int(np.count_nonzero(labels != IGNORE_INDEX)))
        self.supervised = np.array(supervised, dtype=np.int64)
        return np.array(lengths, dtype=np.int64)

    def validate(self) -> np.ndarray:
        """Check that every sample reads and fits max_length, before training starts.

        Raises ValueError naming the first sample that does not fit (and how many others do
        not); returns `lengths()` otherwise.
        """
        lengths = self.lengths()
        too_long = np.nonzero(lengths > self.max_length)[0]
        if len(too_long):
            first = int(too_long[0])
            path = self.samples.sample_path(first)
            name = self.samples.read(first).name
            others = (f"; {len(too_long) - 1} more samples are too long, the longest has {lengths.max()} tokens"
                      if len(too_long) > 1 else "")
            raise ValueError(f"sample {name!r} ({path}) has {lengths[first]} tokens, more than "
                             f"max_length={self.max_length}{others}; samples are never truncated: "
                             "raise max_length or leave them out")
        return lengths
