"""The decode loop: prefill, then one compiled graph per step over a static KV cache.

Plain functions in the manner of gpt-fast: `prefill`, `decode_one_token`, `decode_n_tokens`,
and `generate` tying them together. What one step runs, compiled once per (cache, settings)
and reused for every step:

    decode_step(previous token)  ->  lm_head rows [start, stop) only  ->  guidance  ->  sampling
    -> forced token where the constraint table says so  ->  pad after eos

Per-step inputs are Tensors (the step number); the constraint table, the uniforms of the
sampler and the state of each row live on the device, so the host does no work that grows with the
vocabulary or the sequence. Steps whose next token is forced for every row (eol, eof, ...) run
the decode step alone, without logits; tokens after the last sampled position need no forward
at all (an image ends with eol, eof, eoi, eos: all known).

Free text can be streamed: the host reads the rows' states at each step of free text anyway
(to stop at eos), so it reads that step's tokens there too and hands them to a `streamer`
(see `streaming.py` for one that turns them into text).

The state of a row also records scores that were not finite (NaN or inf: broken weights, an
fp16 overflow): BROKEN stops the row like eos, and the host, which reads the states after the
first sampled position and at the end (and at each step of free text, which it reads anyway),
raises instead of returning tokens drawn from NaN.

Prompts are left-padded to a multiple of PROMPT_ROUND tokens and caches sized in multiples of
CACHE_ROUND slots, so calls with prompts of nearby lengths reuse every compiled graph.

Classifier-free guidance: batched (cond and uncond rows in one batch of 2B, left-padded to a
common length, positions from the mask) or unbatched (the original: a second forward over a
second cache). See guidance.py for the formula.
"""

from __future__ import annotations

import numbers
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from emu3_vq import device
from mindspore import Parameter, Tensor, nn, ops

from .constraint import FREE
from .guidance import check_scale, guide, left_pad
from .sampling import GREEDY, Sampling, check_seeds, sample, uniforms

# the state of a row during decoding (an int32 per row, on the device); a row stops at DONE or BROKEN
RUNNING, DONE, BROKEN = 0, 1, 2  # BROKEN: its scores were not finite
CACHE_ROUND = 256  # cache lengths are rounded up so that similar prompts reuse compiled graphs
PROMPT_ROUND = 64  # prompts are left-padded to a multiple of this: one prefill graph per bucket


@dataclass
class Progress:
    """What a progress callback receives after each generated position."""

    step: int  # positions generated so far (all rows advance together)
    steps: int  # positions to generate at most
    rows_done: int  # image rows completed (image blocks), or sequences finished (text)
    rows: int  # image rows in all (of the first image), or sequences
    tokens_per_s: float  # positions per second per sequence since decoding began
    elapsed: float  # seconds since decoding began (prefill included)


@dataclass(frozen=True)
class StepSettings:
    """The compile-time constants of the step graph."""

    start: int  # lm_head rows [start, stop) are computed and sampled
    stop: int
    sampling: Sampling
    cfg_scale: float  # 1.0: no guidance
    mode: str  # "plain", "batched" (cond + uncond rows in one batch) or "unbatched" (two caches)
    eos: int
    pad: int


class _Head(nn.Cell):
    """A contiguous copy of lm_head rows [start, stop), held as W^T where `transposed`.

    A slice taken inside the step graph would be copied at every step (about 3x the memory
    traffic of the matmul itself); and MindSpore 2.10's CPU MatMul reads W^T at up to 2.5x the
    speed of W with transpose_b (docs/mindspore_cpu.md), so the device policy keeps CPU copies
    transposed. The model's own parameter always keeps the checkpoint's [vocab, hidden].
    """

    def __init__(self, weight, transposed: bool):
        super().__init__()
        self.transposed = transposed
        self.weight = Parameter(weight, name="decode_head", requires_grad=False)
        self.fingerprint = None  # of the model's lm_head when the copy was made (decode_head)


