"""`Emu3Pipeline`: a checkpoint's LM, vision tokenizer, tokenizer and generation defaults in one
object, with text to image, answers and video continuation as its calls.

    pipe = Emu3Pipeline.from_pretrained("BAAI/Emu3-Gen", vq="BAAI/Emu3-VisionTokenizer")
    out = pipe("a red circle", num_images=2)       # out.images, out.seeds
    pipe.answer("photo.png", "What is in it?").text

The calls are `image.generate_image`, `vqa.answer` and `video.continue_video` with the
checkpoint's defaults filled in and the seeds chosen and reported: for the same settings and
seed they return what those functions return.

Two stages, so that a request is checked before any weights load: `from_pretrained(...,
lazy=True)` reads only small files (the configs, the tokenizer, the image processor's config,
generation_config.json); `check_image`, `check_answer` and `check_video` check a request
against them (the size of what is generated against the model's context too); `load()` then
reads the weights (the first call loads them when nothing did). The `emu3 generate` commands
work this way.

Defaults. Where the LM checkpoint has a generation_config.json, the keys it holds (transformers'
names) are the defaults: `guidance_scale` (images), `top_k`, `top_p`, `temperature` (images,
videos, sampled answers), `max_new_tokens` and `do_sample` (answers: greedy unless it is true),
and two of ours for images, `negative_prompt` and `positive_prompt_suffix` (a model trained on
other captions than Emu3-Gen's has no use for its quality words; the default model sets both
to ""). Keys it lacks keep the original recipes' values (images: cfg 3.0, top-k 2048, Emu3-Gen's
negative prompt and " masterpiece, film grained, best quality." suffix; answers: greedy,
1024 tokens; videos: no guidance, top-k 2048); arguments given to a call win over both.

Seeds. A call without `seed` draws one (`draw_seed`) and reports it on its output; with a seed
s, the images of a call are numbered in order (prompts in order, `num_images` each) and image j
gets seed s + j: each is the image `generate_image` makes for its prompt alone with that seed
(the images of one prompt are one batch, each row drawing from its own seed).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .guidance import check_scale
from .image import NEGATIVE_PROMPT, POSITIVE_PROMPT, image_prompts
from .loop import Progress, check_max_new_tokens
from .sampling import Sampling, check_seed, check_temperature, check_top_k, check_top_p

GENERATION_CONFIG = "generation_config.json"
SEED_RANGE = 2 ** 31  # drawn seeds are below this: short to print and to type back

IMAGE_DEFAULTS = {"cfg_scale": 3.0, "top_k": 2048, "top_p": 1.0, "temperature": 1.0,
                  "negative_prompt": NEGATIVE_PROMPT, "positive_suffix": POSITIVE_PROMPT}
VIDEO_DEFAULTS = {"cfg_scale": 1.0, "top_k": 2048, "top_p": 1.0, "temperature": 1.0}
ANSWER_DEFAULTS = {"max_new_tokens": 1024, "do_sample": False, "top_k": 0, "top_p": 1.0, "temperature": 1.0}



def draw_seed() -> int:
    """A fresh seed from the operating system's random source, in [0, 2^31)."""
    return secrets.randbelow(SEED_RANGE)


# ---- generation_config.json ----------------------------------------------------------------

def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


