"""Training the vision tokenizer: `emu3 train vq`.

No released Emu3 code trains the tokenizer; this is the VQ-VAE recipe (`vq_loss.VQLoss`:
L1 + L2 reconstruction, codebook and commitment losses, straight-through) on Emu3's own
architecture, with the two usual remedies against codebook collapse:

- k-means initialisation: before the first step the codebook is set to `codebook_size`
  k-means centroids of the untrained encoder's latents over the first batches;
- dead-code restart: every `restart_every` steps, each code not chosen once in that window is
  moved onto a latent drawn from the current batch.

Images (and optionally clips cut from videos, `clip_latent_frames` x 4 frames) are read once
into memory; the batch of step s is a function of (seed, s), so a resumed run continues exactly
(bit-equal: the AdamW state and the codebook usage since the last restart are saved too). Outputs follow
`emu3 train sft`: `OUT/metrics.jsonl` (one line a step), `OUT/checkpoint-STEP/` every
`save_every` steps and `OUT/final/`, each written whole then renamed; a checkpoint is a
vision-tokenizer directory in the original layout (config.json, model.safetensors,
preprocessor_config.json) that `Emu3VQModel.from_pretrained` loads, plus optimizer.safetensors
and trainer_state.json. `resume` continues from the latest checkpoint-STEP (the settings of
`_RUN_KEYS` must be the run's; with no checkpoint yet the run starts afresh, as sft's does).
See docs/training.md, "Training the vision tokenizer".
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .checkpoints import (
    FINAL,
    checkpoint_name,
    latest_checkpoint,
    read_optimizer_state,
    read_state,
    write_checkpoint_dir,
    write_json,
    write_optimizer_state,
)

METRICS = "metrics.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# the settings a resumed run must share with the run it continues
_RUN_KEYS = ("images", "videos", "config", "init", "image_size", "batch_size", "clip_batch_size",
             "clip_latent_frames", "lr", "min_lr", "warmup_steps", "beta", "restart_every", "seed", "steps")
# what a run saved before a setting existed ran with
_SAVED_DEFAULTS = {"clip_latent_frames": 1}


@dataclass
class VQTrainConfig:
    """Settings of `emu3 train vq` (see docs/training.md)."""

    images: str  # a directory of images (searched recursively)
    out: str
    videos: str | None = None  # a directory of videos (frame folders, GIF or MP4), for clips
    config: str = "shapes"  # an Emu3VQConfig preset, a config.json, or a checkpoint directory
    init: str | None = None  # a vision-tokenizer checkpoint to start from (its weights and architecture)
    image_size: int = 32  # images (and frames) are resized to image_size x image_size
    steps: int = 400
    batch_size: int = 12  # images a step
    clip_batch_size: int = 1  # video clips a step (when `videos`)
    # latent frames a clip encodes to (clips of clip_latent_frames x temporal_downsample_factor
    # frames). 1 trains the temporal layers on single latent frames only: the decoder then cannot
    # decode a second latent frame of a video (measured, docs/shapes.md); 2 or more to continue videos
    clip_latent_frames: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10
    beta: float = 0.25  # commitment weight
    restart_every: int = 25  # steps between dead-code restarts (0: never)
    kmeans_batches: int = 8  # batches whose latents initialise the codebook (0: random init)
    seed: int = 0
    save_every: int = 0
    resume: bool = False
    min_pixels: int | None = None  # the image processor's limits written with the model
    max_pixels: int | None = None
    # compile the train step (False: eager, no compilation, for short runs and debugging; its numbers
    # differ from the compiled step's by float rounding, so resume a run with the setting it ran with)
    jit: bool = True

    def validate(self) -> None:
        for name in ("steps", "batch_size", "image_size", "clip_latent_frames"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("clip_batch_size", "warmup_steps", "restart_every", "kmeans_batches", "save_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "beta"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.min_lr > self.lr:
            raise ValueError(f"--min-lr ({self.min_lr}) must not exceed --lr ({self.lr})")


# ---- data -------------------------------------------------------------------------------

def bar(items, desc: str, disable: bool, **kwargs):
    """A progress bar on stderr (tqdm), or the items alone when `disable`."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=disable, dynamic_ncols=True, **kwargs)