class StepGraphs(nn.Cell):
    """The compiled graphs of one decoding setup: model, cache(s) and StepSettings.

    A step is one graph: the cache runner's decode for the previous tokens (emu3_lm.cache,
    which writes the cache in place), the head slice, guidance and sampling.
    """

    def __init__(self, model, runner, uncond_runner, head, settings: StepSettings):
        super().__init__()
        # held outside the Cell tree: their parameters keep their own names
        object.__setattr__(self, "lm", model)
        object.__setattr__(self, "runner", runner)
        object.__setattr__(self, "runner_u", uncond_runner)
        object.__setattr__(self, "head", head)
        self.settings = settings
        self.mode = settings.mode
        self.start = settings.start
        self.scale = settings.cfg_scale
        self.sampling = settings.sampling
        self.eos = settings.eos
        self.pad = settings.pad
        # the model's own lm_head holds W [vocab, hidden]; a _Head copy may hold W^T
        self.matmul = ops.MatMul(transpose_b=not getattr(head, "transposed", False))

    # -- inside the graphs --

    def _run(self, runner, tokens, slot):
        h = runner.run_decode(tokens, slot)
        return h, (h,)  # returned so that the graph keeps the cache writes

    def _forward(self, tokens, slot, slot_u):
        """Hidden states of the cond (or cond+uncond) and uncond rows, and outputs that keep the
        cache writes in the graph."""
        if self.mode == "batched":
            h, kv = self._run(self.runner, ops.cat((tokens, tokens)), slot)
            return h, h, (kv, kv)
        if self.mode == "unbatched":
            h, kv = self._run(self.runner, tokens, slot)
            hu, kvu = self._run(self.runner_u, tokens, slot_u)
            return h, hu, (kv, kvu)
        h, kv = self._run(self.runner, tokens, slot)
        return h, h, (kv, kv)

    def _scores(self, h, hu):
        w = self.head.weight
        logits = self.matmul(h.astype(w.dtype), w).astype(ms.float32)
        if self.mode == "batched":
            b = logits.shape[0] // 2
            return guide(logits[:b], logits[b:], self.scale)
        if self.mode == "unbatched":
            return guide(logits, self.matmul(hu.astype(w.dtype), w).astype(ms.float32), self.scale)
        return logits

    def _pick(self, h, hu, step, table, u_all, state):
        """The tokens of position `step` and the new state of each row (RUNNING, DONE after eos,
        BROKEN when its scores are not finite). NaN or inf anywhere in a row makes its sum so: one
        reduction in the graph, no extra input or output, no host read."""
        forced = ops.gather(table, step, 0)
        scores = self._scores(h, hu)
        idx = sample(scores, ops.gather(u_all, step, 0), self.sampling)
        tok = ops.where(forced >= 0, forced, idx + self.start)
        stopped = state > RUNNING
        tok = ops.where(stopped, ops.full_like(tok, self.pad), tok)
        broken = ops.logical_and(ops.logical_not(stopped), ops.logical_not(ops.isfinite(scores.sum(-1))))
        new = ops.maximum((tok == self.eos).astype(state.dtype) * DONE, broken.astype(state.dtype) * BROKEN)
        return tok, ops.maximum(state, new)

    @ms.jit
    def first(self, h, hu, step, table, u_all, state):
        """The token of position 0 from the prefill's hidden states."""
        return self._pick(h, hu, step, table, u_all, state)

    @ms.jit
    def _step(self, tokens, slot, slot_u, step, table, u_all, state):
        h, hu, kv = self._forward(tokens, slot, slot_u)
        tok, state = self._pick(h, hu, step, table, u_all, state)
        return tok, state, kv

    @ms.jit
    def _feed(self, tokens, slot, slot_u):
        _, _, kv = self._forward(tokens, slot, slot_u)
        return kv

    @ms.jit
    def first_scores(self, h, hu):
        return self._scores(h, hu)

    @ms.jit
    def _step_scores(self, tokens, slot, slot_u):
        h, hu, kv = self._forward(tokens, slot, slot_u)
        return self._scores(h, hu), kv

    # -- host side --

    def step(self, tokens, slot, slot_u, step, table, u_all, state):
        """Decode the previous tokens at cache slot `slot` (and `slot_u`), pick position `step`."""
        tok, state, _ = self._step(tokens, slot, slot_u, step, table, u_all, state)
        return tok, state

    def feed(self, tokens, slot, slot_u) -> None:
        """Decode the previous tokens only (the next position is forced for every row)."""
        self._feed(tokens, slot, slot_u)

    def step_scores(self, tokens, slot, slot_u):
        scores, _ = self._step_scores(tokens, slot, slot_u)
        return scores


# ---- head copies and compiled graphs, kept per model --------------------------------------------
#
# Caches and their compiled prefill/decode come from emu3_lm's cache pool (`model.cache_pool`):
# the step graphs call the runner's decode inside their own graph, so that one step is one
# graph. The unbatched guidance branch takes a second cache under its own role. Kept here,
# per model: the head copy and the step graphs, dropped with the caches they are bound to.

