"""Build small Emu3 tokenizer directories in each of the three formats.

Used by tests across packages and by the embedded demo model: the files are real (the same
names and layouts as the released checkpoints), only the vocabularies are tiny. Special and
visual tokens follow the Emu3 numbering rule: they start right after the ordinary vocabulary.
"""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from pathlib import Path

from .tokenizer import (
    CONFIG_FILE,
    IMAGE_TOKENS,
    NAMED_TOKENS,
    SENTENCEPIECE_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TIKTOKEN_FILE,
    TOKENIZER_JSON,
    VISION_TOKENS_FILE,
    _write_json,
    emu3_special_tokens,
    save_tiktoken_ranks,
    token_bytes_to_str,
    visual_token,
)

TINY_CORPUS = (
    "A red circle on a white background, masterpiece, film grained, best quality.",
    "a portrait of young girl. a shiba inu running under the rain at 720*720 pixels.",
    "You are a helpful assistant. USER: Please describe the image. ASSISTANT: a cat on a mat.",
    "The quick brown fox jumps over the lazy dog 12 times in 2024, 16:9 and 1:1 ratios.",
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits,",
    "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark.",
    "Image sizes 90*90, 68*120, 120*68, 4*4, 8*6; numbers 100 200 300 720 1280 518400.",
    "What is in this picture? It shows a blue square and a green triangle next to a tree.",
)

# Whitespace-led words and runs of digits kept together, like the regexes that made the real
# vocabularies: the learnt merges then include multi-digit tokens such as "90" and "720".
_LEARN_SPLIT = re.compile(r" ?[^\s]+|\s+")


def learn_bpe_ranks(texts=TINY_CORPUS, num_merges: int = 200) -> dict[bytes, int]:
    """Byte-level BPE ranks: the 256 single bytes, then `num_merges` merges learnt greedily
    (most frequent adjacent pair; ties broken by the pair's bytes, so the result is fixed)."""
    words = Counter()
    for text in texts:
        for piece in _LEARN_SPLIT.findall(text):
            words[tuple(bytes([b]) for b in piece.encode("utf-8"))] += 1
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(num_merges):
        pairs = Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[a, b] += count
        if not pairs:
            break
        (a, b), _count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = a + b
        if merged in ranks:  # the same bytes reached by another pair: merge without a new rank
            pass
        else:
            ranks[merged] = len(ranks)
        new_words = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return ranks


def train_bpe_ranks(texts, vocab_size: int = 400) -> dict[bytes, int]:
    """Byte-level BPE ranks trained with the tokenizers library (GPT-2 pre-split): the 256
    single bytes, then the learnt merges in the order learnt, up to `vocab_size` tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from .tokenizer import token_str_to_bytes

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    vocab = tok.get_vocab()
    ranks = {token_str_to_bytes(token): rank for token, rank in vocab.items()}
    if sorted(ranks.values()) != list(range(len(vocab))):
        raise ValueError("the trained vocabulary's ids are not 0..n-1")
    return ranks


def _named_token_config() -> dict:
    return {f"{name}_token": default for name, (_keys, default) in NAMED_TOKENS.items()}


def build_tiktoken_tokenizer(directory, num_visual_tokens: int = 64, num_merges: int = 200,
                             texts=TINY_CORPUS, ranks: dict[bytes, int] | None = None) -> Path:
    """Original format: emu3.tiktoken + emu3_vision_tokens.txt + tokenizer_config.json; the
    BPE is `ranks` when given (e.g. from `train_bpe_ranks`), else learnt from `texts`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tiktoken_ranks(directory / TIKTOKEN_FILE, ranks if ranks is not None else learn_bpe_ranks(texts, num_merges))
    with open(directory / VISION_TOKENS_FILE, "w", encoding="utf-8") as f:
        for token in list(IMAGE_TOKENS) + [visual_token(k) for k in range(num_visual_tokens)]:
            f.write(token + "\n")
    config = {
        "auto_map": {"AutoTokenizer": ["tokenization_emu3.Emu3Tokenizer", None]},
        "tokenizer_class": "Emu3Tokenizer",
        **_named_token_config(),
    }
    _write_json(directory / CONFIG_FILE, config)
    return directory


def _bpe_split(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
    """Split `token` into the parts BPE reaches using only merges ranked below `below`."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < below and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def ranks_to_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks -> byte-level BPE vocabulary and merges (how the -hf files were made)."""
    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[token_bytes_to_str(token)] = rank
        if len(token) > 1:
            parts = _bpe_split(ranks, token, rank)
            if len(parts) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens")
            merges.append((token_bytes_to_str(parts[0]), token_bytes_to_str(parts[1])))
    return vocab, merges


def build_hf_tokenizer(directory, num_visual_tokens: int = 64, vocab_size: int = 400, texts=TINY_CORPUS,
                       ranks: dict[bytes, int] | None = None) -> Path:
    """-hf format: tokenizer.json (byte-level BPE, GPT-2 split regex, special tokens added after
    the BPE vocabulary with <|extra_0|> named <image>) + tokenizer_config.json +
    special_tokens_map.json. The BPE is trained on `texts` with the tokenizers library, or
    converted from tiktoken `ranks` when given (then it shares every merge with that file)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if ranks is None:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = byte_level
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[], show_progress=False)
        tok.train_from_iterator(list(texts), trainer)
    else:
        vocab, merges = ranks_to_vocab_and_merges(ranks)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    specials = emu3_special_tokens(num_visual_tokens, hf_names=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.save(str(directory / TOKENIZER_JSON))

    config = {
        "add_prefix_space": False,
        "bos_token": "<|extra_203|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|extra_204|>",
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "tokenizer_class": "GPT2Tokenizer",
        "extra_special_tokens": {
            "image_token": "<image>",
            "boi_token": "<|image start|>",
            "eoi_token": "<|image end|>",
            "image_wrapper_token": "<|image token|>",
            "eof_token": "<|extra_201|>",
        },
    }
    _write_json(directory / CONFIG_FILE, config)
    _write_json(directory / SPECIAL_TOKENS_MAP_FILE,
                {"bos_token": "<|extra_203|>", "eos_token": "<|extra_204|>", "pad_token": "<|endoftext|>"})
    return directory


def build_sentencepiece_tokenizer(directory, num_visual_tokens: int = 64, vocab_size: int = 400,
                                  texts=TINY_CORPUS) -> Path:
    """Sentencepiece format: tokenizer.model (BPE with byte fallback, identity normalisation,
    no dummy prefix, digits split one by one like the original) + tokenizer_config.json
    recording where the appended Emu3 special tokens start."""
    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    with open(directory / SENTENCEPIECE_FILE, "wb") as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    config = {
        "tokenizer_format": "sentencepiece",
        "special_tokens_start": sp.get_piece_size(),
        "num_visual_tokens": num_visual_tokens,
        **_named_token_config(),
    }
    _write_json(directory / CONFIG_FILE, config)
    return directory


def build_tokenizer(directory, format: str = "tiktoken", num_visual_tokens: int = 64, **kwargs) -> Path:
    """Build a tiny tokenizer directory in `format` ("tiktoken", "tokenizer.json", "sentencepiece")."""
    builders = {
        "tiktoken": build_tiktoken_tokenizer,
        "tokenizer.json": build_hf_tokenizer,
        "sentencepiece": build_sentencepiece_tokenizer,
    }
    if format not in builders:
        raise ValueError(f"unknown tokenizer format {format!r}; known: {sorted(builders)}")
    return builders[format](os.fspath(directory), num_visual_tokens=num_visual_tokens, **kwargs)
