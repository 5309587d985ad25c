"""Supervised fine-tuning of Emu3 (`emu3 train sft`): the loop around the train step.

    config = SftConfig(data="DIR/list/train.json", model="LM_DIR", task="t2i", out="OUT",
                       steps=100, batch_size=8, max_length=1024)
    summary = train(config)

One process or many (msrun): each process runs this same function. What it does, per
optimiser step s (counted from 0):
- the lr is `cosine_with_min_lr(s, steps, warmup_steps, lr, min_lr)` (transformers'
  `cosine_with_min_lr` schedule as torch's LambdaLR applies it);
- the global batch is the samples at positions s*B .. s*B+B-1 of an endless stream that visits
  the data set in a fresh permutation each epoch (`sample_indices`: a function of the seed and
  the position only, so a resumed run sees the same samples); data-parallel rank r takes the
  r-th of dp equal parts, cut into `accumulate` micro-batches;
- `TrainEngine.step` (engine.py) runs forward, backward, the reduction across processes,
  clipping and AdamW, and reports the step's loss before the update (the mean over every
  supervised token of the global batch), the gradient norm and the token count;
- process 0 appends a line to OUT/metrics.jsonl and saves OUT/checkpoint-STEP every
  `save_every` steps and OUT/final at the end (checkpoints.py; committed atomically).

`resume=True` continues from the latest OUT/checkpoint-STEP: weights, AdamW moments and step
count, loss scale, and metrics.jsonl cut back to that step. With dropout off the result is
bit-equal to an uninterrupted run; with dropout on, the masks drawn after the resume differ
(MindSpore's compiled random ops keep their generator state inside the graph, which cannot be
saved), so it is equal in distribution only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoints

TASKS = ("t2i", "vqa")
DTYPES = ("fp32", "fp16", "bf16")
# Settings that change the numbers of a run: a resume must use the same ones.
_RESUME_KEYS = ("data", "task", "steps", "batch_size", "max_length", "lr", "min_lr", "warmup_steps",
                "weight_decay", "clip_grad_norm", "accumulate", "null_prompt_prob", "freeze_layers",
                "dtype", "dropout", "seed")


@dataclass
class SftConfig:
    """Everything `emu3 train sft` takes; the defaults are the Emu3 fine-tuning recipe."""

    data: str  # DIR/list/train.json (emu3 train prepare-t2i / prepare-vqa, or the reference's scripts)
    model: str  # LM checkpoint directory (original or -hf layout)
    out: str  # output directory: metrics.jsonl, checkpoint-STEP/, final/
    steps: int  # optimiser steps
    batch_size: int  # global batch per optimiser step (all data-parallel ranks, all micro-steps)
    max_length: int  # every sequence is right-padded to this; a longer sample is an error
    task: str = "t2i"  # "t2i" (text to image) or "vqa"
    tokenizer: str | None = None  # tokenizer directory; default: the model directory
    lr: float = 1e-5  # peak learning rate
    min_lr: float = 1e-6  # the cosine ends here at `steps`
    warmup_steps: int = 30  # linear warmup from 0
    weight_decay: float = 0.1  # AdamW decoupled decay, not on norm weights and biases
    clip_grad_norm: float = 5.0  # global 2-norm across all processes; <= 0: no clipping
    accumulate: int = 1  # micro-steps per optimiser step
    null_prompt_prob: float = 0.05  # t2i: caption replaced by "" (for classifier-free guidance)
    recompute: bool = False  # recompute each decoder layer in the backward (less memory)
    freeze_layers: int = 0  # the first N decoder layers are not trained
    dtype: str = "fp32"  # fp32 | fp16 (dynamic loss scaling) | bf16 (accelerators only)
    dropout: float | None = None  # attention/residual dropout; None: the checkpoint's attention_dropout
    seed: int = 0  # sample order, null prompts, dropout
    sequence_parallel: int = 1  # Ulysses: each sequence split over this many processes
    zero_stage: int = 0  # 0 (replicated), 1 (optimizer state), 2 (+ gradients), 3 (+ parameters) sharded
    save_every: int = 0  # checkpoint-STEP every N steps; 0: only final/
    resume: bool = False  # continue from the latest OUT/checkpoint-STEP

    def validate(self) -> None:
        """Types and ranges of every field; a ValueError names the option."""
        def positive(name):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")

        def finite(name, low=0.0, high=None, low_open=False):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and math.isfinite(v) and (v > low if low_open else v >= low)
            if ok and high is not None:
                ok = v <= high
            if not ok:
                span = f"{'>' if low_open else '>='} {low}" + ("" if high is None else f" and <= {high}")
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number {span}, got {v}")

        for name in ("steps", "batch_size", "max_length", "accumulate", "sequence_parallel"):
            positive(name)
        for name in ("warmup_steps", "freeze_layers", "save_every", "seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        finite("lr", low_open=True)
        finite("min_lr")
        finite("weight_decay")
        finite("null_prompt_prob", high=1.0)
        if not math.isfinite(self.clip_grad_norm):
            raise ValueError(f"--clip-grad-norm must be finite, got {self.clip_grad_norm}")
        if self.dropout is not None:
            finite("dropout", high=0.99)
        if self.min_lr > self.lr:
            raise ValueError(f"--min-lr {self.min_lr} is above --lr {self.lr}")
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {TASKS}, got {self.task!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.max_length % self.sequence_parallel:
            raise ValueError(f"--max-length {self.max_length} must be a multiple of --sequence-parallel "
                             f"{self.sequence_parallel}")
        if not Path(self.data).is_file():
            raise ValueError(f"--data {self.data}: no such file (expected DIR/list/train.json)")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        if not self.resume and out.is_dir() and ((out / "metrics.jsonl").exists()
                                                 or checkpoints.latest_checkpoint(out) is not None):
            raise ValueError(f"--out {out} already holds a run; pass --resume to continue it, or choose "
                             "another directory")


@dataclass
class StepRecord:
    """One line of metrics.jsonl."""

    step: int  # optimiser steps done (1 for the first)
    loss: float  # mean loss of this step's global batch, before the update
    lr: float
    grad_norm: float  # global 2-norm of the gradients, before clipping
    tokens: int  # supervised tokens of the global batch
    seconds: float  # wall time of the step
    skipped: bool  # fp16 overflow: no update
    loss_scale: float


def sample_indices(seed: int, start: int, count: int, num_samples: int) -> list[tuple[int, int]]:
    """(sample index, epoch) of stream positions start .. start+count-1: the data set in a fresh
    permutation per epoch, drawn from (seed, epoch), so any position is found without state."""
    out, perms = [], {}
    for p in range(start, start + count):
        epoch = p // num_samples
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(num_samples)
        out.append((int(perms[epoch][p % num_samples]), epoch))
    return out


def rank_micro_batches(dataset, config: SftConfig, step: int, dp_size: int, dp_rank: int) -> list[dict]:
    """This data-parallel rank's share of optimiser step `step`, as `accumulate` micro-batches."""
    per_rank = config.batch_size // dp_size
    micro = per_rank // config.accumulate
    picks = sample_indices(config.seed, step * config.batch_size + dp_rank * per_rank, per_rank,
                           len(dataset))
    rows = [dataset.batch([index], epoch) for index, epoch in picks]
    out = []
    for k in range(config.accumulate):
        part = rows[k * micro:(k + 1) * micro]
        out.append({key: np.concatenate([r[key] for r in part]) for key in ("input_ids", "labels",
                                                                             "attention_mask")})
    return out