_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(model) -> dict:
    st = _STATE.get(model)
    if st is None:
        st = {"heads": {}, "graphs": {}}
        _STATE[model] = st
    return st


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _evict(model, keep) -> None:
    """Let the cache pool drop least recently used caches (not those in `keep`), then drop the
    graphs bound to dropped caches or heads."""
    pool = model.cache_pool
    pool.evict(keep)
    st = _state(model)
    heads = [model.lm_head, *st["heads"].values()]
    st["graphs"] = {k: g for k, g in st["graphs"].items()
                    if pool.holds(g.runner) and (g.runner_u is None or pool.holds(g.runner_u))
                    and any(g.head is h for h in heads)}


def _rows(w, start: int, stop: int, transposed: bool) -> Tensor:
    """A contiguous copy of W rows [start, stop), as W^T if `transposed`. numpy turns it: 0.75 s
    for the visual rows at hidden 1024, where MindSpore's eager transpose-and-copy took 2.4-4 s."""
    if not transposed:
        return w[start:stop].copy()
    if w.dtype in (ms.float32, ms.float16):
        return Tensor(np.ascontiguousarray(w.asnumpy()[start:stop].T))
    return w[start:stop].T.copy()


@ms.jit
def _fingerprint(w):
    """Sum and sum of squares of a weight, in fp32, compiled: one read of it (about 20 ms for
    the whole head at bench-1b), against seconds to copy and turn it again."""
    w = w.astype(ms.float32)
    return ops.stack((w.sum(), (w * w).sum()))


def decode_head(model, start: int, stop: int):
    """What a decoder multiplies with for lm_head rows [start, stop): a Cell with `weight` and
    `transposed` (weight is W^T [hidden, n] when True, else W [n, hidden]).

    Where the device policy keeps decoder heads transposed (CPU), a copy of the rows held as W^T,
    whole vocabulary included (MindSpore 2.10's CPU MatMul multiplies the 184622-row head 1.5-2.5x
    faster from W^T than from W with transpose_b: docs/mindspore_cpu.md); elsewhere the model's
    own lm_head for the whole vocabulary, a contiguous copy for a slice (a slice taken inside the
    step graph would be copied at every step). One copy is kept per model, made once (turning the
    whole head takes seconds) and made again only when the weights changed: each call compares a
    fingerprint of the model's lm_head (sum and sum of squares) with the copy's, so training or
    loading new weights in between is never missed.
    """
    transposed = device.policy().transposed_head
    if start == 0 and stop == model.config.vocab_size and not transposed:
        return model.lm_head
    weight = model.lm_head.weight
    fingerprint = tuple(float(v) for v in _fingerprint(weight).asnumpy())
    key = (start, stop, transposed)
    heads = _state(model)["heads"]
    head = heads.get(key)
    if head is None or head.fingerprint != fingerprint:
        rows = _rows(weight, start, stop, transposed)
        if head is None:
            heads.clear()  # one copy at a time: it can be large
            head = heads[key] = _Head(rows, transposed)
        else:
            ops.assign(head.weight, rows)
        head.fingerprint = fingerprint
    return head


def _graphs(model, runner, runner_u, head, settings: StepSettings) -> StepGraphs:
    """The step graphs for this setup, compiled on first use and kept with their caches."""
    graphs = _state(model)["graphs"]
    key = (id(runner), id(runner_u), id(head), settings)
    g = graphs.get(key)
    if g is None:
        g = graphs[key] = StepGraphs(model, runner, runner_u, head, settings)
    return g


# ---- the loop ------------------------------------------------------------------------------------

@dataclass
class Setup:
    """Everything one generation call prepared: graphs, prompt lengths, device-side state."""

    graphs: StepGraphs
    h: Tensor  # hidden states after the prefill (cond rows, or cond+uncond rows)
    hu: Tensor  # uncond hidden states (unbatched guidance), else h
    slot0: int  # first free cache slot (the padded prompt length)
    slot0_u: int


def streamer_calls(streamer) -> tuple[Callable[[np.ndarray], None], Callable[[], None]]:
    """(put, end) of a streamer: an object with `put(ids)` and optionally `end()` (the protocol
    of transformers' streamers), or a callable taking the ids. `ids` is an int64 array [B]: the
    token of each row at one position (pad once a row has stopped)."""
    put = getattr(streamer, "put", None)
    if put is None:
        if not callable(streamer):
            raise TypeError(f"streamer must be callable or have a put(ids) method, got {type(streamer).__name__}")
        put = streamer
    end = getattr(streamer, "end", None)
    return put, end if callable(end) else (lambda: None)