# key -> its check, by the rules the calls apply to the same values
def _text(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


_GENERATION_KEYS: dict[str, Callable] = {
    "guidance_scale": check_scale,
    "negative_prompt": _text,
    "positive_prompt_suffix": _text,
    "top_k": check_top_k,
    "top_p": check_top_p,
    "temperature": check_temperature,
    "max_new_tokens": check_max_new_tokens,
    "do_sample": _flag,
}


def read_generation_config(path: str | os.PathLike) -> dict:
    """The keys of a generation_config.json that set the pipeline's defaults (guidance_scale,
    negative_prompt, positive_prompt_suffix, top_k, top_p, temperature, max_new_tokens,
    do_sample), checked; others are ignored, and so
    is a null value. ValueError naming the file and the key."""
    from emu3_vq.config import read_json

    raw = read_json(path)
    out = {}
    for key, check in _GENERATION_KEYS.items():
        if raw.get(key) is not None:
            try:
                out[key] = check(raw[key], key)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
    return out


# ---- settings and outputs ----------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSettings:
    """What the images of a call were generated with, defaults resolved."""

    ratio: str
    image_area: int  # pixels
    cfg_scale: float
    negative_prompt: str
    top_k: int
    top_p: float
    temperature: float
    batched_cfg: bool
    positive_suffix: str


@dataclass(frozen=True)
class AnswerSettings:
    max_new_tokens: int
    temperature: float  # 0: greedy
    top_k: int
    top_p: float

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_k, self.top_p)


@dataclass(frozen=True)
class VideoSettings:
    n_frames: int
    cfg_scale: float
    negative_prompt: str
    top_k: int
    top_p: float
    temperature: float
    batched_cfg: bool


def _versions() -> str:
    from emu3_vq.cli import versions

    return ", ".join(f"{name} {v}" for name, v in versions().items())


def _text(value) -> str:
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


@dataclass
class ImageOutput:
    """The images of a call, in order (prompts in order, `num_images` each), with the prompt
    and seed of each and the settings."""

    images: list  # PIL images
    prompts: list[str]
    seeds: list[int]
    settings: ImageSettings
    source: dict = field(default_factory=dict)  # model, vq, revision, dtype

    def metadata(self, i: int = 0) -> dict[str, str]:
        """What made image i, as text (for `emu3_vq.media.save_png(..., metadata=)`): prompt,
        seed, the settings, the checkpoints and the installed packages' versions. The same
        values given back (same checkpoints) make the same image."""
        s = asdict(self.settings)
        s["guidance"] = "batched" if s.pop("batched_cfg") else "unbatched"
        return {"prompt": self.prompts[i], "seed": str(self.seeds[i]),
                **{k: _text(v) for k, v in s.items()}, **self.source, "versions": _versions()}


@dataclass
class AnswerOutput:
    text: str
    seed: int | None  # None: greedy, no randomness
    settings: AnswerSettings


@dataclass
class VideoOutput:
    """The new frames of a continuation, with its prompt, seed and settings."""

    frames: list  # PIL images, at the size of the input frames
    prompt: str
    seed: int
    settings: VideoSettings
    source: dict = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        """What made the frames, as text (for `emu3_vq.media.save_video(..., metadata=)`)."""
        s = asdict(self.settings)
        s["guidance"] = "batched" if s.pop("batched_cfg") else "unbatched"
        return {"prompt": self.prompt, "seed": str(self.seed), **{k: _text(v) for k, v in s.items()},
                **self.source, "versions": _versions()}


# ---- checkpoints: names to small files --------------------------------------------------------

def _file(name: str, filename: str, hub: dict, what: str, required: bool = True) -> Path | None:
    """`filename` of a checkpoint (a local directory or a hub repo id, through emu3_vq.hub, which
    fetches that file only); None for a file it does not have when not `required`."""
    from emu3_vq import hub as hub_files

    directory = Path(name)
    if not directory.is_dir() and not hub_files.is_repo_id(name):
        raise FileNotFoundError(f"{name} is not {what} directory (no {filename}), nor a hub repo id (org/name)")
    if directory.is_dir() and required and not (directory / filename).is_file():
        raise FileNotFoundError(f"{name} is not {what} directory (no {filename})")
    folder = hub_files.resolve(name, [filename], required=(filename,) if required else (), **hub)
    path = folder / filename
    return path if path.is_file() else None


def _given(**kwargs) -> dict:
    """The keyword arguments that are set."""
    return {k: v for k, v in kwargs.items() if v is not None and v is not False}


def _hub_options(name: str, options: dict) -> dict:
    """The hub options for `name`: none for a local directory, which every from_pretrained reads
    without them."""
    return {} if Path(name).is_dir() else options


