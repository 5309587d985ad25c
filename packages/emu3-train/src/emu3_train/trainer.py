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
  r-th of dp equal parts, cut into `accumulate` micro-batches. A mixture of data sets
  (several `data` specs, `DataSpec`) assigns each position to one of them with probability
  proportional to its weight and takes that data set's next sample (`MixtureOrder`);
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

TASKS = ("t2i", "vqa", "video")
DTYPES = ("fp32", "fp16", "bf16")
# Settings that change the numbers of a run: a resume must use the same ones (and the same
# mixture: data files, tasks and weights, checked apart).
_RESUME_KEYS = ("steps", "batch_size", "max_length", "lr", "min_lr", "warmup_steps",
                "weight_decay", "clip_grad_norm", "accumulate", "null_prompt_prob", "freeze_layers",
                "dtype", "dropout", "seed")
_SPEC_KEYS = ("task", "weight", "loss_weight")


@dataclass(frozen=True)
class DataSpec:
    """One data set of a run: its list file, its task, its weight in the mixture and the weight
    of its supervised tokens in the loss."""

    path: str  # DIR/list/train.json
    task: str | None = None  # None: the list file's recorded task, else --task
    weight: float = 1.0  # sampling weight (relative)
    # each supervised token of this data counts this many times in the step's weighted mean loss:
    # a task with short answers (VQA: a word against an image's 72 visual tokens) gets a say
    loss_weight: float = 1.0

    def record(self) -> dict:
        """What trainer_state.json records (the path made absolute)."""
        return {"path": str(Path(self.path).resolve()), "task": self.task, "weight": self.weight,
                "loss_weight": self.loss_weight}


def parse_data_spec(spec: str) -> DataSpec:
    """`PATH` or `PATH,task=T,weight=W,loss_weight=X` (each key optional, in any order) -> DataSpec.

    Options are read from the right, as long as a comma-separated part looks like `key=value`,
    so a path may itself hold commas. ValueError naming the spec for an unknown key, a repeated
    one, a task not in TASKS, a weight or loss_weight that is not a positive finite number, or
    no path."""
    if not isinstance(spec, str):
        raise ValueError(f"--data must be a string PATH[,task=T][,weight=W][,loss_weight=X], got {spec!r}")
    path, options = spec, {}
    while "," in path:
        head, _, part = path.rpartition(",")
        key, eq, value = part.partition("=")
        if not eq or not key.strip().isidentifier():
            break
        key = key.strip()
        if key not in _SPEC_KEYS:
            raise ValueError(f"--data {spec!r}: unknown option {key!r} (known: {', '.join(_SPEC_KEYS)})")
        if key in options:
            raise ValueError(f"--data {spec!r}: {key!r} given twice")
        options[key] = value.strip()
        path = head
    if not path.strip():
        raise ValueError(f"--data {spec!r}: no path (expected PATH[,task=T][,weight=W])")
    task = options.get("task")
    if task is not None and task not in TASKS:
        raise ValueError(f"--data {spec!r}: task must be one of {', '.join(TASKS)}, got {task!r}")
    numbers = {}
    for key in ("weight", "loss_weight"):
        if key not in options:
            continue
        try:
            value = float(options[key])
        except ValueError:
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--data {spec!r}: {key} must be a positive number, got {options[key]!r}")
        numbers[key] = value
    return DataSpec(path=path, task=task, **numbers)


