"""Emu3Tokenizer over its three formats, on tiny vocabularies built by emu3_lm.tiny_assets."""

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import unicodedata

import numpy as np
import pytest

from emu3_lm.tiny_assets import (
    build_hf_tokenizer,
    build_sentencepiece_tokenizer,
    build_tiktoken_tokenizer,
    learn_bpe_ranks,
)
from emu3_lm.tokenizer import (
    IMAGE_TOKENS,
    TEXT_SPECIAL_TOKENS,
    Emu3Tokenizer,
    load_tiktoken_ranks,
    save_tiktoken_ranks,
    visual_token,
)

N_VISUAL = 64
FORMATS = ["tiktoken", "tokenizer.json", "tokenizer.json-from-tiktoken", "sentencepiece"]
TEXTS = [
    "a red circle on a white background",
    "Héllo  wörld!\n\n  tabs\tand   spaces ",
    "720*1280 ratio 16:9, area 518400.",
    "émojis ☃ and 中文 and <not special> and <|not special|>",
    "",
]
MIXED = ("<|extra_203|>a red circle<|image start|>90*90<|image token|><|visual token 000003|>"
         "<|visual token 000063|><|extra_200|><|extra_201|><|image end|> done.<|extra_204|>")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {
        "tiktoken": build_tiktoken_tokenizer(root / "a", num_visual_tokens=N_VISUAL),
        "tokenizer.json": build_hf_tokenizer(root / "b", num_visual_tokens=N_VISUAL),
        "tokenizer.json-from-tiktoken": build_hf_tokenizer(root / "b2", num_visual_tokens=N_VISUAL,
                                                           ranks=learn_bpe_ranks()),
        "sentencepiece": build_sentencepiece_tokenizer(root / "c", num_visual_tokens=N_VISUAL),
    }


@pytest.fixture(scope="module")
def toks(dirs):
    return {name: Emu3Tokenizer.from_pretrained(d) for name, d in dirs.items()}


def test_formats_detected(toks):
    assert toks["tiktoken"].format == "tiktoken"
    assert toks["tokenizer.json"].format == "tokenizer.json"
    assert toks["tokenizer.json-from-tiktoken"].format == "tokenizer.json"
    assert toks["sentencepiece"].format == "sentencepiece"


@pytest.mark.parametrize("name", FORMATS)
def test_special_ids_follow_numbering(toks, dirs, name):
    tok = toks[name]
    start = tok.text_vocab_size
    if name == "tiktoken":
        with open(dirs[name] / "emu3.tiktoken") as f:
            assert start == sum(1 for line in f if line.strip())  # numbered from len(ranks)
    text_specials = list(TEXT_SPECIAL_TOKENS)
    if tok.format == "tokenizer.json":
        text_specials[3] = "<image>"  # -hf renames <|extra_0|>
        assert tok.token_to_id("<|extra_0|>") is None
    for i, token in enumerate(text_specials):
        assert tok.token_to_id(token) == start + i
        assert tok.id_to_token(start + i) == token
    n_text = len(TEXT_SPECIAL_TOKENS)
    assert [tok.token_to_id(t) for t in IMAGE_TOKENS] == [start + n_text, start + n_text + 1, start + n_text + 2]
    assert tok.first_visual_id == start + n_text + 3
    assert tok.num_visual_tokens == N_VISUAL
    assert len(tok) == tok.vocab_size == start + n_text + 3 + N_VISUAL
    assert tok.token_to_id(visual_token(N_VISUAL - 1)) == len(tok) - 1

    assert tok.pad_id == start  # <|endoftext|>
    assert (tok.eol_id, tok.eof_id) == (start + 3 + 200, start + 3 + 201)
    assert (tok.bos_id, tok.eos_id) == (start + 3 + 203, start + 3 + 204)
    assert (tok.img_id, tok.boi_id, tok.eoi_id) == (start + n_text, start + n_text + 1, start + n_text + 2)


