"""Training sequences token by token against constructions written here from the token strings,
the way the reference datasets build them (one string, tokenised in one go)."""

from __future__ import annotations

import numpy as np
import pytest
from emu3_lm.processor import Emu3Processor
from emu3_train.dataset import feature_dir, list_path, write_list, write_sample
from emu3_train.sequences import SftDataset, t2i_sequence

IGNORE = -100
SYSTEM = "You are a helpful assistant. USER: "


def _make_list(root, samples):
    """samples: (name, codes, texts, response or None) -> the list file."""
    files = []
    for name, codes, texts, response in samples:
        write_sample(feature_dir(root) / f"{name}.ckpt", name, codes, texts, response)
        files.append(f"{name}.ckpt")
    return write_list(list_path(root), feature_dir(root).resolve(), files)


def _codes(h, w, seed):
    return np.random.default_rng(seed).integers(0, 32, (h, w))


def _reference_image_prompt(tok, codes):
    """boi + "h*w" + img + rows of visual token strings joined by eol + eol + eof + eoi, as a string."""
    h, w = codes.shape
    rows = ["".join(f"<|visual token {c:06d}|>" for c in row) for row in codes]
    return ("<|image start|>" + f"{h}*{w}" + "<|image token|>" + "<|extra_200|>".join(rows)
            + "<|extra_200|>" + "<|extra_201|>" + "<|image end|>")


def _by_hand_block(tok, codes):
    """The same block from the ids of the named tokens, row by row."""
    sp = tok.special_tokens
    h, w = codes.shape
    ids = [sp["<|image start|>"]] + tok.encode(f"{h}*{w}") + [sp["<|image token|>"]]
    for row in codes:
        ids += [sp[f"<|visual token {c:06d}|>"] for c in row] + [sp["<|extra_200|>"]]
    return ids + [sp["<|extra_201|>"], sp["<|image end|>"]]


@pytest.fixture
def t2i_data(tmp_path):
    samples = [("s0", _codes(3, 4, 0), "a red circle on a white background", None),
               ("s1", _codes(2, 5, 1), "a portrait of young girl.", None)]
    return _make_list(tmp_path, samples), samples


@pytest.fixture
def vqa_data(tmp_path):
    samples = [("q0", _codes(3, 3, 2), "What is in this picture?", "a cat on a mat."),
               ("q1", _codes(2, 4, 3), "Please describe the image", "It shows a blue square")]
    return _make_list(tmp_path, samples), samples


def test_t2i_layout_and_labels(tokenizer, t2i_data):
    tok = tokenizer
    lp, samples = t2i_data
    ds = SftDataset(lp, tok, "t2i", max_length=64, null_prompt_prob=0.0)
    assert len(ds) == 2
    first_visual = tok.special_tokens["<|visual token 000000|>"]
    for i, (_, codes, caption, _) in enumerate(samples):
        ids, labels = ds.example(i)
        assert ids.dtype == np.int32 and labels.dtype == np.int32
        expected = [tok.special_tokens["<|extra_203|>"]] + tok.encode(caption) + _by_hand_block(tok, codes)
        assert ids.tolist() == expected
        # the reference builds one string and tokenises it
        assert ids.tolist() == tok.encode("<|extra_203|>" + caption + _reference_image_prompt(tok, codes))
        # and its start is the generation prompt (mode G) the model is later given
        h, w = codes.shape
        prompt = Emu3Processor(None, None, tok).generation_prompt_ids(caption, h, w)
        assert ids[:len(prompt)].tolist() == prompt
        # labels: the visual tokens (codes in order), nothing else
        kept = labels != IGNORE
        assert kept.sum() == codes.size
        assert np.array_equal(labels[kept] - first_visual, codes.reshape(-1))
        assert np.array_equal(labels[kept], ids[kept])
        assert not np.isin(labels, [tok.eol_id, tok.eof_id, tok.eoi_id, tok.bos_id]).any()


def test_vqa_layout_and_labels(tokenizer, vqa_data):
    tok = tokenizer
    lp, samples = vqa_data
    ds = SftDataset(lp, tok, "vqa", max_length=80)
    for i, (_, codes, question, response) in enumerate(samples):
        ids, labels = ds.example(i)
        answer = tok.encode(response) + [tok.special_tokens["<|extra_204|>"]]
        expected = ([tok.special_tokens["<|extra_203|>"]] + tok.encode(SYSTEM) + _by_hand_block(tok, codes)
                    + tok.encode(question + ". ASSISTANT:") + answer)
        assert ids.tolist() == expected
        # the reference: bos + chat template (one string) and the response + eos tokenised as a pair
        chat = SYSTEM + _reference_image_prompt(tok, codes) + question + ". ASSISTANT:"
        prompt = tok.encode("<|extra_203|>" + chat)
        assert ids.tolist() == prompt + tok.encode(response + "<|extra_204|>")
        # labels: the answer and eos, nothing of the prompt
        assert np.all(labels[:len(prompt)] == IGNORE)
        assert labels[len(prompt):].tolist() == answer


def test_batch_pads_on_the_right(tokenizer, t2i_data):
    lp, _ = t2i_data
    ds = SftDataset(lp, tokenizer, "t2i", max_length=64, null_prompt_prob=0.0)
    batch = ds.batch([1, 0, 1])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    for key, value in batch.items():
        assert value.shape == (3, 64) and value.dtype == np.int32, key
    for row, index in enumerate([1, 0, 1]):
        ids, labels = ds.example(index)
        n = len(ids)
        assert n < 64
        assert np.array_equal(batch["input_ids"][row, :n], ids)
        assert np.array_equal(batch["labels"][row, :n], labels)
        assert np.all(batch["attention_mask"][row, :n] == 1)
        assert np.all(batch["input_ids"][row, n:] == tokenizer.pad_id)
        assert np.all(batch["labels"][row, n:] == IGNORE)
        assert np.all(batch["attention_mask"][row, n:] == 0)