@dataclass
class SftConfig:
    """Everything `emu3 train sft` takes; the defaults are the Emu3 fine-tuning recipe."""

    # DIR/list/train.json (emu3 train prepare-*, or the reference's scripts), or a list of specs
    # "PATH[,task=T][,weight=W]" for a mixture (`parse_data_spec`)
    data: str | list[str]
    model: str  # LM checkpoint directory (original or -hf layout)
    out: str  # output directory: metrics.jsonl, checkpoint-STEP/, final/
    steps: int  # optimiser steps
    batch_size: int  # global batch per optimiser step (all data-parallel ranks, all micro-steps)
    max_length: int  # every sequence is right-padded to this; a longer sample is an error
    task: str | None = None  # "t2i", "vqa" or "video": for data whose spec and list file name none
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
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"--task must be one of {TASKS}, got {self.task!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.max_length % self.sequence_parallel:
            raise ValueError(f"--max-length {self.max_length} must be a multiple of --sequence-parallel "
                             f"{self.sequence_parallel}")
        self.mixture()
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        if not self.resume and out.is_dir() and ((out / "metrics.jsonl").exists()
                                                 or checkpoints.latest_checkpoint(out) is not None):
            raise ValueError(f"--out {out} already holds a run; pass --resume to continue it, or choose "
                             "another directory")

    def data_specs(self) -> list[str]:
        """`data` as a list of specs (a single string is one)."""
        if isinstance(self.data, (str, os.PathLike)):
            return [str(self.data)]
        specs = list(self.data)
        if not specs:
            raise ValueError("--data: no data set given")
        return specs

    def mixture(self) -> list[DataSpec]:
        """The data sets of the run, each with its task resolved: the spec's task, else the task
        its list file records, else `task` (--task). ValueError naming the data file when none
        of them gives one, when the spec and the list disagree, or when the file is missing."""
        from .dataset import read_list

        out = []
        for spec in self.data_specs():
            d = parse_data_spec(spec)
            if not Path(d.path).is_file():
                raise ValueError(f"--data {d.path}: no such file (expected DIR/list/train.json)")
            try:
                recorded = read_list(d.path).task
            except (FileNotFoundError, ValueError) as exc:
                raise ValueError(f"--data {d.path}: {exc}") from None
            if recorded is not None and recorded not in TASKS:
                raise ValueError(f"--data {d.path}: the list file records task {recorded!r}, not one of {TASKS}")
            if d.task is not None and recorded is not None and d.task != recorded:
                raise ValueError(f"--data {spec!r}: task={d.task} but the list file {d.path} records "
                                 f"task {recorded!r}")
            task = d.task or recorded or self.task
            if task is None:
                raise ValueError(f"--data {d.path}: no task known for this data (its list file records none); "
                                 "add ,task=t2i|vqa|video to the --data spec or pass --task")
            out.append(dataclasses.replace(d, task=task))
        return out


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
    task_tokens: dict | None = None  # supervised tokens of the global batch per task


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


_MIX_KEY = 0x6D6978  # "mix": keeps the mixture's draws apart from the permutations' streams