def check_context(config, prompt_tokens: int, new_tokens: int, hint: str = "") -> None:
    """The one check that a prompt and what is generated after it fit the model's context; run
    before anything of that size is allocated (a table, a cache). `hint` says what to change."""
    if prompt_tokens + new_tokens > config.max_position_embeddings:
        raise ValueError(f"a prompt of {prompt_tokens} tokens plus {new_tokens} generated tokens exceeds the "
                         f"model's context of {config.max_position_embeddings} positions"
                         + (f"; {hint}" if hint else ""))


def check_max_new_tokens(n, name: str = "max_new_tokens") -> int:
    """The length limit of free text: a positive int."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return int(n)


def _check_finite(states: np.ndarray) -> None:
    """Raise if any row is BROKEN: its scores were not finite at some step."""
    rows = np.nonzero(states == BROKEN)[0]
    if len(rows):
        raise ValueError(f"generation stopped: the model's logits are not finite (NaN or inf) for row(s) "
                         f"{', '.join(map(str, rows.tolist()))}; its weights or activations are broken "
                         f"(a damaged checkpoint, or an fp16 overflow)")


def _as_rows(prompts) -> list[list[int]]:
    if isinstance(prompts, np.ndarray):
        prompts = prompts.tolist()
    rows = [[int(t) for t in p] for p in prompts]
    if not rows:
        raise ValueError("no prompts given")
    return rows


def _bucket(ids: list[list[int]], mask: list[list[int]], pad: int):
    """More left padding, up to a multiple of PROMPT_ROUND: prompts of nearby lengths then share
    one compiled prefill (a new shape costs a compile of seconds). Positions come from the mask,
    so the padding changes no position and no attention weight."""
    extra = _round_up(len(ids[0]), PROMPT_ROUND) - len(ids[0])
    return [[pad] * extra + r for r in ids], [[0] * extra + m for m in mask]


def prefill(model, prompts, negative_prompts=None, *, cfg_scale: float = 1.0, batched_cfg: bool = True,
            new_tokens: int, vocab_range: tuple[int, int] | None = None, sampling: Sampling = GREEDY,
            eos_id: int | None = None, pad_id: int | None = None) -> Setup:
    """Allocate the cache(s), run the prompts through the model, compile the step graphs.

    prompts: B token id lists (different lengths are left-padded). negative_prompts: B lists
    for guidance (needed when cfg_scale != 1). new_tokens: positions that will be generated
    (sizes the cache). vocab_range: the lm_head rows that are sampled (default: all).
    """
    cfg = model.config
    cfg_scale = check_scale(cfg_scale)
    if not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be a Sampling, got {type(sampling).__name__}")
    prompts = _as_rows(prompts)
    b = len(prompts)
    guided = cfg_scale != 1.0
    if guided:
        if negative_prompts is None:
            raise ValueError("classifier-free guidance (cfg_scale != 1) needs negative_prompts")
        negative_prompts = _as_rows(negative_prompts)
        if len(negative_prompts) != b:
            raise ValueError(f"{len(negative_prompts)} negative prompts for {b} prompts")
    start, stop = vocab_range if vocab_range is not None else (0, cfg.vocab_size)
    if not 0 <= start < stop <= cfg.vocab_size:
        raise ValueError(f"vocab_range must lie in [0, {cfg.vocab_size}), got {vocab_range}")
    pad = cfg.pad_token_id if pad_id is None else pad_id
    eos = cfg.eos_token_id if eos_id is None else eos_id

    check_context(cfg, max(len(p) for p in prompts + (negative_prompts or [])), new_tokens)
    mode = "plain" if not guided else ("batched" if batched_cfg else "unbatched")
    settings = StepSettings(start, stop, sampling, float(cfg_scale), mode, int(eos), int(pad))

    if mode == "batched":
        ids, mask = _bucket(*left_pad(prompts + negative_prompts, pad), pad)
    else:
        ids, mask = _bucket(*left_pad(prompts, pad), pad)
    pool = model.cache_pool
    runner = pool.runner(len(ids), _round_up(len(ids[0]) + new_tokens, CACHE_ROUND), role="cond")
    runner_u = ids_u = None
    if mode == "unbatched":
        ids_u, mask_u = _bucket(*left_pad(negative_prompts, pad), pad)
        runner_u = pool.runner(b, _round_up(len(ids_u[0]) + new_tokens, CACHE_ROUND), role="uncond")
    head = decode_head(model, start, stop)
    _evict(model, keep=[r for r in (runner, runner_u) if r is not None])
    graphs = _graphs(model, runner, runner_u, head, settings)
    h = runner.prefill(Tensor(np.asarray(ids, np.int32)), Tensor(np.asarray(mask, np.int32)))
    hu, slot0_u = h, 0
    if mode == "unbatched":
        hu = runner_u.prefill(Tensor(np.asarray(ids_u, np.int32)), Tensor(np.asarray(mask_u, np.int32)))
        slot0_u = len(ids_u[0])
    return Setup(graphs, h, hu, len(ids[0]), slot0_u)


def decode_one_token(setup: Setup, tokens, step: int, table, u_all, state):
    """Position `step` from the tokens of position step-1: one compiled graph. Returns the
    tokens and the rows' states (RUNNING, DONE, BROKEN)."""
    g = setup.graphs
    if step == 0:
        return g.first(setup.h, setup.hu, Tensor(0, ms.int32), table, u_all, state)
    slot, slot_u = Tensor(setup.slot0 + step - 1, ms.int32), Tensor(setup.slot0_u + step - 1, ms.int32)
    return g.step(tokens, slot, slot_u, Tensor(step, ms.int32), table, u_all, state)