# ---- the pipeline --------------------------------------------------------------------------------

class Emu3Pipeline:
    """An Emu3 LM with its processor (tokenizer, image processor, vision tokenizer) and the
    checkpoint's generation defaults. Build it with `from_pretrained`, or from loaded parts:
    `Emu3Pipeline(model, processor)` (a processor with its VQ model)."""

    def __init__(self, model, processor, generation_config: dict | None = None, *, source: dict | None = None):
        if model is None or processor is None or getattr(processor, "vq_model", None) is None:
            raise TypeError("Emu3Pipeline(model, processor) needs a model and a processor with its VQ model; "
                            "use Emu3Pipeline.from_pretrained(..., lazy=True) to read a checkpoint's configs only")
        self.model = model
        self.processor = processor
        self.config = model.config  # emu3_lm.config.Emu3LMConfig
        self.vq_config = processor.vq_model.config  # emu3_vq.config.Emu3VQConfig
        self.generation_config = dict(generation_config or {})
        self.source = dict(source or {})
        self._loader = None

    # -- building --

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, vq: str | os.PathLike | None = None,
                        dtype=None, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, lazy: bool = False) -> Emu3Pipeline:
        """A pipeline from checkpoints: `model` an Emu3 LM checkpoint (a local directory or a hub
        repo id, with its tokenizer files), `vq` its vision tokenizer (the same; default: `model`
        itself when its config.json has a `vq_config`, an -hf checkpoint). Without `model`, the
        default model (`emu3_vq.defaults`: emu3-shapes, a small Emu3 trained on coloured shapes;
        `vq` must then be None too). dtype: "fp32", "fp16", "bf16" or a MindSpore dtype (default: the device's,
        `emu3_vq.device.policy()`). revision: of the hub repo `model` (and of `vq` when it is the
        model itself); cache_dir, local_files_only: for hub repo ids, as huggingface_hub's.

        lazy: read only the configs, the tokenizer, the image processor and
        generation_config.json; the weights load on `load()` or on the first call. Every
        problem of these files is found before any weights are read.
        """
        from emu3_lm.config import Emu3LMConfig
        from emu3_lm.processor import Emu3Processor
        from emu3_lm.tokenizer import Emu3Tokenizer
        from emu3_vq.config import Emu3VQConfig, read_json
        from emu3_vq.device import default_dtype, dtype_name, resolve_dtype
        from emu3_vq.processor import Emu3ImageProcessor

        dtype = resolve_dtype(dtype)
        hub = _given(cache_dir=cache_dir, local_files_only=local_files_only)
        if model is None:
            if vq is not None:
                raise ValueError("vq needs model (--vq needs --model): the default LM only fits its own vision tokenizer")
            if revision is not None:
                raise ValueError("revision (--revision) applies to a hub repo id model; the default model is installed")
            from emu3_vq.defaults import model_dirs

            dirs = model_dirs()
            model_name, vq_name, source = str(dirs["lm"]), str(dirs["vq"]), {"model": "default", "vq": "default"}
        else:
            model_name = os.fspath(model)
            if revision is not None and Path(model_name).is_dir():
                raise ValueError(f"revision (--revision) applies to a hub repo id, but {model_name} is a local "
                                 f"directory")
            vq_name = None if vq is None else os.fspath(vq)
            source = {"model": model_name, "vq": vq_name or model_name}
            if revision is not None:
                source["revision"] = revision
        lm_hub = _hub_options(model_name, {**hub, **_given(revision=revision)})

        config_path = _file(model_name, "config.json", lm_hub, "a checkpoint")
        raw = read_json(config_path)
        config = Emu3LMConfig.from_json_file(config_path)
        if vq_name is None:
            if "vq_config" not in raw:
                raise ValueError(f"{model_name} holds no vision tokenizer (no vq_config in its config.json): "
                                 f"name one with vq=... / --vq (e.g. BAAI/Emu3-VisionTokenizer)")
            vq_name = model_name
        vq_hub = lm_hub if vq_name == model_name else _hub_options(vq_name, hub)
        vq_config = Emu3VQConfig.from_json_file(_file(vq_name, "config.json", vq_hub, "a vision tokenizer"))
        generation = _file(model_name, GENERATION_CONFIG, lm_hub, "a checkpoint", required=False)
        generation_config = read_generation_config(generation) if generation is not None else {}
        tokenizer = Emu3Tokenizer.from_pretrained(model_name, **lm_hub)
        image_processor = Emu3ImageProcessor.from_pretrained(vq_name, **vq_hub)
        if image_processor.spatial_factor != vq_config.spatial_factor:
            raise ValueError(f"{vq_name}: preprocessor_config.json has spatial_factor {image_processor.spatial_factor} "
                             f"but the vision tokenizer downsamples by {vq_config.spatial_factor}")
        if vq_config.codebook_size > tokenizer.num_visual_tokens:
            raise ValueError(f"the vision tokenizer {vq_name} has {vq_config.codebook_size} codes but the tokenizer "
                             f"of {model_name} only {tokenizer.num_visual_tokens} visual tokens")
        source["dtype"] = dtype_name(dtype or default_dtype())
        processor = Emu3Processor(image_processor, None, tokenizer, image_area=config.image_area)

        def load():
            from emu3_lm.model import Emu3ForCausalLM
            from emu3_vq.model import Emu3VQModel

            lm = Emu3ForCausalLM.from_pretrained(model_name, dtype=dtype, **lm_hub)
            # compiled: even for a single decode on CPU, compiling and running the graph took a
            # quarter of the time of running op by op (tiny VQ, a 2-latent-frame video: 6.8 s vs 24 s)
            vq_model = Emu3VQModel.from_pretrained(vq_name, dtype=dtype, jit=True, **vq_hub)
            return lm, Emu3Processor(image_processor, vq_model, tokenizer, image_area=lm.config.image_area)

        pipe = cls.__new__(cls)
        pipe.model, pipe.processor, pipe.config, pipe.vq_config = None, processor, config, vq_config
        pipe.generation_config, pipe.source, pipe._loader = generation_config, source, load
        return pipe if lazy else pipe.load()

    @property
    def loaded(self) -> bool:
        """Whether the weights are loaded."""
        return self.model is not None

    def load(self) -> Emu3Pipeline:
        """Load the weights (once); returns the pipeline."""
        if self.model is None:
            self.model, self.processor = self._loader()
            self.config, self._loader = self.model.config, None
        return self

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame of the vision tokenizer (4)."""
        return int(self.vq_config.temporal_downsample_factor)

    def _default(self, value, key: str, defaults: dict, file_key: str | None = None):
        """An argument, else the checkpoint's generation_config.json value, else the default."""
        if value is not None:
            return value
        return self.generation_config.get(file_key or key, defaults[key])

    # -- text to image --

    def check_image(self, prompt, ratio: str = "1:1", image_area: int | None = None, cfg_scale: float | None = None,
                    negative_prompt: str | None = None, num_images: int = 1, top_k: int | None = None, *,
                    top_p: float | None = None, temperature: float | None = None, batched_cfg: bool = True,
                    positive_suffix: str | None = None) -> tuple[list[str], ImageSettings]:
        """(prompts, settings) of an image request, defaults resolved and every value checked,
        the size against the model's context too; needs no weights."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if not isinstance(ratio, str):
            raise ValueError(f"ratio must be one 'W:H' string, got {ratio!r}")
        cfg_scale = check_scale(self._default(cfg_scale, "cfg_scale", IMAGE_DEFAULTS, "guidance_scale"))
        sampling = Sampling(self._default(temperature, "temperature", IMAGE_DEFAULTS),
                            self._default(top_k, "top_k", IMAGE_DEFAULTS), self._default(top_p, "top_p", IMAGE_DEFAULTS))
        negative_prompt = self._default(negative_prompt, "negative_prompt", IMAGE_DEFAULTS)
        positive_suffix = self._default(positive_suffix, "positive_suffix", IMAGE_DEFAULTS, "positive_prompt_suffix")
        if not isinstance(negative_prompt, str) or not isinstance(positive_suffix, str):
            raise ValueError("negative_prompt and positive_suffix must be strings")
        area = self.config.image_area if image_area is None else image_area
        image_prompts(self.config, self.processor, prompts, [ratio] * len(prompts), area, cfg_scale,
                      negative_prompt, positive_suffix)  # sizes, and the fit in the model's context
        settings = ImageSettings(ratio, area, cfg_scale, negative_prompt, sampling.top_k, sampling.top_p,
                                 sampling.temperature, bool(batched_cfg), positive_suffix)
        return prompts, settings

    def __call__(self, prompt, ratio: str = "1:1", image_area: int | None = None, cfg_scale: float | None = None,
                 negative_prompt: str | None = None, num_images: int = 1, seed: int | None = None,
                 top_k: int | None = None, progress: Callable[[Progress], None] | None = None, *,
                 top_p: float | None = None, temperature: float | None = None, batched_cfg: bool = True,
                 positive_suffix: str | None = None) -> ImageOutput:
        """Generate `num_images` images per prompt (a string or a list); returns an `ImageOutput`.

        Arguments as `image.generate_image`'s; None takes the checkpoint's generation_config.json
        value (`guidance_scale`, `top_k`, `top_p`, `temperature`), else the original recipe's (cfg
        3.0, top-k 2048, the original negative prompt). seed: image j of the output gets seed +
        j (prompts in order, num_images each); without it one is drawn and reported in
        `.seeds`. progress: called per step of each prompt's batch (`loop.Progress`).
        """
        from .image import generate_image

        prompts, s = self.check_image(prompt, ratio, image_area, cfg_scale, negative_prompt, num_images, top_k,
                                      top_p=top_p, temperature=temperature, batched_cfg=batched_cfg,
                                      positive_suffix=positive_suffix)
        first = draw_seed() if check_seed(seed) is None else seed
        self.load()
        images, seeds, names = [], [], []
        for k, text in enumerate(prompts):
            row_seeds = [first + k * num_images + i for i in range(num_images)]
            images += generate_image(self.model, self.processor, [text] * num_images, ratio=s.ratio,
                                     image_area=s.image_area, cfg_scale=s.cfg_scale,
                                     negative_prompt=s.negative_prompt, top_k=s.top_k, seed=row_seeds,
                                     batched_cfg=s.batched_cfg, progress=progress, top_p=s.top_p,
                                     temperature=s.temperature, positive_suffix=s.positive_suffix)
            seeds += row_seeds
            names += [text] * num_images
        return ImageOutput(images, names, seeds, s, dict(self.source))

    # -- questions about an image --

    def check_answer(self, max_new_tokens: int | None = None, *, temperature: float | None = None,
                     top_p: float | None = None, top_k: int | None = None) -> AnswerSettings:
        """The settings of an answer, defaults resolved and checked. Greedy unless `temperature`
        > 0 is given or generation_config.json says `do_sample: true`; top_k and top_p apply
        to sampling only, so giving them to a greedy answer is an error."""
        g = self.generation_config
        max_new_tokens = check_max_new_tokens(self._default(max_new_tokens, "max_new_tokens", ANSWER_DEFAULTS))
        if temperature is None:
            temperature = g.get("temperature", ANSWER_DEFAULTS["temperature"]) if g.get("do_sample") else 0.0
        temperature = check_temperature(temperature)
        if temperature == 0:
            if top_k is not None or top_p is not None:
                raise ValueError("top_k and top_p apply when sampling: pass a temperature > 0 as well "
                                 "(answers are greedy by default)")
            return AnswerSettings(max_new_tokens, 0.0, 0, 1.0)
        sampling = Sampling(temperature, self._default(top_k, "top_k", ANSWER_DEFAULTS),
                            self._default(top_p, "top_p", ANSWER_DEFAULTS))
        return AnswerSettings(max_new_tokens, sampling.temperature, sampling.top_k, sampling.top_p)

    def answer(self, image, question: str, max_new_tokens: int | None = None, *, temperature: float | None = None,
               top_p: float | None = None, top_k: int | None = None, seed: int | None = None, streamer=None,
               progress: Callable[[Progress], None] | None = None) -> AnswerOutput:
        """Answer `question` about `image` (a PIL image or a path): `vqa.answer` with the
        settings of `check_answer`. A sampled answer without `seed` draws one (reported in
        `.seed`). streamer: see `vqa.answer` (`streaming.TextStreamer` prints as it goes)."""
        from .vqa import answer

        s = self.check_answer(max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
        check_seed(seed)
        if seed is None and s.temperature > 0:
            seed = draw_seed()
        self.load()
        text = answer(self.model, self.processor, image, question, s.max_new_tokens, sampling=s.sampling,
                      seed=seed, progress=progress, streamer=streamer)
        return AnswerOutput(text, seed, s)

    # -- video continuation --

    def check_video(self, frame_size: tuple[int, int], count: int, n_frames: int, prompt: str = "", *,
                    cfg_scale: float | None = None, negative_prompt: str = "", top_k: int | None = None,
                    top_p: float | None = None, temperature: float | None = None,
                    batched_cfg: bool = True) -> VideoSettings:
        """The settings of a continuation of `count` frames of `frame_size` (width, height) by
        `n_frames`, defaults resolved, counts and the length against the model's context
        checked (`video.check_continuation`); needs no weights and no frame."""
        from .video import check_continuation

        cfg_scale = check_scale(1.0 if cfg_scale is None else cfg_scale)  # no video guidance default
        sampling = Sampling(self._default(temperature, "temperature", VIDEO_DEFAULTS),
                            self._default(top_k, "top_k", VIDEO_DEFAULTS), self._default(top_p, "top_p", VIDEO_DEFAULTS))
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise ValueError("prompt and negative_prompt must be strings")
        check_continuation(self.config, self.processor, frame_size, count, n_frames, self.temporal_factor, prompt,
                           negative_prompt if cfg_scale != 1.0 else None)
        return VideoSettings(n_frames, cfg_scale, negative_prompt, sampling.top_k, sampling.top_p,
                             sampling.temperature, bool(batched_cfg))

    def continue_video(self, frames, n_frames: int, prompt: str = "", *, cfg_scale: float | None = None,
                       negative_prompt: str = "", top_k: int | None = None, top_p: float | None = None,
                       temperature: float | None = None, seed: int | None = None, batched_cfg: bool = True,
                       progress: Callable[[Progress], None] | None = None) -> VideoOutput:
        """Continue a video (PIL frames, or the path of a folder of frames, a GIF or an MP4) by
        `n_frames`: `video.continue_video` with the settings of `check_video`; a seed is drawn
        when not given (reported in `.seed`)."""
        from PIL import Image

        from .video import as_frames, continue_video

        frames = as_frames(frames)
        if not frames:
            raise ValueError("no frames given")
        first = frames[0]
        size = first.size if isinstance(first, Image.Image) else (first.shape[1], first.shape[0])
        s = self.check_video(size, len(frames), n_frames, prompt, cfg_scale=cfg_scale,
                             negative_prompt=negative_prompt, top_k=top_k, top_p=top_p, temperature=temperature,
                             batched_cfg=batched_cfg)
        seed = draw_seed() if check_seed(seed) is None else seed
        self.load()
        new = continue_video(self.model, self.processor, frames, n_frames, prompt, cfg_scale=s.cfg_scale,
                             negative_prompt=s.negative_prompt, top_k=s.top_k, top_p=s.top_p,
                             temperature=s.temperature, seed=seed, batched_cfg=s.batched_cfg, progress=progress)
        return VideoOutput(new, prompt, seed, s, dict(self.source))

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "weights not loaded"
        return f"Emu3Pipeline(model={self.source.get('model')!r}, vq={self.source.get('vq')!r}, {state})"