@pytest.mark.parametrize("name", FORMATS)
def test_visual_ids_vectorised(toks, name):
    tok = toks[name]
    assert tok.visual_token_id(5) == tok.first_visual_id + 5
    assert isinstance(tok.visual_token_id(5), int)
    codes = np.array([[0, 7], [N_VISUAL - 1, 3]], dtype=np.int32)
    ids = tok.visual_token_id(codes)
    assert ids.shape == (2, 2)
    assert [tok.id_to_token(i) for i in ids.ravel()] == [visual_token(int(c)) for c in codes.ravel()]
    np.testing.assert_array_equal(tok.visual_code(ids), codes)
    assert tok.visual_code(tok.first_visual_id + 9) == 9
    assert tok.is_visual(ids).all() and not tok.is_visual(tok.boi_id)
    with pytest.raises(ValueError, match="out of range"):
        tok.visual_token_id(np.array([0, N_VISUAL]))
    with pytest.raises(ValueError, match="not a visual token"):
        tok.visual_code(np.array([tok.first_visual_id, tok.eol_id]))
    with pytest.raises(TypeError):
        tok.visual_token_id(np.array([1.5]))


@pytest.mark.parametrize("name", FORMATS)
def test_round_trip(toks, name):
    tok = toks[name]
    for text in TEXTS + [MIXED]:
        ids = tok.encode(text)
        assert all(isinstance(i, int) and 0 <= i < len(tok) for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode(np.array(ids, dtype=np.int32)) == text


@pytest.mark.parametrize("name", FORMATS)
def test_special_strings_map_to_ids(toks, name):
    tok = toks[name]
    ids = tok.encode(MIXED)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    boi = ids.index(tok.boi_id)
    img = ids.index(tok.img_id)
    assert tok.decode(ids[boi + 1:img]) == "90*90"
    assert ids[img + 1:img + 7] == [tok.visual_token_id(3), tok.visual_token_id(63), tok.eol_id,
                                     tok.eof_id, tok.eoi_id] + tok.encode(" done.")[:1]
    # text between special tokens is encoded on its own, as the original does
    assert ids[1:boi] == tok.encode("a red circle")
    # a visual token beyond the codebook is not special: plain text
    beyond = tok.encode(visual_token(N_VISUAL))
    assert not any(tok.is_special(beyond))

    # only the allowed special strings map to ids; others are ordinary text
    none = tok.encode(MIXED, allowed_special=set())
    assert not any(tok.is_special(none))
    assert tok.decode(none) == MIXED
    assert none == tok.encode_ordinary(MIXED)
    only_bos = tok.encode(MIXED, allowed_special={"<|extra_203|>"})
    assert [i for i in only_bos if tok.is_special(i)] == [tok.bos_id]
    with pytest.raises(ValueError, match="not special"):
        tok.encode("x", allowed_special={"hello"})
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special="none")


@pytest.mark.parametrize("name", FORMATS)
def test_skip_special_tokens(toks, name):
    tok = toks[name]
    ids = tok.encode(MIXED)
    text = tok.decode(ids, skip_special_tokens=True)
    # specials and visual tokens go; ordinary text (the "90*90" size text too) stays
    assert text == "a red circle90*90 done."
    pad = [tok.pad_id] * 3 + tok.encode("hi there") + [tok.eos_id]
    assert tok.decode(pad, skip_special_tokens=True) == "hi there"
    assert tok.decode(pad) == "<|endoftext|>" * 3 + "hi there<|extra_204|>"


def test_digit_splitting_differs_between_original_and_hf(toks):
    """Same merges, different pre-split regex: the original (Qwen regex) splits digits one by
    one; the -hf tokenizer.json (GPT-2 regex) keeps digit runs together, so multi-digit merges
    apply. Text without digits or contractions gets the same ids."""
    orig, hf = toks["tiktoken"], toks["tokenizer.json-from-tiktoken"]
    assert orig.text_vocab_size == hf.text_vocab_size
    for text in ["a red circle on a white background", "best quality, masterpiece."]:
        assert orig.encode(text) == hf.encode(text)
    for number in ["720", "90", "1280"]:
        o, h = orig.encode(number), hf.encode(number)
        assert [orig.decode([i]) for i in o] == list(number)  # one token per digit
        assert orig.decode(o) == hf.decode(h) == number
    assert len(hf.encode("720")) < 3 and len(hf.encode("90")) == 1  # learnt merges "720", "90"
    assert orig.encode("90*90") != hf.encode("90*90")
    # the original NFC-normalises first; tokenizer.json (no normalizer) does not
    assert orig.encode("e\u0301") == orig.encode("\u00e9")
    assert hf.encode("e\u0301") != hf.encode("\u00e9")