def _load_model(path, config: SftConfig):
    from emu3_lm.model import Emu3ForCausalLM
    from emu3_vq.device import resolve_dtype

    dtype = resolve_dtype(config.dtype)
    model = Emu3ForCausalLM.from_pretrained(path, dtype=dtype)
    if config.dropout is not None and config.dropout != model.config.attention_dropout:
        # dropout probabilities are read when the cells are built: rebuild with the new value
        state = model.state_dict()
        model = Emu3ForCausalLM(dataclasses.replace(model.config, attention_dropout=float(config.dropout)),
                                dtype=dtype, init_weights=False)
        model.load_state_dict(state)
    n_layers = model.config.num_hidden_layers
    if config.freeze_layers > n_layers:
        raise ValueError(f"--freeze-layers {config.freeze_layers} exceeds the model's {n_layers} layers")
    for layer in list(model.model.layers)[:config.freeze_layers]:
        for p in layer.get_parameters():
            p.requires_grad = False
    if config.recompute:
        for layer in model.model.layers:
            layer.recompute()
    model.set_train(True)
    return model


def _check_device_dtype(dtype: str) -> None:
    from emu3_vq import device

    if dtype == "bf16" and device.policy().target == "CPU":
        raise ValueError("--dtype bf16 needs an accelerator: MindSpore has no bf16 matmul on CPU; use fp32")