def image_files(directory) -> list[Path]:
    """Every image under `directory`, sorted; an error when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--images {directory}: not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"--images {directory}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def video_sources(directory) -> list[Path]:
    """The videos of `directory`: its sub-directories holding frames, and its GIF/MP4 files."""
    from emu3_vq.media import is_video_path

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--videos {directory}: not a directory")
    found = sorted(p for p in directory.iterdir() if p.is_dir() or is_video_path(p))
    if not found:
        raise ValueError(f"--videos {directory}: no frame folders, GIF or MP4 files found")
    return found


def _pixels(image, size: int) -> np.ndarray:
    """An image -> float32 [3, size, size] in [-1, 1] (the tokenizer's normalisation)."""
    from PIL import Image

    from emu3_vq.processor import to_rgb

    image = to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return (np.asarray(image, np.float32).transpose(2, 0, 1) / 127.5 - 1.0).astype(np.float32)


def load_images(files, size: int, progress: bool = False) -> np.ndarray:
    from emu3_vq.media import load_image

    out = np.empty((len(files), 3, size, size), np.float32)
    for i, path in enumerate(bar(files, desc="reading images", disable=not progress)):
        try:
            out[i] = _pixels(load_image(path), size)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read image ({exc})") from None
    return out


def load_videos(sources, size: int, frames_per_clip: int, progress: bool = False) -> list[np.ndarray]:
    """Each video as float32 [T, 3, size, size]; shorter than one clip is an error naming it."""
    from emu3_vq.media import load_frames

    videos = []
    for path in bar(sources, desc="reading videos", disable=not progress):
        try:
            frames = load_frames(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read video ({exc})") from None
        if len(frames) < frames_per_clip:
            raise ValueError(f"{path}: {len(frames)} frames, a clip needs {frames_per_clip}")
        videos.append(np.stack([_pixels(f, size) for f in frames]))
    return videos


def step_batch(images: np.ndarray, videos: list[np.ndarray], config: VQTrainConfig, step: int,
               frames_per_clip: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The batch of `step` (from 0) of random stream `stream` (0: training, 1: the k-means
    initialisation): a function of (seed, stream, step) alone."""
    rng = np.random.default_rng([config.seed, stream, step])
    batch = images[rng.integers(0, len(images), config.batch_size)]
    clips = None
    if videos and config.clip_batch_size:
        picks = []
        for _ in range(config.clip_batch_size):
            v = videos[int(rng.integers(0, len(videos)))]
            start = int(rng.integers(0, len(v) - frames_per_clip + 1))
            picks.append(v[start:start + frames_per_clip])
        clips = np.stack(picks)
    return batch, clips


# ---- model ------------------------------------------------------------------------------

def resolve_config(spec: str):
    """An Emu3VQConfig from a preset name, a config.json, or a checkpoint directory."""
    from emu3_vq.config import PRESETS, Emu3VQConfig

    if spec in PRESETS:
        return Emu3VQConfig.from_name(spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return Emu3VQConfig.from_json_file(path)
    raise ValueError(f"--config {spec!r}: not a preset ({', '.join(sorted(PRESETS))}), "
                     "a config.json or a directory holding one")


def initial_state(config, seed: int) -> dict[str, np.ndarray]:
    """Fresh weights for every original key: convolutions normal(0, 1/fan_in), biases 0, norm
    scales 1, BatchNorm statistics (0, 1), codebook small (k-means replaces it). The bias of
    each SpatialNorm's scale (`conv_y`) is 1, so that its modulation starts as the identity:
    at 0 it would scale the decoder's features by the small initial latents, nearly to nothing
    (measured: reconstruction barely moved in 30 steps on one batch)."""
    from emu3_vq.tiny import original_key_shapes

    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in original_key_shapes(config).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias" and name.endswith("conv_y.bias"):
            state[name] = np.ones(shape, np.float32)
        elif leaf == "num_batches_tracked":
            state[name] = np.array(0, np.int64)
        elif leaf in ("running_mean", "bias"):
            state[name] = np.zeros(shape, np.float32)
        elif leaf == "running_var" or len(shape) == 1:
            state[name] = np.ones(shape, np.float32)
        elif name == "quantize.embedding.weight":
            state[name] = (0.01 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return state


def _checkpoint_state(directory) -> dict[str, np.ndarray]:
    """The weights of a vision-tokenizer checkpoint (either layout), by original key."""
    from emu3_vq.model import Emu3VQModel
    from emu3_vq.weights import state_dict_numpy

    return state_dict_numpy(Emu3VQModel.from_pretrained(directory, jit=False))


def kmeans(points: np.ndarray, k: int, seed: int, iterations: int = 10) -> np.ndarray:
    """Lloyd's k-means of `points` [N, C]: k distinct float32 centroids [k, C].

    Seeded with k-means++ over the distinct points (a function of `seed`); an empty cluster
    takes the point farthest from its centroid. With k or fewer distinct points (a few flat
    colours give many equal latents) the centroids are those points, then copies of them with
    small noise (1e-3 of their spread): still k distinct vectors.
    """
    rng = np.random.default_rng(seed)
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or not len(points):
        raise ValueError(f"kmeans needs points [N, C] with N >= 1, got shape {points.shape}")
    if k < 1:
        raise ValueError(f"kmeans needs k >= 1, got {k}")
    unique = np.unique(points, axis=0)
    if len(unique) <= k:  # too few distinct latents: each is a centroid, then noisy copies of them
        scale = 1e-3 * max(float(points.std()), 1e-3)
        copies = [unique + scale * rng.standard_normal(unique.shape) for _ in range(-(-k // len(unique)) - 1)]
        return np.concatenate([unique, *copies])[:k].astype(np.float32)
    sq = (points ** 2).sum(1)

    def distances(centres):
        return np.maximum(sq[:, None] + (centres ** 2).sum(1) - 2 * points @ centres.T, 0.0)

    # k-means++: each next centre drawn with probability proportional to the squared distance
    centres = np.empty((k, points.shape[1]))
    centres[0] = unique[rng.integers(len(unique))]
    nearest = distances(centres[:1])[:, 0]
    for j in range(1, k):
        total = nearest.sum()
        i = int(rng.choice(len(points), p=nearest / total)) if total > 0 else int(rng.integers(len(points)))
        centres[j] = points[i]
        nearest = np.minimum(nearest, distances(centres[j:j + 1])[:, 0])
    for _ in range(iterations):
        d = distances(centres)
        assign = d.argmin(1)
        best = d[np.arange(len(points)), assign]
        for j in range(k):
            members = points[assign == j]
            if len(members):
                centres[j] = members.mean(0)
            else:
                far = int(best.argmax())
                centres[j], best[far] = points[far], 0.0
    out = centres.astype(np.float32)
    # means of different clusters may still coincide (or round to one float32): replace each
    # repeat by the distinct points farthest from every kept centre
    _, first = np.unique(out, axis=0, return_index=True)
    if len(first) < k:
        repeat = np.setdiff1d(np.arange(k), first)
        kept = out[first].astype(np.float64)
        gap = ((unique ** 2).sum(1)[:, None] + (kept ** 2).sum(1) - 2 * unique @ kept.T).min(1)
        out[repeat] = unique[np.argsort(-gap, kind="stable")[:len(repeat)]].astype(np.float32)
    return out


def perplexity(codes: np.ndarray, k: int) -> float:
    """exp(entropy) of the batch's code histogram: the number of codes in effective use."""
    p = np.bincount(codes, minlength=k) / max(1, len(codes))
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


class VQTrainer:
    """The model, its loss, AdamW and one compiled step; host-side codebook upkeep."""

    def __init__(self, model_config, state: dict[str, np.ndarray], config: VQTrainConfig):
        import mindspore as ms

        from emu3_vq.model import Emu3VQModel
        from emu3_vq.weights import load_into

        from .optim import AdamW, clip_by_global_norm
        from .vq_loss import CodebookEMA, VQLoss

        self.ms = ms
        self.config = config
        self.model = Emu3VQModel(model_config, jit=False)
        load_into(self.model, state.items(), what="initial vision tokenizer")
        self.model.set_train(False)  # BatchNorm on its running statistics; dropout off
        self.loss = VQLoss(self.model, config.beta)
        self.codebook = self.model.quantize.embedding.weight
        self.ema = ema = CodebookEMA(self.codebook)
        params = [p for p in self.model.trainable_params() if p is not self.codebook]
        decay = [p for p in params if len(p.shape) > 1 and "embedding" not in p.name]
        rest = [p for p in params if not (len(p.shape) > 1 and "embedding" not in p.name)]
        self.optimizer = AdamW([{"params": decay, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.0}],
                               betas=(0.9, 0.99), eps=1e-8)
        grad_fn = ms.value_and_grad(self.loss, None, self.optimizer.params, has_aux=True)
        optimizer = self.optimizer

        def train_step(images, clips, lr):
            (loss, aux), grads = grad_fn(images, clips)
            grads, _ = clip_by_global_norm(grads, 1.0)
            optimizer(grads, lr)
            ema(aux[4], aux[5])
            return loss, aux

        self._step = ms.jit(train_step) if config.jit else train_step
        self._latents = self.loss.latents  # eager: used for a few batches once, no compilation
        # the moving averages start at the loaded codebook, each code as if seen once (all zeros
        # would pull every code not chosen in the first step to the origin)
        self.set_codebook(self.codebook.asnumpy())
        self.usage = np.zeros(model_config.codebook_size, np.int64)  # choices since the last restart
        self._last_latents = None

    def tensor(self, array):
        return None if array is None else self.ms.Tensor(array)

    def init_codebook(self, batches) -> None:
        """k-means centroids of the latents of `batches` ((images, clips) pairs) as the codebook."""
        k = self.codebook.shape[0]
        latents = np.concatenate([self._latents(self.tensor(b), self.tensor(c)).asnumpy() for b, c in batches])
        self.set_codebook(kmeans(latents, k, self.config.seed))

    def set_codebook(self, values: np.ndarray, reset=None) -> None:
        """Set the codes (and their moving averages, as if each had been seen `counts` times);
        the codes in `reset` (all when None) start afresh with a count of 1."""
        counts = self.ema.counts.asnumpy().copy()
        counts[slice(None) if reset is None else reset] = 1.0
        values = values.astype(np.float32)
        self.ms.ops.assign(self.codebook, self.ms.Tensor(values))
        self.ms.ops.assign(self.ema.counts, self.ms.Tensor(counts))
        self.ms.ops.assign(self.ema.sums, self.ms.Tensor(values * counts[:, None]))

    def step(self, images, clips, lr: float) -> dict:
        loss, aux = self._step(self.tensor(images), self.tensor(clips), self.ms.Tensor(lr, self.ms.float32))
        l1, mse, codebook, commitment, codes, latents = aux
        codes = codes.asnumpy()
        self.usage += np.bincount(codes, minlength=len(self.usage))
        self._last_latents = latents
        return {"loss": float(loss), "l1": float(l1), "mse": float(mse), "codebook": float(codebook),
                "commitment": float(commitment), "perplexity": perplexity(codes, len(self.usage)),
                "codes_used": int((np.bincount(codes, minlength=len(self.usage)) > 0).sum())}

    def restart_dead(self, rng: np.random.Generator) -> int:
        """Move each code unused since the last restart onto a latent of the last batch."""
        dead = np.flatnonzero(self.usage == 0)
        self.usage[:] = 0
        if not len(dead) or self._last_latents is None:
            return 0
        latents = self._last_latents.asnumpy()
        values = self.codebook.asnumpy().copy()
        picks = latents[rng.integers(0, len(latents), len(dead))]
        values[dead] = picks + 1e-3 * rng.standard_normal(picks.shape).astype(np.float32)
        self.set_codebook(values, reset=dead)
        return int(len(dead))

    def optimizer_state(self) -> dict[str, np.ndarray]:
        state = {p.name: p.asnumpy() for p in list(self.optimizer.exp_avg) + list(self.optimizer.exp_avg_sq)}
        state["adamw.steps"] = self.optimizer.steps.asnumpy()
        state["codebook_usage"] = self.usage.copy()
        state["ema.counts"] = self.ema.counts.asnumpy()
        state["ema.sums"] = self.ema.sums.asnumpy()
        return state

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """What `optimizer_state` returned: AdamW moments and step count, the codebook usage."""
        wanted = (list(self.optimizer.exp_avg) + list(self.optimizer.exp_avg_sq)
                  + [self.optimizer.steps, self.ema.counts, self.ema.sums])
        for p in wanted:
            if p.name not in state:
                raise ValueError(f"the optimizer state lacks {p.name}; not a checkpoint of this model")
            if tuple(state[p.name].shape) != tuple(p.shape):
                raise ValueError(f"the optimizer state's {p.name} has shape {tuple(state[p.name].shape)}, "
                                 f"the model's {tuple(p.shape)}")
        usage = state.get("codebook_usage")
        if usage is None or usage.shape != self.usage.shape:
            raise ValueError(f"the optimizer state's codebook_usage is missing or not [{len(self.usage)}]; "
                             "not a checkpoint of this model")
        for p in wanted:
            self.ms.ops.assign(p, self.ms.Tensor(state[p.name]))
        self.usage[:] = usage


# ---- the run ----------------------------------------------------------------------------

def lr_at(step: int, config: VQTrainConfig) -> float:
    """Linear warmup then cosine from lr to min_lr (step from 0)."""
    from .optim import cosine_with_min_lr

    return cosine_with_min_lr(step, config.steps, config.warmup_steps, config.lr, config.min_lr)


def _settings(config: VQTrainConfig) -> dict:
    """The settings a resume must share; directories as absolute paths (a run resumed from
    another working directory is the same run), the model config as given when it is a preset."""
    return {k: _canonical(k, getattr(config, k)) for k in _RUN_KEYS}


def _canonical(key: str, value):
    from emu3_vq.config import PRESETS

    if key in ("images", "videos", "config", "init") and value is not None and not (key == "config" and value in PRESETS):
        return str(Path(value).resolve())
    return value


def _write_model_dir(trainer: VQTrainer, model_config, config: VQTrainConfig, directory: Path) -> None:
    from emu3_vq.checkpoint import save_pretrained
    from emu3_vq.processor import Emu3ImageProcessor

    save_pretrained(trainer.model, directory)
    pixels = config.image_size * config.image_size
    Emu3ImageProcessor(spatial_factor=model_config.spatial_factor,
                       min_pixels=config.min_pixels or pixels,
                       max_pixels=config.max_pixels or max(pixels, 256 * 256)).save_pretrained(directory)


def _save(trainer, model_config, config: VQTrainConfig, target: Path, step: int, last: dict) -> Path:
    def write(tmp: Path):
        _write_model_dir(trainer, model_config, config, tmp)
        write_optimizer_state(tmp, trainer.optimizer_state())
        write_json(tmp / "trainer_state.json", {"step": step, "settings": _settings(config), "last": last,
                                                "config": asdict(config)})

    return write_checkpoint_dir(target, write)


def _cut_metrics(path: Path, last_step: int) -> None:
    """Keep the lines of steps <= last_step (a run killed after its last checkpoint logged more);
    a torn last line (killed while writing it) is dropped too. Replaced in one rename."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if step <= last_step:
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


def train_vq(config: VQTrainConfig, progress: bool = True) -> dict:
    """Run `emu3 train vq`; returns the last step's metrics with `final` (the model directory)
    and `codebook_size`. Every check (options, data, a resume's settings) comes before the model
    is built; errors are ValueError / FileNotFoundError with one line naming the flag."""

    config.validate()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    model_config = resolve_config(config.init if config.init is not None else config.config)
    f = model_config.spatial_factor
    if config.image_size % f:
        raise ValueError(f"--image-size {config.image_size} must be a multiple of the spatial factor {f} "
                         f"of --config {config.config}")
    files = image_files(config.images)
    sources = video_sources(config.videos) if config.videos and config.clip_batch_size else []
    start, resume_from = 0, None
    if config.resume:
        resume_from = latest_checkpoint(out)
    if resume_from is not None:
        saved = read_state(resume_from).get("settings", {})
        ours = _settings(config)
        for key, value in ours.items():
            if _canonical(key, saved.get(key, _SAVED_DEFAULTS.get(key))) != value:
                raise ValueError(f"--resume: --{key.replace('_', '-')} is {value!r} but the run in {out} used "
                                 f"{saved.get(key)!r}")
        start = int(read_state(resume_from)["step"])
    elif not config.resume and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} already holds files; pass --resume to continue that run, or choose "
                         "another directory")

    t_factor = model_config.temporal_downsample_factor
    images = load_images(files, config.image_size, progress)
    clip_frames = t_factor * config.clip_latent_frames
    videos = load_videos(sources, config.image_size, clip_frames, progress) if sources else []

    if resume_from is not None:
        from emu3_vq.weights import read_safetensors

        state = read_safetensors(resume_from / "model.safetensors")
    elif config.init is not None:
        state = _checkpoint_state(config.init)
    else:
        state = initial_state(model_config, config.seed)
    trainer = VQTrainer(model_config, state, config)
    if resume_from is not None:
        trainer.load_optimizer_state(read_optimizer_state(resume_from))
    elif config.kmeans_batches and config.init is None:
        trainer.init_codebook([step_batch(images, videos, config, i, clip_frames, stream=1)
                               for i in range(config.kmeans_batches)])
    out.mkdir(parents=True, exist_ok=True)
    # a resumed run drops what its run logged after the checkpoint; --resume with no checkpoint
    # yet (killed before the first) starts afresh, as `emu3 train sft` does
    _cut_metrics(out / METRICS, start)

    last: dict = {}
    with open(out / METRICS, "a", encoding="utf-8") as metrics:
        for step in bar(range(start, config.steps), desc="training vision tokenizer", initial=start,
                        total=config.steps, disable=not progress):
            t0 = time.perf_counter()
            lr = lr_at(step, config)
            batch, clips = step_batch(images, videos, config, step, clip_frames)
            last = {"step": step + 1, "lr": lr, **trainer.step(batch, clips, lr)}
            if not math.isfinite(last["loss"]):
                raise FloatingPointError(f"step {step + 1}: the loss is {last['loss']}; lower --lr")
            restarted = 0
            if config.restart_every and (step + 1) % config.restart_every == 0 and step + 1 < config.steps:
                restarted = trainer.restart_dead(np.random.default_rng([config.seed, 2, step]))
            last.update(restarted=restarted, psnr=float(10 * np.log10(4.0 / max(last["mse"], 1e-12))),
                        seconds=time.perf_counter() - t0)
            metrics.write(json.dumps(last) + "\n")
            metrics.flush()
            if config.save_every and (step + 1) % config.save_every == 0 and step + 1 < config.steps:
                _save(trainer, model_config, config, out / checkpoint_name(step + 1), step + 1, last)
    final = _save(trainer, model_config, config, out / FINAL, config.steps, last)
    return {**last, "final": str(final), "codebook_size": model_config.codebook_size}