def test_token_strings(toks):
    orig, hf = toks["tiktoken"], toks["tokenizer.json-from-tiktoken"]
    # ordinary tokens are spelled in byte-level characters in both BPE formats
    for i in range(orig.text_vocab_size):
        assert orig.id_to_token(i) == hf.id_to_token(i)
        assert orig.token_to_id(orig.id_to_token(i)) == i
    assert orig.id_to_token(orig.encode(" ")[0]) == "Ġ"  # GPT-2's byte-to-character table
    assert "".join(orig.id_to_token(i) for i in orig.encode(" red\n")) == "ĠredĊ"
    assert orig.token_to_id("no such token") is None
    sp = toks["sentencepiece"]
    piece = sp.id_to_token(sp.encode("a")[0])
    assert sp.token_to_id(piece) == sp.encode("a")[0]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        sp.id_to_token(len(sp))


@pytest.mark.parametrize("name", FORMATS)
def test_save_pretrained_same_format(toks, dirs, name, tmp_path):
    tok = toks[name]
    tok.save_pretrained(tmp_path / "saved")
    again = Emu3Tokenizer.from_pretrained(tmp_path / "saved")
    assert again.format == tok.format
    assert len(again) == len(tok) and again.special_tokens == tok.special_tokens
    for attr in ("pad_id", "bos_id", "eos_id", "img_id", "boi_id", "eoi_id", "eol_id", "eof_id"):
        assert getattr(again, attr) == getattr(tok, attr)
    for text in TEXTS + [MIXED]:
        assert again.encode(text) == tok.encode(text)
    if name == "tiktoken":
        for f in ("emu3.tiktoken", "emu3_vision_tokens.txt"):
            assert (tmp_path / "saved" / f).read_bytes() == (dirs[name] / f).read_bytes()