def _cut_metrics(path: Path, last_step: int) -> None:
    """Keep the lines of steps <= last_step (a run killed after its last checkpoint logged more)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


def _resume_point(config: SftConfig, out: Path):
    """(checkpoint dir, its state) to resume from, or (None, None) for a fresh run."""
    if not config.resume:
        return None, None
    ckpt = checkpoints.latest_checkpoint(out)
    if ckpt is None:
        return None, None
    state = checkpoints.read_state(ckpt)
    saved = state.get("config", {})
    for key in _RESUME_KEYS:
        if key in saved and saved[key] != getattr(config, key):
            raise ValueError(f"--resume: --{key.replace('_', '-')} is {getattr(config, key)!r} but the run in "
                             f"{out} used {saved[key]!r}")
    return ckpt, state


def train(config: SftConfig, progress: bool = True) -> dict:
    """Run the fine-tuning described by `config`; returns a summary (steps, last loss, paths).

    Every check (options, data, every sample's length, the model's fit) happens before the first
    step. Call it in every process of an msrun launch.
    """
    config.validate()
    _check_device_dtype(config.dtype)
    from emu3_lm.tokenizer import Emu3Tokenizer

    from . import parallel

    # First: under msrun this joins the world, and msrun's scheduler process (which runs this
    # script too) stays inside until the workers are done, holding no model.
    parallel.init()

    from .engine import EngineConfig, TrainEngine
    from .optim import cosine_with_min_lr
    from .sequences import SftDataset

    out = Path(config.out)
    ckpt, state = _resume_point(config, out)
    tokenizer = Emu3Tokenizer.from_pretrained(config.tokenizer or config.model)
    dataset = SftDataset(config.data, tokenizer, config.task, config.max_length,
                         null_prompt_prob=config.null_prompt_prob, seed=config.seed)
    dataset.validate()

    import mindspore as ms

    ms.set_seed(config.seed)
    model = _load_model(ckpt if ckpt is not None else config.model, config)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary "
                         f"{model.config.vocab_size}")
    engine = TrainEngine(model, EngineConfig(
        zero_stage=config.zero_stage, sequence_parallel=config.sequence_parallel,
        accumulate=config.accumulate, clip_grad_norm=config.clip_grad_norm,
        weight_decay=config.weight_decay))
    if config.batch_size % (engine.dp_size * config.accumulate):
        raise ValueError(f"--batch-size {config.batch_size} must be a multiple of the data-parallel size "
                         f"({engine.dp_size}) times --accumulate ({config.accumulate})")
    start = 0
    if ckpt is not None:
        engine.load_optimizer_state(checkpoints.read_optimizer_state(ckpt))
        start = int(state["step"])
    main = engine.rank == 0
    metrics_path = out / "metrics.jsonl"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _cut_metrics(metrics_path, start) if ckpt is not None else metrics_path.unlink(missing_ok=True)

    bar = None
    if main and progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="sft", unit="step", dynamic_ncols=True)
    last = None
    try:
        for step in range(start, config.steps):
            t0 = time.perf_counter()
            lr = cosine_with_min_lr(step, config.steps, config.warmup_steps, config.lr, config.min_lr)
            micro = rank_micro_batches(dataset, config, step, engine.dp_size, engine.dp_rank)
            result = engine.step(micro, lr)
            last = StepRecord(step=step + 1, loss=float(result.loss), lr=float(lr),
                              grad_norm=float(result.grad_norm), tokens=int(result.tokens),
                              seconds=round(time.perf_counter() - t0, 4), skipped=bool(result.skipped),
                              loss_scale=float(result.loss_scale))
            if not math.isfinite(last.loss) and not last.skipped:
                raise FloatingPointError(f"step {step + 1}: the loss is {last.loss}; stopping "
                                         "(lower --lr, or use --dtype fp32)")
            if main:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(dataclasses.asdict(last)) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{last.loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
            done = step + 1
            if config.save_every and done % config.save_every == 0 and done < config.steps:
                save(engine, model, tokenizer, config, out / checkpoints.checkpoint_name(done), done, last)
    finally:
        if bar is not None:
            bar.close()
    final = save(engine, model, tokenizer, config, out / checkpoints.FINAL, config.steps, last)
    return {"steps": config.steps, "resumed_from": start, "final": str(final),
            "last": None if last is None else dataclasses.asdict(last)}


def save(engine, model, tokenizer, config: SftConfig, target: Path, step: int, last) -> Path:
    """Write a checkpoint directory (collective: every process calls it; process 0 writes)."""
    from emu3_lm.checkpoint import save_arrays

    weights = engine.state_dict()  # gathered across processes
    optimizer = engine.optimizer_state()
    if engine.rank != 0:
        return target

    def write(tmp: Path):
        save_arrays(model.config, weights, tmp, layout="original", dtype=model.dtype)
        tokenizer.save_pretrained(tmp)
        checkpoints.write_optimizer_state(tmp, optimizer)
        checkpoints.write_json(tmp / checkpoints.STATE_FILE, {
            "step": int(step), "config": dataclasses.asdict(config),
            "world_size": engine.world_size,
            "last": None if last is None else dataclasses.asdict(last)})

    return checkpoints.write_checkpoint_dir(target, write)
