"""Shared pytest setup for every package's tests and integration/."""

from __future__ import annotations

import importlib
import os
import sys
import types

os.environ.setdefault("GLOG_v", "3")  # MindSpore: warnings and errors only
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


def pytest_configure(config):
    # `nox -s isolated` runs a package's tests against its installed wheel: make sure that
    # is what they import, not the source tree.
    module = os.environ.get("EMU3_EXPECT_INSTALLED")
    if module:
        mod = importlib.import_module(module)
        if "site-packages" not in (mod.__file__ or ""):
            raise RuntimeError(f"{module} imported from {mod.__file__}, expected the installed wheel")


# ---- README examples ---------------------------------------------------------------------------
# Each package's tests/test_readme.py runs the ```python blocks of its README through this, so
# the documentation cannot drift from the code. A `print(...)  # text` line promises output:
# each part of `text` (split at "...", cut at " here") must appear in what its block printed.

import contextlib  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_PRINT_COMMENT = re.compile(r"^\s*print\(.*\)\s+#\s*(.+?)\s*$")


class ReadmeExamples:
    def __init__(self, path: Path):
        self.path = Path(path)

    def blocks(self, lang: str) -> list[tuple[int, str]]:
        """(first line number of the code, code) of every fenced block in `lang`."""
        text = self.path.read_text(encoding="utf-8")
        return [(text.count("\n", 0, m.start(2)) + 1, m.group(2))
                for m in _FENCE.finditer(text) if m.group(1) == lang]

    @staticmethod
    def promised_output(code: str) -> list[str]:
        """The fragments of output that the `print(...)  # text` comments of a block promise."""
        fragments = []
        for line in code.splitlines():
            m = _PRINT_COMMENT.match(line)
            if m:
                text = re.sub(r"\s+here\b.*$", "", m.group(1))  # "X here (elsewhere Y)": X
                fragments += [part.strip() for part in text.split("...") if part.strip()]
        return fragments

    def run(self, blocks: list[tuple[int, str]]) -> None:
        """Execute the blocks in order, in one namespace."""
        # a real module: MindSpore's graph compiler looks up a jit function's module by name
        module = types.ModuleType("__readme__")
        sys.modules[module.__name__] = module
        namespace = module.__dict__
        for line, code in blocks:
            # padded so that a traceback names the README's own line numbers
            compiled = compile("\n" * (line - 1) + code, str(self.path), "exec")
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(compiled, namespace)
            except Exception as exc:
                raise AssertionError(f"README example at line {line} failed: {exc!r}") from exc
            for fragment in self.promised_output(code):
                assert fragment in out.getvalue(), (
                    f"README example at line {line} promises output {fragment!r}; it printed:\n{out.getvalue()}")


@pytest.fixture
def readme(request) -> ReadmeExamples:
    """The README.md of the package whose tests/ holds the requesting test."""
    return ReadmeExamples(Path(request.path).resolve().parents[1] / "README.md")


# ---- the oracle ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def oracle_text_config():
    """`make(cfg)`: transformers' Emu3TextConfig for an emu3_lm Emu3LMConfig, dropout off (the
    oracle's twin of a test model); skips when transformers is not installed."""
    transformers = pytest.importorskip("transformers")

    def make(cfg):
        return transformers.Emu3TextConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
            rms_norm_eps=cfg.rms_norm_eps, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
            eos_token_id=cfg.eos_token_id, attention_dropout=0.0,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})

    return make


# ---- a local Hugging Face cache --------------------------------------------------------------
# Loading by hub repo id is tested offline against a cache laid out as huggingface_hub lays it:
# <cache>/models--ORG--NAME/{blobs/, snapshots/<commit>/<files>, refs/<revision>}.

import shutil  # noqa: E402


def publish_to_hub_cache(cache: Path, repo_id: str, source: Path, revision: str = "main",
                         commit: str | None = None) -> Path:
    """Copy the files of `source` into `cache` as the snapshot of `repo_id` at `revision`;
    returns the snapshot folder."""
    import hashlib

    commit = commit or hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in sorted(Path(source).rglob("*")):
        if file.is_file():
            target = snapshot / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path):
    """(cache folder, publish(repo_id, source_dir, revision="main") -> snapshot folder)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    return cache, lambda repo_id, source, revision="main": publish_to_hub_cache(cache, repo_id, source, revision)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A stand-in for the hub, online: `serve(repo_id, folder)` makes `folder` that repository;
    `huggingface_hub.snapshot_download` then copies the files that `allow_patterns` name (fnmatch)
    into a snapshot folder kept across calls, as the cache is. Returns (serve, calls): each call
    a dict of repo_id, revision, local_files_only, allow_patterns and `fetched`, the files it
    copied. A repo never served raises huggingface_hub's RepositoryNotFoundError."""
    import fnmatch
    import types

    import huggingface_hub
    from huggingface_hub import errors

    remotes: dict[str, Path] = {}
    calls: list[dict] = []

    def snapshot_download(repo_id, *, revision=None, cache_dir=None, local_files_only=False,
                          allow_patterns=None, **_):
        call = {"repo_id": repo_id, "revision": revision, "local_files_only": local_files_only,
                "allow_patterns": list(allow_patterns or ["*"]), "fetched": []}
        calls.append(call)
        if repo_id not in remotes:
            response = types.SimpleNamespace(status_code=404, headers={}, request=None)
            raise errors.RepositoryNotFoundError(f"404: {repo_id}", response=response)
        snapshot = tmp_path / "fake-hub-snapshots" / repo_id.replace("/", "--")
        snapshot.mkdir(parents=True, exist_ok=True)
        for file in sorted(remotes[repo_id].iterdir()):
            if file.is_file() and any(fnmatch.fnmatch(file.name, p) for p in call["allow_patterns"]):
                shutil.copyfile(file, snapshot / file.name)
                call["fetched"].append(file.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return (lambda repo_id, folder: remotes.__setitem__(repo_id, Path(folder))), calls