def test_real_size_numbering(tmp_path):
    """With the released sizes (151643 ranks, 32768 visual tokens) the ids are the known ones."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"\xff\xfe" + i.to_bytes(3, "big"): i for i in range(256, 151643)})  # filler tokens
    save_tiktoken_ranks(tmp_path / "emu3.tiktoken", ranks)
    lines = list(IMAGE_TOKENS) + [visual_token(k) for k in range(32768)]
    (tmp_path / "emu3_vision_tokens.txt").write_text("\n".join(lines) + "\n")
    tok = Emu3Tokenizer.from_pretrained(tmp_path)
    assert len(tok) == 184622
    assert (tok.pad_id, tok.eol_id, tok.eof_id, tok.bos_id, tok.eos_id) == (151643, 151846, 151847, 151849, 151850)
    assert (tok.img_id, tok.boi_id, tok.eoi_id, tok.first_visual_id) == (151851, 151852, 151853, 151854)
    assert tok.token_to_id("<|extra_0|>") == 151646 and tok.visual_token_id(32767) == 184621


def test_decode_rejects_out_of_range(toks):
    tok = toks["tiktoken"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([1, len(tok)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])


# ---- bad files --------------------------------------------------------------------------------

def test_missing_directory_and_files(tmp_path, dirs):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Emu3Tokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        Emu3Tokenizer.from_pretrained(tmp_path / "empty")
    d = tmp_path / "novision"
    shutil.copytree(dirs["tiktoken"], d)
    os.remove(d / "emu3_vision_tokens.txt")
    with pytest.raises(FileNotFoundError, match="emu3_vision_tokens.txt"):
        Emu3Tokenizer.from_pretrained(d)
    with pytest.raises(ValueError, match="unknown tokenizer format"):
        Emu3Tokenizer.from_pretrained(dirs["tiktoken"], format="bpe")


def _copy_tiktoken(dirs, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(dirs["tiktoken"], d)
    return d


def test_ill_formed_rank_file(tmp_path, dirs):
    d = _copy_tiktoken(dirs, tmp_path, "badline")
    with open(d / "emu3.tiktoken", "a") as f:
        f.write("not-a-valid-line\n")
    with pytest.raises(ValueError, match=r"emu3.tiktoken:\d+: expected"):
        Emu3Tokenizer.from_pretrained(d)

    d = _copy_tiktoken(dirs, tmp_path, "gap")
    with open(d / "emu3.tiktoken", "a") as f:
        f.write(f"{base64.b64encode(b'zzzq').decode()} 100000\n")
    with pytest.raises(ValueError, match="ranks must be exactly"):
        load_tiktoken_ranks(d / "emu3.tiktoken")

    d = _copy_tiktoken(dirs, tmp_path, "nobyte")
    lines = (d / "emu3.tiktoken").read_text().splitlines()
    # drop byte 0 and renumber so only the missing byte is wrong
    kept = [line.split()[0] for line in lines[1:]]
    (d / "emu3.tiktoken").write_text("".join(f"{t} {i}\n" for i, t in enumerate(kept)))
    with pytest.raises(ValueError, match="single bytes have no rank"):
        Emu3Tokenizer.from_pretrained(d)


def test_vision_tokens_must_be_complete(tmp_path, dirs):
    d = _copy_tiktoken(dirs, tmp_path, "noboi")
    lines = (d / "emu3_vision_tokens.txt").read_text().splitlines()
    (d / "emu3_vision_tokens.txt").write_text("\n".join(t for t in lines if t != "<|image start|>") + "\n")
    with pytest.raises(ValueError, match="lacks the boi token"):
        Emu3Tokenizer.from_pretrained(d)
    d = _copy_tiktoken(dirs, tmp_path, "gapvisual")
    (d / "emu3_vision_tokens.txt").write_text("\n".join(lines[:10] + lines[11:]) + "\n")
    with pytest.raises(ValueError, match="contiguously"):
        Emu3Tokenizer.from_pretrained(d)


def test_bad_tokenizer_json_and_sentencepiece(tmp_path, dirs):
    d = tmp_path / "badjson"
    d.mkdir()
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Emu3Tokenizer.from_pretrained(d)
    (d / "tokenizer.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(ValueError, match="added_tokens"):
        Emu3Tokenizer.from_pretrained(d)

    d = tmp_path / "spnocfg"
    shutil.copytree(dirs["sentencepiece"], d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["num_visual_tokens"]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_visual_tokens"):
        Emu3Tokenizer.from_pretrained(d)
    cfg["num_visual_tokens"], cfg["special_tokens_start"] = 8, 7
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="special_tokens_start"):
        Emu3Tokenizer.from_pretrained(d)
    (d / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        Emu3Tokenizer.from_pretrained(d)


# ---- parity with the reference implementations --------------------------------------------------

PARITY_TEXTS = TEXTS + [MIXED, "<image>What is this?<|extra_204|>", "I'm 90*90 <|visual token 000099|>"]


@pytest.mark.parity
@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer.json-from-tiktoken"])
def test_hf_format_matches_transformers(toks, dirs, name):
    transformers = pytest.importorskip("transformers")
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(dirs[name] / "tokenizer.json"))
    tok = toks[name]
    for text in PARITY_TEXTS:
        ids = ref.encode(text, add_special_tokens=False)
        assert tok.encode(text) == ids
        assert tok.decode(ids) == ref.decode(ids)
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def _original_tokenizer_module():
    """The original BAAI tokenization_emu3.py, read from a local mirror when one is present."""
    git_dir = "/work/.mirror/baaivision+Emu3/repo"
    if not os.path.isdir(git_dir) or shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "-C", git_dir, "show", "HEAD:emu3/mllm/tokenization_emu3.py"],
                          capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


@pytest.mark.parity
def test_tiktoken_format_matches_original(toks, dirs, tmp_path):
    pytest.importorskip("transformers")
    source = _original_tokenizer_module()
    if source is None:
        pytest.skip("original BAAI Emu3 source not available")
    path = tmp_path / "tokenization_emu3_original.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tokenization_emu3_original", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tok = toks["tiktoken"]
    module.SPECIAL_START_ID = tok.text_vocab_size  # the original hard-codes 151643 = len(real ranks)
    ref = module.Emu3Tokenizer(str(dirs["tiktoken"] / "emu3.tiktoken"),
                               str(dirs["tiktoken"] / "emu3_vision_tokens.txt"))
    assert len(ref) == len(tok)
    for name in ("bos", "eos", "pad", "img", "boi", "eoi", "eol", "eof"):
        assert ref.convert_tokens_to_ids(getattr(ref, f"{name}_token")) == getattr(tok, f"{name}_id")
    for text in PARITY_TEXTS + ["e\u0301 NFC"]:
        ids = ref(text)["input_ids"]
        assert tok.encode(text) == ids
        assert tok.decode(ids) == ref.decode(ids) == unicodedata.normalize("NFC", text)
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