def test_null_prompt_frequency_and_determinism(tokenizer, t2i_data):
    lp, samples = t2i_data
    codes = samples[0][1]
    empty, _ = t2i_sequence(tokenizer, "", codes)
    full, _ = t2i_sequence(tokenizer, samples[0][2], codes)
    ds = SftDataset(lp, tokenizer, "t2i", max_length=64, null_prompt_prob=0.25, seed=3)

    draws = [ds.example(0, epoch)[0] for epoch in range(300)]
    assert all(np.array_equal(d, empty) or np.array_equal(d, full) for d in draws)
    null = np.array([np.array_equal(d, empty) for d in draws])
    assert abs(null.mean() - 0.25) < 0.08  # 300 draws: sd 0.025
    flags = np.array([ds.null_prompt(i, e) for i in range(100) for e in range(50)])
    assert abs(flags.mean() - 0.25) < 0.025  # 5000 draws: sd 0.006
    assert np.array_equal(null, [ds.null_prompt(0, e) for e in range(300)])

    # a function of (seed, epoch, index): a new dataset (a resumed run) draws the same
    again = SftDataset(lp, tokenizer, "t2i", max_length=64, null_prompt_prob=0.25, seed=3)
    assert [again.null_prompt(i, e) for i in range(100) for e in range(50)] == flags.tolist()
    other = SftDataset(lp, tokenizer, "t2i", max_length=64, null_prompt_prob=0.25, seed=4)
    assert [other.null_prompt(i, e) for i in range(100) for e in range(50)] != flags.tolist()
    # never for VQA, never with p = 0, always with p = 1
    assert not SftDataset(lp, tokenizer, "t2i", max_length=64, null_prompt_prob=0.0).null_prompt(0, 0)
    always = SftDataset(lp, tokenizer, "t2i", max_length=64, null_prompt_prob=1.0)
    assert np.array_equal(always.example(0, 5)[0], empty)


def test_vqa_ignores_the_null_prompt(tokenizer, vqa_data):
    lp, _ = vqa_data
    ds = SftDataset(lp, tokenizer, "vqa", max_length=80, null_prompt_prob=1.0)
    assert not ds.null_prompt(0, 0)
    assert np.array_equal(ds.example(0, 0)[0], SftDataset(lp, tokenizer, "vqa", max_length=80).example(0)[0])


def test_too_long_is_an_error_naming_the_sample(tokenizer, t2i_data):
    lp, _ = t2i_data
    n0 = len(SftDataset(lp, tokenizer, "t2i", 1000, null_prompt_prob=0.0).example(0)[0])
    n1 = len(SftDataset(lp, tokenizer, "t2i", 1000, null_prompt_prob=0.0).example(1)[0])
    assert n0 != n1
    short = min(n0, n1)
    ds = SftDataset(lp, tokenizer, "t2i", max_length=short, null_prompt_prob=0.0)
    long_index, long_name = (0, "s0") if n0 > n1 else (1, "s1")
    message = rf"sample '{long_name}' .*{long_name}\.ckpt.* has {max(n0, n1)} tokens, more than max_length={short}"
    with pytest.raises(ValueError, match=message):
        ds.example(long_index)
    with pytest.raises(ValueError, match=long_name):
        ds.batch([0, 1])
    with pytest.raises(ValueError, match=rf"sample '{long_name}'"):
        ds.validate()
    assert ds.example(1 - long_index)[0].shape == (short,)  # exactly max_length fits

    tight = SftDataset(lp, tokenizer, "t2i", max_length=short - 1, null_prompt_prob=0.0)
    with pytest.raises(ValueError, match=r"sample 's0' .*1 more samples are too long"):
        tight.validate()
    assert SftDataset(lp, tokenizer, "t2i", max_length=max(n0, n1)).validate().tolist() == [n0, n1]


def test_validate_reads_every_sample(tokenizer, t2i_data):
    lp, _ = t2i_data
    ds = SftDataset(lp, tokenizer, "t2i", max_length=1000)
    ds.samples.sample_path(1).unlink()
    with pytest.raises(FileNotFoundError, match="s1.ckpt"):
        ds.validate()


def test_wrong_data_for_the_task_names_the_sample(tokenizer, t2i_data, tmp_path):
    lp, _ = t2i_data
    with pytest.raises(ValueError, match=r"sample 's0' .*no 'response'"):
        SftDataset(lp, tokenizer, "vqa", max_length=1000).example(0)
    big = _make_list(tmp_path / "big", [("big", np.full((2, 2), 100), "x", None)])  # 64 visual tokens only
    with pytest.raises(ValueError, match=r"sample 'big' .*out of range"):
        SftDataset(big, tokenizer, "t2i", max_length=1000).example(0)


def test_arguments_are_checked(tokenizer, t2i_data):
    lp, _ = t2i_data
    with pytest.raises(ValueError, match="unknown task 'img_gen'"):
        SftDataset(lp, tokenizer, "img_gen", 64)
    for kwargs, message in [({"max_length": 0}, "max_length"), ({"max_length": 64, "null_prompt_prob": 1.5},
                                                                 "null_prompt_prob"),
                            ({"max_length": 64, "seed": -1}, "seed")]:
        with pytest.raises(ValueError, match=message):
            SftDataset(lp, tokenizer, "t2i", **kwargs)
    ds = SftDataset(lp, tokenizer, "t2i", 64)
    with pytest.raises(IndexError):
        ds.example(2)
    with pytest.raises(ValueError, match="epoch"):
        ds.example(0, epoch=-1)