def decode_n_tokens(setup: Setup, table: np.ndarray, *, seed=None, stop_at_eos: bool = False,
                    progress: Callable[[Progress], None] | None = None, eol_id: int | None = None,
                    started: float | None = None, streamer=None) -> np.ndarray:
    """Generate the positions of `table` ([B, N]; FREE where sampled, else the forced token).

    Returns the tokens [B, N] int64. Forced positions are written without logits; decoding
    stops after the last FREE position, or, with `stop_at_eos`, once every row has emitted eos
    (the remaining positions are then pad). Scores that are not finite raise ValueError, checked
    after the first sampled position (broken weights show there, before minutes of decoding), at
    the end, and for free text at each step (whose states the loop reads anyway): no host read
    per step that the loop did not already make. seed: an int, one per row, or None (see
    `sampling.uniforms`). streamer (with `stop_at_eos` only; see `streamer_calls`): given each
    position's tokens [B] as it is produced, read where the states are read, and `end()`d after
    the last.
    """
    if streamer is not None and not stop_at_eos:
        raise ValueError("a streamer follows free text (stop_at_eos); a table's block is known only at the end")
    put, end = streamer_calls(streamer) if streamer is not None else (None, None)
    g = setup.graphs
    b, n = table.shape
    free = (table == FREE).any(axis=0)
    free_at = np.nonzero(free)[0]
    last = int(free_at[-1]) if len(free_at) else -1
    out = table.astype(np.int64).copy()
    table_dev = Tensor(np.ascontiguousarray(table.T, dtype=np.int32))  # [N, B]: one row per step
    u_all = Tensor(uniforms(seed, n, b) if not g.sampling.greedy else np.zeros((n, b), np.float32))
    state = Tensor(np.full(b, RUNNING, dtype=np.int32))
    started = time.perf_counter() if started is None else started
    eol_pos = np.nonzero(table[0] == eol_id)[0] if eol_id is not None else np.zeros(0, np.int64)
    rows = len(eol_pos) if eol_id is not None else b
    sampled: list[tuple[int, Tensor]] = []
    tokens = None
    finished_at = n
    for t in range(last + 1):
        if free[t]:
            tokens, state = decode_one_token(setup, tokens, t, table_dev, u_all, state)
            if not sampled:
                _check_finite(state.asnumpy())
            sampled.append((t, tokens))
        else:
            if t > 0:
                g.feed(tokens, Tensor(setup.slot0 + t - 1, ms.int32), Tensor(setup.slot0_u + t - 1, ms.int32))
            tokens = Tensor(table[:, t].astype(np.int32))
        if stop_at_eos:
            states = state.asnumpy()
            _check_finite(states)
            rows_done = int((states != RUNNING).sum())
            if put is not None:  # the step is done (its states read): its tokens cost no extra wait
                put(tokens.asnumpy().astype(np.int64))
        else:
            rows_done = int(np.searchsorted(eol_pos, t, side="right"))
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(Progress(t + 1, n, rows_done, rows, (t + 1) / elapsed if elapsed > 0 else 0.0, elapsed))
        if stop_at_eos and rows_done == b:
            finished_at = t + 1
            break
    _check_finite(state.asnumpy())
    for t, tok in sampled:
        out[:, t] = tok.asnumpy()
    if finished_at < n:
        out[:, finished_at:] = setup.graphs.pad
    if progress is not None and finished_at == n and last + 1 < n:  # the forced tail is done too
        elapsed = time.perf_counter() - started
        progress(Progress(n, n, rows, rows, n / elapsed if elapsed > 0 else 0.0, elapsed))
    if end is not None:
        end()
    return out