def _per_data_set(values, n: int, what: str) -> np.ndarray:
    """`values` as float64 [n], each a positive finite number; ValueError naming `what` otherwise."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,) or not np.all(np.isfinite(array)) or array.min() <= 0:
        raise ValueError(f"{what} must be positive, one per data set, got {array.tolist()}")
    return array


class MixtureOrder:
    """The sample stream of a mixture of data sets, a function of (seed, position).

    Position i goes to data set k with probability weights[k] / sum(weights): draw i of
    numpy's default_rng([seed, _MIX_KEY, i // CHUNK]) (CHUNK uniforms per chunk) against the
    cumulative weights. It then takes the next element of data set k's own stream: the n-th
    position given to k (n counted from the start of the run) is element n % N_k of data set
    k's permutation for epoch n // N_k, drawn from default_rng([seed, epoch, k]) ([seed, epoch]
    for k = 0).
    Counting n replays the draws of the earlier chunks once (cached per chunk): cheap, and
    stateless for a resumed run. With one data set there is no draw and the stream is
    `sample_indices`'s.
    """

    CHUNK = 4096

    def __init__(self, seed: int, sizes, weights=None):
        self.seed = int(seed)
        self.sizes = [int(n) for n in sizes]
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"every data set of a mixture needs samples, got sizes {self.sizes}")
        weights = np.ones(len(self.sizes)) if weights is None else _per_data_set(weights, len(self.sizes),
                                                                                  "mixture weights")
        self.cumulative = np.cumsum(weights) / weights.sum()
        self.cumulative[-1] = 1.0
        self._before: list[np.ndarray] = [np.zeros(len(self.sizes), dtype=np.int64)]  # counts before chunk c
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def choices(self, chunk: int) -> np.ndarray:
        """The data set of every position of chunk `chunk`, int64 [CHUNK]."""
        if len(self.sizes) == 1:
            return np.zeros(self.CHUNK, dtype=np.int64)
        u = np.random.default_rng([self.seed, _MIX_KEY, int(chunk)]).random(self.CHUNK)
        return np.searchsorted(self.cumulative, u, side="right").astype(np.int64)

    def _counts_before(self, chunk: int) -> np.ndarray:
        while len(self._before) <= chunk:
            c = len(self._before) - 1
            self._before.append(self._before[c] + np.bincount(self.choices(c), minlength=len(self.sizes)))
        return self._before[chunk]

    def _permutation(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            seed = [self.seed, epoch] + ([k] if k else [])  # data set 0 alone: sample_indices' order
            self._perms[key] = np.random.default_rng(seed).permutation(self.sizes[k])
        return self._perms[key]

    def picks(self, start: int, count: int) -> list[tuple[int, int, int]]:
        """(data set, sample index, epoch) of positions start .. start+count-1."""
        out = []
        chunk, taken, choices = None, None, None
        for p in range(start, start + count):
            c, offset = divmod(p, self.CHUNK)
            if c != chunk:
                chunk, choices = c, self.choices(c)
                taken = self._counts_before(c).copy()
                taken += np.bincount(choices[:offset], minlength=len(self.sizes))
            k = int(choices[offset])
            n = int(taken[k])
            taken[k] += 1
            epoch, i = divmod(n, self.sizes[k])
            out.append((k, int(self._permutation(k, epoch)[i]), epoch))
        return out


class SftMixture:
    """Several `SftDataset`s sampled as one stream (`MixtureOrder`); rows of any task share a
    batch (all are padded to the same max_length). With `loss_weights` (one per data set, not
    all 1) each row carries "loss_weights", its data set's weight at every position."""

    def __init__(self, datasets, weights=None, seed: int = 0, loss_weights=None):
        self.datasets = list(datasets)
        lengths = {d.max_length for d in self.datasets}
        if len(lengths) != 1:
            raise ValueError(f"the data sets of a mixture must share max_length, got {sorted(lengths)}")
        self.weights = [1.0] * len(self.datasets) if weights is None else [float(w) for w in weights]
        self.order = MixtureOrder(seed, [len(d) for d in self.datasets], self.weights)
        if loss_weights is not None:
            loss_weights = _per_data_set(loss_weights, len(self.datasets), "loss_weights").tolist()
            if all(w == 1.0 for w in loss_weights):
                loss_weights = None  # the plain mean, as without
        self.loss_weights = loss_weights

    def picks(self, start: int, count: int) -> list[tuple[int, int, int]]:
        return self.order.picks(start, count)

    def row(self, pick) -> dict:
        k, index, epoch = pick
        row = self.datasets[k].batch([index], epoch)
        if self.loss_weights is not None:
            row["loss_weights"] = np.full(row["labels"].shape, self.loss_weights[k], np.float32)
        return row

    def task_tokens(self, start: int, count: int) -> dict:
        """Supervised tokens per task of positions start .. start+count-1 (after `validate`)."""
        out: dict[str, int] = {}
        for k, index, _ in self.picks(start, count):
            d = self.datasets[k]
            if d.supervised is None:
                d.validate()
            out[d.task] = out.get(d.task, 0) + int(d.supervised[index])
        return out


def _as_mixture(data, seed: int) -> SftMixture:
    return data if isinstance(data, SftMixture) else SftMixture([data], seed=seed)


def rank_micro_batches(dataset, config: SftConfig, step: int, dp_size: int, dp_rank: int) -> list[dict]:
    """This data-parallel rank's share of optimiser step `step`, as `accumulate` micro-batches.
    `dataset`: an `SftDataset`, or an `SftMixture` of several."""
    mixture = _as_mixture(dataset, config.seed)
    per_rank = config.batch_size // dp_size
    micro = per_rank // config.accumulate
    picks = mixture.picks(step * config.batch_size + dp_rank * per_rank, per_rank)
    rows = [mixture.row(pick) for pick in picks]
    keys = [key for key in ("input_ids", "labels", "attention_mask", "loss_weights") if key in rows[0]]
    out = []
    for k in range(config.accumulate):
        part = rows[k * micro:(k + 1) * micro]
        out.append({key: np.concatenate([r[key] for r in part]) for key in keys})
    return out


