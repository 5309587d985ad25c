"""Emu3 text tokenizer: one interface over the three vocabulary formats Emu3 models ship with.

Formats, detected from the files in a directory:

* ``tiktoken`` -- the original BAAI/Emu3-{Gen,Chat,Stage1} files: ``emu3.tiktoken`` (one
  ``base64(token) rank`` per line) and ``emu3_vision_tokens.txt`` (one token a line), read
  with the ``tiktoken`` package and the Qwen pre-split regex (digits one by one), text
  NFC-normalised first, as ``emu3/mllm/tokenization_emu3.py`` does.
* ``tokenizer.json`` -- the ``-hf`` conversion (byte-level BPE with GPT-2's split regex,
  which keeps runs of digits together; ``<|extra_0|>`` renamed ``<image>``), read with the
  ``tokenizers`` package.
* ``sentencepiece`` -- a ``tokenizer.model`` for small custom models; the Emu3 special and
  visual tokens are appended after the sentencepiece vocabulary in the original order, and
  ``tokenizer_config.json`` records where they start and how many visual tokens there are.

Special tokens, numbered from the end of the ordinary vocabulary (151643 in the released
files): ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ``<|extra_0|>`` .. ``<|extra_204|>``,
then the vision tokens ``<|image token|>``, ``<|image start|>``, ``<|image end|>``,
``<|visual token 000000|>`` .. (one per VQ code, contiguous).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from emu3_vq.config import read_json

TIKTOKEN_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

FORMATS = ("tiktoken", "tokenizer.json", "sentencepiece")

# Qwen's pre-split regex as used by the original Emu3 tokenizer: a digit is always its own piece.
QWEN_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

TEXT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(
    f"<|extra_{i}|>" for i in range(205)
)
IMAGE_TOKENS = ("<|image token|>", "<|image start|>", "<|image end|>")
HF_IMAGE_PLACEHOLDER = "<image>"  # the -hf files rename <|extra_0|> to this
VISUAL_TOKEN_FORMAT = "<|visual token {:06d}|>"
_VISUAL_TOKEN_RE = re.compile(r"<\|visual token (\d{6})\|>")

# name -> (tokenizer_config.json keys that may hold it, default token string)
NAMED_TOKENS = {
    "pad": (("pad_token",), "<|endoftext|>"),
    "bos": (("bos_token",), "<|extra_203|>"),
    "eos": (("eos_token",), "<|extra_204|>"),
    "img": (("img_token", "image_wrapper_token"), "<|image token|>"),
    "boi": (("boi_token",), "<|image start|>"),
    "eoi": (("eoi_token",), "<|image end|>"),
    "eol": (("eol_token",), "<|extra_200|>"),
    "eof": (("eof_token",), "<|extra_201|>"),
}


def visual_token(code: int) -> str:
    """The token string of VQ code `code`, e.g. ``<|visual token 000042|>``."""
    return VISUAL_TOKEN_FORMAT.format(code)


def emu3_special_tokens(num_visual_tokens: int, hf_names: bool = False) -> list[str]:
    """All Emu3 special token strings in id order (text specials, image tokens, visual tokens)."""
    text = list(TEXT_SPECIAL_TOKENS)
    if hf_names:
        text[3] = HF_IMAGE_PLACEHOLDER
    return text + list(IMAGE_TOKENS) + [visual_token(k) for k in range(num_visual_tokens)]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (used by byte-level BPE files)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def token_bytes_to_str(token: bytes) -> str:
    """Byte-level BPE spelling of a token's bytes (what tokenizer.json vocabularies hold)."""
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def token_str_to_bytes(token: str) -> bytes:
    try:
        return bytes(_CHAR_TO_BYTE[c] for c in token)
    except KeyError:
        raise ValueError(f"{token!r} is not a byte-level BPE token spelling") from None


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _token_content(value) -> str | None:
    """A token entry of tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read an ``emu3.tiktoken`` rank file; ranks must be exactly 0..N-1."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:60]!r}")
            try:
                token = base64.b64decode(parts[0], validate=True)
                rank = int(parts[1])
            except (binascii.Error, ValueError):
                raise ValueError(f"{path}:{lineno}: ill-formed line {line[:60]!r}") from None
            if token in ranks:
                raise ValueError(f"{path}:{lineno}: token {token!r} listed twice")
            ranks[token] = rank
    if not ranks:
        raise ValueError(f"{path} holds no tokens")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be exactly 0..{len(ranks) - 1} (each once)")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: {len(missing)} single bytes have no rank (first: {missing[0]}); "
                         "every byte must be a token so any text can be encoded")
    return ranks


def save_tiktoken_ranks(path: str | os.PathLike, ranks: dict[bytes, int]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")


# ---- backends: ordinary (non-special) text <-> ids, one per format --------------------------


class _TiktokenBackend:
    format = "tiktoken"

    def __init__(self, ranks: dict[bytes, int], vision_tokens: list[str]):
        import tiktoken

        self.ranks = ranks
        self.vision_tokens = vision_tokens
        start = len(ranks)
        self.special_list = list(TEXT_SPECIAL_TOKENS) + vision_tokens
        self.specials = {tok: start + i for i, tok in enumerate(self.special_list)}
        if len(self.specials) != len(self.special_list):
            raise ValueError(f"{VISION_TOKENS_FILE} repeats a token")
        self.enc = tiktoken.Encoding(
            "emu3", pat_str=QWEN_PAT_STR, mergeable_ranks=ranks, special_tokens=self.specials
        )
        self.by_rank = {rank: tok for tok, rank in ranks.items()}
        self.text_vocab_size = start
        self.vocab_size = self.enc.n_vocab

    def encode(self, text: str, allowed: frozenset | str) -> list[int]:
        # The original tokenizer NFC-normalises, then lets tiktoken match the allowed special
        # strings; other special strings are encoded as plain text (disallowed_special=()).
        text = unicodedata.normalize("NFC", text)
        return self.enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(unicodedata.normalize("NFC", text))

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids, errors="replace")

    def id_to_token(self, i: int) -> str:
        return token_bytes_to_str(self.by_rank[i])

    def token_to_id(self, token: str) -> int | None:
        try:
            return self.ranks.get(token_str_to_bytes(token))
        except ValueError:
            return None

    def save(self, directory: Path) -> None:
        save_tiktoken_ranks(directory / TIKTOKEN_FILE, self.ranks)
        with open(directory / VISION_TOKENS_FILE, "w", encoding="utf-8") as f:
            f.writelines(tok + "\n" for tok in self.vision_tokens)


class _HFBackend:
    format = "tokenizer.json"

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        data = read_json(path)
        if "model" not in data or "added_tokens" not in data:
            raise ValueError(f"{path} lacks 'model' or 'added_tokens': not a tokenizers file")
        try:
            self.full = Tokenizer.from_str(json.dumps(data))
            # A copy without added tokens encodes plain text only, so special strings that are
            # not allowed fall through to ordinary BPE (transformers' split_special_tokens=True).
            self.plain = Tokenizer.from_str(json.dumps({**data, "added_tokens": []}))
        except Exception as e:  # tokenizers raises its own Exception type
            raise ValueError(f"{path} could not be read by tokenizers: {e}") from None
        added = sorted(data["added_tokens"], key=lambda t: t["id"])
        self.specials = {t["content"]: int(t["id"]) for t in added if t.get("special", True)}
        self.special_list = list(self.specials)
        self.vocab_size = self.full.get_vocab_size(with_added_tokens=True)
        self.text_vocab_size = min(self.specials.values()) if self.specials else self.vocab_size

    def encode_ordinary(self, text: str) -> list[int]:
        return self.plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.plain.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self.full.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self.full.token_to_id(token)

    def save(self, directory: Path) -> None:
        self.full.save(str(directory / TOKENIZER_JSON))


class _SentencePieceBackend:
    format = "sentencepiece"

    def __init__(self, path: Path, num_visual_tokens: int):
        try:
            import sentencepiece as spm
        except ImportError:
            raise ImportError(f"the tokenizer at {path} is a sentencepiece model: "
                              f"pip install 'emu3-lm[sentencepiece]'") from None

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a sentencepiece model: {e}") from None
        start = self.sp.get_piece_size()
        self.special_list = emu3_special_tokens(num_visual_tokens)
        self.specials = {tok: start + i for i, tok in enumerate(self.special_list)}
        self.text_vocab_size = start
        self.vocab_size = start + len(self.special_list)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def id_to_token(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        # piece_to_id answers unk for an unknown piece
        return i if self.sp.id_to_piece(i) == token else None

    def save(self, directory: Path) -> None:
        with open(directory / SENTENCEPIECE_FILE, "wb") as f:
            f.write(self.sp.serialized_model_proto())


# ---- the tokenizer ------------------------------------------------------------------------------


class Emu3Tokenizer:
    """Emu3 text tokenizer over the original tiktoken files, an -hf tokenizer.json, or a
    sentencepiece model. Build it with :meth:`from_pretrained`.

    Named ids: ``pad_id`` (<|endoftext|>), ``bos_id`` (<|extra_203|>), ``eos_id`` (<|extra_204|>),
    ``img_id`` (<|image token|>), ``boi_id`` (<|image start|>), ``eoi_id`` (<|image end|>),
    ``eol_id`` (<|extra_200|>), ``eof_id`` (<|extra_201|>); visual code k is id
    ``first_visual_id + k`` for k < ``num_visual_tokens``.
    """

    def __init__(self, backend, config: dict | None = None):
        self._backend = backend
        self.config = dict(config or {})
        self.format = backend.format
        self.special_tokens: dict[str, int] = dict(backend.specials)
        self._special_by_id = {i: tok for tok, i in self.special_tokens.items()}
        self._special_ids = np.array(sorted(self._special_by_id), dtype=np.int64)
        self._allowed_all = frozenset(self.special_tokens)
        self._split_re = self._special_regex(self.special_tokens)

        for name, (keys, default) in NAMED_TOKENS.items():
            token = next((t for t in (self._config_token(k) for k in keys) if t), default)
            if token not in self.special_tokens:
                raise ValueError(f"{self.format} vocabulary lacks the {name} token {token!r}")
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_id", self.special_tokens[token])

        self.first_visual_id, self.num_visual_tokens = self._visual_range()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, format: str | None = None, *, revision=None,
                        cache_dir=None, local_files_only: bool = False) -> "Emu3Tokenizer":
        """Load from a directory holding one of the three formats (detected unless `format`
        names one of ``"tiktoken"``, ``"tokenizer.json"``, ``"sentencepiece"``), or from a hub
        repo id (only the tokenizer's files are fetched; see emu3_vq.hub); None: the default
        model's (`emu3_vq.defaults`)."""
        from emu3_vq import hub

        if path is None:
            from emu3_vq.defaults import lm_dir

            path = lm_dir()

        if hub.is_repo_id(path):
            files = [TIKTOKEN_FILE, VISION_TOKENS_FILE, TOKENIZER_JSON, SENTENCEPIECE_FILE, CONFIG_FILE,
                     SPECIAL_TOKENS_MAP_FILE]
            path = hub.resolve(path, files, required=[(TIKTOKEN_FILE, TOKENIZER_JSON, SENTENCEPIECE_FILE)],
                               revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
        if format is None:
            if (directory / TIKTOKEN_FILE).is_file():
                format = "tiktoken"
            elif (directory / TOKENIZER_JSON).is_file():
                format = "tokenizer.json"
            elif (directory / SENTENCEPIECE_FILE).is_file():
                format = "sentencepiece"
            else:
                raise FileNotFoundError(
                    f"{directory} holds no tokenizer: expected {TIKTOKEN_FILE} (+ {VISION_TOKENS_FILE}), "
                    f"{TOKENIZER_JSON}, or {SENTENCEPIECE_FILE} (+ {CONFIG_FILE})"
                )
        if format not in FORMATS:
            raise ValueError(f"unknown tokenizer format {format!r}; known: {FORMATS}")

        config_path = directory / CONFIG_FILE
        config = read_json(config_path) if config_path.is_file() else {}

        if format == "tiktoken":
            for name in (TIKTOKEN_FILE, VISION_TOKENS_FILE):
                if not (directory / name).is_file():
                    raise FileNotFoundError(f"{directory / name} is missing (tiktoken format)")
            ranks = load_tiktoken_ranks(directory / TIKTOKEN_FILE)
            with open(directory / VISION_TOKENS_FILE, encoding="utf-8") as f:
                vision = [line.strip() for line in f if line.strip()]
            if not vision:
                raise ValueError(f"{directory / VISION_TOKENS_FILE} lists no tokens")
            backend = _TiktokenBackend(ranks, vision)
        elif format == "tokenizer.json":
            if not (directory / TOKENIZER_JSON).is_file():
                raise FileNotFoundError(f"{directory / TOKENIZER_JSON} is missing")
            backend = _HFBackend(directory / TOKENIZER_JSON)
            smap_path = directory / SPECIAL_TOKENS_MAP_FILE
            if smap_path.is_file():  # tokenizer_config.json wins where both name a token
                config = {**read_json(smap_path), **config}
        else:
            if not (directory / SENTENCEPIECE_FILE).is_file():
                raise FileNotFoundError(f"{directory / SENTENCEPIECE_FILE} is missing")
            if "num_visual_tokens" not in config:
                raise ValueError(f"{config_path} must record 'num_visual_tokens' for a sentencepiece tokenizer")
            n = config["num_visual_tokens"]
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"{config_path}: num_visual_tokens must be a positive int, got {n!r}")
            backend = _SentencePieceBackend(directory / SENTENCEPIECE_FILE, n)
            start = config.get("special_tokens_start", backend.text_vocab_size)
            if start != backend.text_vocab_size:
                raise ValueError(f"{config_path}: special_tokens_start is {start} but the sentencepiece "
                                 f"model has {backend.text_vocab_size} pieces")
        return cls(backend, config)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the tokenizer in the format it was read from (plus tokenizer_config.json)."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self._backend.save(directory)
        config = dict(self.config)
        if self.format != "tokenizer.json":
            # our own formats: record every named token explicitly
            for name in NAMED_TOKENS:
                config[f"{name}_token"] = getattr(self, f"{name}_token")
        if self.format == "sentencepiece":
            config["special_tokens_start"] = self._backend.text_vocab_size
            config["num_visual_tokens"] = self.num_visual_tokens
        _write_json(directory / CONFIG_FILE, config)
        if self.format == "tokenizer.json":
            smap = {k: getattr(self, f"{k[:-6]}_token") for k in ("bos_token", "eos_token", "pad_token")}
            _write_json(directory / SPECIAL_TOKENS_MAP_FILE, smap)

    def _config_token(self, key: str) -> str | None:
        token = _token_content(self.config.get(key))
        extra = self.config.get("extra_special_tokens")
        if token is None and isinstance(extra, dict):  # transformers 4.5x/5.x -hf configs
            token = _token_content(extra.get(key))
        return token

    @staticmethod
    def _special_regex(specials: Iterable[str]) -> re.Pattern:
        # Visual tokens share one pattern (checked against the vocabulary after matching); the
        # other few hundred are literal alternatives, longest first.
        literals = sorted((t for t in specials if not _VISUAL_TOKEN_RE.fullmatch(t)), key=len, reverse=True)
        alternatives = [re.escape(t) for t in literals] + [_VISUAL_TOKEN_RE.pattern]
        return re.compile("|".join(alternatives))

    def _visual_range(self) -> tuple[int, int]:
        first_tok = visual_token(0)
        if first_tok not in self.special_tokens:
            raise ValueError(f"{self.format} vocabulary lacks {first_tok!r}")
        first = self.special_tokens[first_tok]
        n = sum(1 for t in self.special_tokens if _VISUAL_TOKEN_RE.fullmatch(t))
        for k in range(n):
            if self.special_tokens.get(visual_token(k)) != first + k:
                raise ValueError(f"{self.format} vocabulary: {visual_token(k)!r} is not id {first + k}; "
                                 f"visual tokens must be numbered contiguously from {first}")
        return first, n

    # ---- sizes and lookups --------------------------------------------------------------------
    def __len__(self) -> int:
        return self._backend.vocab_size

    @property
    def vocab_size(self) -> int:
        """Number of ids, special and visual tokens included."""
        return self._backend.vocab_size

    @property
    def text_vocab_size(self) -> int:
        """Ids below this are ordinary text tokens; special tokens start here."""
        return self._backend.text_vocab_size

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string (a special token, or an ordinary token spelled as the format
        spells it: byte-level characters for tiktoken/tokenizer.json, a piece for
        sentencepiece); None when unknown."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < len(self):
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {len(self)})")
        if token_id in self._special_by_id:
            return self._special_by_id[token_id]
        return self._backend.id_to_token(token_id)

    def is_special(self, ids) -> np.ndarray | bool:
        """True for special and visual token ids (vectorised over arrays)."""
        arr = np.asarray(ids)
        out = np.isin(arr, self._special_ids)
        return bool(out) if arr.ndim == 0 else out

    # ---- visual tokens ------------------------------------------------------------------------
    def visual_token_id(self, code):
        """Token id of VQ code(s) `code` (int or integer array)."""
        arr = np.asarray(code)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"visual codes must be integers, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_visual_tokens):
            raise ValueError(f"visual code out of range [0, {self.num_visual_tokens}): "
                             f"min {arr.min()}, max {arr.max()}")
        out = arr.astype(np.int64) + self.first_visual_id
        return int(out) if arr.ndim == 0 and not isinstance(code, np.ndarray) else out

    def visual_code(self, token_id):
        """VQ code(s) of visual token id(s) (int or integer array)."""
        arr = np.asarray(token_id)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        codes = arr.astype(np.int64) - self.first_visual_id
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_visual_tokens):
            bad = arr.flat[int(np.argmax((codes < 0) | (codes >= self.num_visual_tokens)))]
            raise ValueError(f"token id {bad} is not a visual token (visual ids are "
                             f"[{self.first_visual_id}, {self.first_visual_id + self.num_visual_tokens}))")
        return int(codes) if arr.ndim == 0 and not isinstance(token_id, np.ndarray) else codes

    def is_visual(self, ids):
        arr = np.asarray(ids)
        out = (arr >= self.first_visual_id) & (arr < self.first_visual_id + self.num_visual_tokens)
        return bool(out) if arr.ndim == 0 else out

    # ---- text ---------------------------------------------------------------------------------
    def encode(self, text: str, allowed_special: str | Iterable[str] = "all") -> list[int]:
        """Token ids of `text`. Special token strings in `allowed_special` ("all", or a set of
        strings; an empty set for none) become their ids, as the original tokenizer does by
        default; any other special string is encoded as ordinary text. No bos is added."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if allowed_special == "all":
            allowed = self._allowed_all
        elif isinstance(allowed_special, str):
            raise ValueError(f"allowed_special must be 'all' or a set of token strings, got {allowed_special!r}")
        else:
            allowed = frozenset(allowed_special)
            unknown = allowed - self._allowed_all
            if unknown:
                raise ValueError(f"allowed_special names tokens that are not special: {sorted(unknown)[:5]}")
        if self.format == "tiktoken":
            return self._backend.encode(text, "all" if allowed is self._allowed_all else set(allowed))
        ids: list[int] = []
        pos = 0
        for m in self._split_re.finditer(text):
            token = m.group(0)
            if token not in allowed:  # e.g. a visual code beyond the codebook: plain text
                continue
            if m.start() > pos:
                ids += self._backend.encode_ordinary(text[pos:m.start()])
            ids.append(self.special_tokens[token])
            pos = m.end()
        if pos < len(text):
            ids += self._backend.encode_ordinary(text[pos:])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text` with every special string treated as plain text."""
        return self._backend.encode_ordinary(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (a list or 1-D array). Special and visual tokens decode to their token
        strings; with `skip_special_tokens` they are dropped and only ordinary text is kept
        (the original keeps exactly the ids below <|endoftext|>, i.e. the same thing)."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {len(self)})")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_by_id]
        if self.format == "tiktoken":
            return self._backend.decode(ids)
        # Decode runs of ordinary ids with the backend, special tokens as their strings.
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            token = self._special_by_id.get(i)
            if token is None:
                run.append(i)
                continue
            if run:
                parts.append(self._backend.decode(run))
                run = []
            parts.append(token)
        if run:
            parts.append(self._backend.decode(run))
        return "".join(parts)

    def __repr__(self) -> str:
        return (f"Emu3Tokenizer(format={self.format!r}, vocab_size={len(self)}, "
                f"text_vocab_size={self.text_vocab_size}, num_visual_tokens={self.num_visual_tokens})")