def generate(model, prompts, *, negative_prompts=None, cfg_scale: float = 1.0, batched_cfg: bool = True,
             table: np.ndarray | None = None, max_new_tokens: int | None = None,
             vocab_range: tuple[int, int] | None = None, sampling: Sampling = GREEDY, seed=None,
             progress: Callable[[Progress], None] | None = None, eos_id: int | None = None,
             pad_id: int | None = None, eol_id: int | None = None, streamer=None) -> np.ndarray:
    """Generate for a batch of prompts; returns the new tokens [B, N] int64.

    With `table` ([B, N] or [N], see constraint.py): a constrained block; FREE positions are
    sampled from `vocab_range` (default: the visual tokens of the model's config), the others
    forced. Without it: free text over the whole vocabulary, up to `max_new_tokens` (capped by
    the model's context), stopping when every row has emitted eos (later positions are pad);
    a `streamer` (see `streamer_calls`) then receives each position's tokens as they come.
    seed: None, an int, or one int per prompt (each row then draws what it draws alone with
    its seed: `sampling.uniforms`).
    """
    started = time.perf_counter()
    cfg = model.config
    prompts = _as_rows(prompts)
    b = len(prompts)
    seed = check_seeds(seed, b)
    if streamer is not None:
        if table is not None:
            raise ValueError("a streamer follows free text; a constrained block (table) is not streamed")
        streamer_calls(streamer)  # checked before any work
    if table is not None:
        table = np.asarray(table, dtype=np.int64)
        if table.ndim == 1:
            table = np.broadcast_to(table, (b,) + table.shape)
        if table.ndim != 2 or table.shape[0] != b:
            raise ValueError(f"table must be [N] or [{b}, N], got shape {table.shape}")
        if vocab_range is None:
            vocab_range = (cfg.first_visual_token_id, cfg.first_visual_token_id + cfg.num_visual_tokens)
        eol_id = cfg.eol_token_id if eol_id is None else eol_id  # image rows, for progress
        stop_at_eos = False
    else:
        check_max_new_tokens(max_new_tokens)
        room = cfg.max_position_embeddings - max(len(p) for p in prompts + list(negative_prompts or []))
        if room < 1:
            raise ValueError(f"the prompt fills the model's context of {cfg.max_position_embeddings} "
                             "positions")
        table = np.full((b, min(max_new_tokens, room)), FREE, dtype=np.int64)
        stop_at_eos = True
    setup = prefill(model, prompts, negative_prompts, cfg_scale=cfg_scale, batched_cfg=batched_cfg,
                    new_tokens=table.shape[1], vocab_range=vocab_range, sampling=sampling, eos_id=eos_id,
                    pad_id=pad_id)
    return decode_n_tokens(setup, table, seed=seed, stop_at_eos=stop_at_eos, progress=progress, eol_id=eol_id,
                           started=started, streamer=streamer)


def guided_scores(model, prompts, negative_prompts, tokens, *, cfg_scale: float, batched_cfg: bool = True,
                  vocab_range: tuple[int, int] | None = None) -> np.ndarray:
    """Teacher-forced scores: feed `tokens` ([B, T]) after the prompts and return what the
    sampler sees at each position, [T, B, n] (guided log-probabilities when cfg_scale != 1,
    else raw logits). For inspecting guidance and comparing the batched and unbatched branches.
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    setup = prefill(model, prompts, negative_prompts, cfg_scale=cfg_scale, batched_cfg=batched_cfg,
                    new_tokens=tokens.shape[1], vocab_range=vocab_range)
    g = setup.graphs
    out = [g.first_scores(setup.h, setup.hu).asnumpy()]
    for t in range(1, tokens.shape[1]):
        out.append(g.step_scores(Tensor(tokens[:, t - 1]), Tensor(setup.slot0 + t - 1, ms.int32),
                                 Tensor(setup.slot0_u + t - 1, ms.int32)).asnumpy())
    return np.stack(out)