GENERATION_CONFIG = "generation_config.json"


def _generation_config(model) -> bytes | None:
    """The starting model's generation_config.json (its pipeline defaults, e.g. the default
    model's empty negative prompt), to keep beside the fine-tuned weights; None when it has none."""
    from emu3_vq import defaults, hub

    try:
        folder = defaults.lm_dir() if model is None else hub.resolve(model, [GENERATION_CONFIG], required=())
    except FileNotFoundError:  # a hub model offline without this optional file cached
        return None
    path = Path(folder) / GENERATION_CONFIG
    return path.read_bytes() if path.is_file() else None


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


def _mixture_record(mixture: list[DataSpec]) -> list[dict]:
    return [d.record() for d in mixture]


def _resume_point(config: SftConfig, out: Path, mixture: list[DataSpec]):
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
    ours = _mixture_record(mixture)
    if "mixture" in state:  # runs recorded before loss weights had all 1
        theirs = [{**d, "loss_weight": d.get("loss_weight", 1.0)} for d in state["mixture"]]
    else:  # a run recorded before mixtures: one data file and --task
        theirs = [{"path": str(Path(saved.get("data", "")).resolve()), "task": saved.get("task"),
                   "weight": 1.0, "loss_weight": 1.0}]
    if theirs != ours:
        def show(m):
            return " ".join(f"{d['path']},task={d['task']},weight={d['weight']:g},loss_weight={d['loss_weight']:g}"
                            for d in m)
        raise ValueError(f"--resume: --data is {show(ours)} but the run in {out} used {show(theirs)}")
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
    specs = config.mixture()
    ckpt, state = _resume_point(config, out, specs)
    tokenizer = Emu3Tokenizer.from_pretrained(config.tokenizer or config.model)
    generation = _generation_config(config.model)
    datasets = [SftDataset(d.path, tokenizer, d.task, config.max_length,
                           null_prompt_prob=config.null_prompt_prob, seed=config.seed) for d in specs]
    for d in datasets:
        d.validate()
    dataset = SftMixture(datasets, [d.weight for d in specs], seed=config.seed,
                         loss_weights=[d.loss_weight for d in specs])

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
                              loss_scale=float(result.loss_scale),
                              task_tokens=dataset.task_tokens(step * config.batch_size, config.batch_size))
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
                save(engine, model, tokenizer, config, out / checkpoints.checkpoint_name(done), done, last, specs,
                     generation)
    finally:
        if bar is not None:
            bar.close()
    final = save(engine, model, tokenizer, config, out / checkpoints.FINAL, config.steps, last, specs, generation)
    return {"steps": config.steps, "resumed_from": start, "final": str(final),
            "last": None if last is None else dataclasses.asdict(last)}


def save(engine, model, tokenizer, config: SftConfig, target: Path, step: int, last,
         mixture: list[DataSpec] | None = None, generation: bytes | None = None) -> Path:
    """Write a checkpoint directory (collective: every process calls it; process 0 writes).
    trainer_state.json records the step, the settings, the mixture (each data set's absolute
    path, task and weight) and the last metrics; `generation` is the starting model's
    generation_config.json, kept as it was."""
    from emu3_lm.checkpoint import save_arrays

    weights = engine.state_dict()  # gathered across processes
    optimizer = engine.optimizer_state()
    if engine.rank != 0:
        return target

    def write(tmp: Path):
        save_arrays(model.config, weights, tmp, layout="original", dtype=model.dtype)
        tokenizer.save_pretrained(tmp)
        if generation is not None:
            (tmp / GENERATION_CONFIG).write_bytes(generation)
        checkpoints.write_optimizer_state(tmp, optimizer)
        checkpoints.write_json(tmp / checkpoints.STATE_FILE, {
            "step": int(step), "config": dataclasses.asdict(config),
            "mixture": _mixture_record(mixture if mixture is not None else config.mixture()),
            "world_size": engine.world_size,
            "last": None if last is None else dataclasses.asdict(last)})

    return checkpoints.write_checkpoint_dir(target, write)
