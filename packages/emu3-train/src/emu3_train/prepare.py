"""Images with captions (T2I), conversations (VQA) or captioned videos -> prepared samples
(`emu3_train.dataset`).

Each image is tokenised as the reference preparation scripts do: scaled to about `image_area`
pixels, keeping its aspect ratio (sides round(h * r), round(w * r) with r = sqrt(area / (h * w)),
PIL bicubic); then the vision tokenizer's own image processor resizes it to its sides'
multiples of the spatial factor within its pixel limits (`Emu3ImageProcessor.preprocess`,
smart_resize) and the VQ model encodes it. Defaults of `image_area` are the reference
scripts': 720 * 720 for text-to-image, 480 * 320 for VQA (below the processor's default
minimum of 512 * 512 pixels, so the processor scales such images up again, as in the reference).

Inputs:
* T2I: a JSONL file, one {"image": path relative to the file, "text": caption} a line.
  Sample i is named after its line number ("00000003" for line 3).
* VQA: a LLaVA-style JSON list of {"id", "image": path under `image_root`, "conversations":
  [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}; "<image>" and the
  whitespace around it are removed from the question. The sample's name is the record's id;
  its file is named after the record's index ("00000003.ckpt" for the fourth record), so that
  odd or repeated ids cannot collide or escape the output directory. Only single-turn
  conversations are taken (the reference would keep the last turn of a longer one silently).
* Video: a JSONL file, one {"video": path relative to the file, "text": caption} a line; the
  path a folder of frame images (natural name order), a GIF or an MP4 (`emu3_vq.media`). Its
  number of frames (or the first `frames` of them) must be a multiple of the vision
  tokenizer's temporal factor (4). Every frame is scaled to about `image_area` pixels like an
  image, the processor resizes all to the first frame's size, and the VQ model encodes the
  whole clip [1, T, 3, H, W] -> codes [T/4, h, w]. Named after line numbers, like T2I.

Everything that can be checked is checked before the VQ model is loaded: the input parses,
every record has its fields, a non-empty text and a readable image of a usable size, and the
output directory can be written. A bad record stops the run with a one-line error naming it
(file and line, or index and id), unless `skip_bad`, which skips and counts it. A run that
fails there changes nothing in the output directory. Once writing starts, an old list is
deleted first and the new one is written last, so a run that stops part way leaves none.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from emu3_vq.cli import UserError, check_outputs

from . import dataset

T2I_IMAGE_AREA = 720 * 720  # the reference's default for text-to-image data (Emu3-Gen's image_area)
VQA_IMAGE_AREA = 480 * 320  # the reference's default for VQA data
VIDEO_IMAGE_AREA = 512 * 512  # ours: the processor's minimum, the shortest sequence it allows
_IMAGE_TAG = re.compile(r"\s*<image>\s*")


@dataclass
class PrepareResult:
    """What a preparation run did."""

    list_path: Path  # OUT/list/train.json
    feature_dir: Path  # OUT/feature, the sample files
    written: int  # samples written (and listed)
    skipped: int  # bad records skipped (with skip_bad)
    problems: list[str] = field(default_factory=list)  # one line per skipped record


@dataclass
class Record:
    """One input record, parsed (its image not yet read)."""

    order: int  # line number or index in the input: problems are reported in this order
    where: str  # how errors name the record: "FILE:LINE" or "FILE record I (id X)"
    stem: str  # the sample file's name without .ckpt
    name: str  # the sample's name
    image: Path  # the image, or for a video its folder of frames, GIF or MP4
    text: str
    response: str | None = None


class _BadRecord(ValueError):
    pass


# ---- images ------------------------------------------------------------------------------------

def area_size(height: int, width: int, image_area: int) -> tuple[int, int]:
    """(height, width) scaled to about `image_area` pixels: round(h * r), round(w * r) with
    r = sqrt(area / (h * w)), Python's round, as the reference preparation scripts do."""
    r = math.sqrt(image_area / (height * width))
    return round(height * r), round(width * r)


def resize_to_area(image, image_area: int):
    """A PIL image scaled to about `image_area` pixels (see `area_size`), bicubic (what the
    reference's `image.resize((w, h))` does by default for RGB images)."""
    from PIL import Image

    height, width = area_size(image.height, image.width, image_area)
    return image.resize((width, height), resample=Image.BICUBIC)


def _check_image(record: Record, processor, image_area: int) -> None:
    """The image exists, its header reads, and the processor accepts its size after scaling."""
    from emu3_vq import media

    if not record.image.is_file():
        raise _BadRecord(f"{record.where}: image not found: {record.image}")
    try:
        width, height = media.image_size(record.image)
    except (ValueError, OSError) as exc:
        raise _BadRecord(f"{record.where}: {exc}") from None
    _check_scaled_size(record, processor, image_area, width, height, "image of {}x{} pixels scales")


def _check_scaled_size(record: Record, processor, image_area: int, width: int, height: int, what: str) -> None:
    """The processor accepts `width` x `height` pixels once scaled to `image_area` (`what`: the
    message's start, formatted with width and height)."""
    try:
        h, w = area_size(height, width, image_area)
        if h < 1 or w < 1:
            raise ValueError(f"{what.format(width, height)} to {w}x{h} at image_area {image_area}")
        processor.size_for(h, w)
    except ValueError as exc:
        raise _BadRecord(f"{record.where}: {record.image}: {exc}") from None


def _check_video(record: Record, processor, image_area: int, factor: int, frames: int | None) -> None:
    """The video exists, its frame count (cheap: no frame decoded but the first) is a multiple
    of `factor` (or at least `frames`), and the processor accepts its frames' size after scaling."""
    from emu3_vq import media

    if not record.image.exists():
        raise _BadRecord(f"{record.where}: video not found: {record.image}")
    try:
        count, (width, height) = media.video_info(record.image)
    except (ValueError, OSError) as exc:
        raise _BadRecord(f"{record.where}: {exc}") from None
    if frames is not None:
        if count < frames:
            raise _BadRecord(f"{record.where}: {record.image} has {count} frames, fewer than frames={frames}")
    elif count % factor:
        raise _BadRecord(f"{record.where}: {record.image} has {count} frames, not a multiple of {factor} (the "
                         f"vision tokenizer turns every {factor} frames into one latent frame)")
    _check_scaled_size(record, processor, image_area, width, height, "frames of {}x{} pixels scale")


def _image_pixels(record: Record, processor, image_area: int) -> np.ndarray:
    """The record's image as the VQ model's input [1, 3, H, W]."""
    from emu3_vq import media

    image = media.load_image(record.image)  # RGB; transparency composited onto white
    return processor.preprocess([resize_to_area(image, image_area)])


def _video_pixels(record: Record, processor, image_area: int, frames: int | None) -> np.ndarray:
    """The record's video (its first `frames` frames) as the VQ model's input [1, T, 3, H, W]."""
    from emu3_vq import media

    clip = media.load_frames(record.image)
    clip = clip if frames is None else clip[:frames]
    return processor.preprocess_video([resize_to_area(f, image_area) for f in clip])[None]


# ---- inputs ------------------------------------------------------------------------------------

def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None


def _read_media_jsonl(path: str | os.PathLike, key: str, what: str) -> tuple[list[Record], list[tuple[int, str]]]:
    """Records of a JSONL file of `{key: path, "text": caption}` lines, and (line number, message)
    per bad record (the media themselves not checked)."""
    path = Path(path)
    records, problems = [], []
    for lineno, line in enumerate(_read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _BadRecord(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise _BadRecord(f"{where}: expected an object {{\"{key}\", \"text\"}}, got {type(item).__name__}")
            media, text = item.get(key), item.get("text")
            if not isinstance(media, str) or not media:
                raise _BadRecord(f"{where}: '{key}' must be a non-empty path, got {media!r}")
            if not isinstance(text, str) or not text.strip():
                raise _BadRecord(f"{where}: empty or missing 'text'")
            stem = f"{lineno:08d}"
            records.append(Record(lineno, where, stem, stem, path.parent / media, text))
        except _BadRecord as exc:
            problems.append((lineno, str(exc)))
    return records, problems


def read_captions(path: str | os.PathLike) -> tuple[list[Record], list[tuple[int, str]]]:
    """T2I records of a JSONL file, and (line number, message) per bad record (images not checked)."""
    return _read_media_jsonl(path, "image", "captions file")


def read_videos(path: str | os.PathLike) -> tuple[list[Record], list[tuple[int, str]]]:
    """Video records of a JSONL file, and (line number, message) per bad record (videos not checked)."""
    return _read_media_jsonl(path, "video", "videos file")


def _conversation(item: dict, where: str) -> tuple[str, str]:
    turns = item.get("conversations")
    if (not isinstance(turns, list) or len(turns) != 2
            or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns)
            or [t.get("from") for t in turns] != ["human", "gpt"]):
        shown = [t.get("from") if isinstance(t, dict) else t for t in turns] if isinstance(turns, list) else turns
        raise _BadRecord(f"{where}: 'conversations' must be one human turn then one gpt turn, each with a "
                         f"string 'value'; got {shown!r}")
    question = _IMAGE_TAG.sub(" ", turns[0]["value"]).strip()
    response = turns[1]["value"]
    if not question:
        raise _BadRecord(f"{where}: empty question (nothing but <image> in the human turn)")
    if not response.strip():
        raise _BadRecord(f"{where}: empty answer in the gpt turn")
    return question, response


def read_conversations(path: str | os.PathLike,
                       image_root: str | os.PathLike) -> tuple[list[Record], list[tuple[int, str]]]:
    """VQA records of a LLaVA-style JSON list, and (index, message) per bad record (images not checked)."""
    path, image_root = Path(path), Path(image_root)
    try:
        data = json.loads(_read_text(path, "conversations file"))
    except json.JSONDecodeError as exc:
        raise UserError(f"conversations file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise UserError(f"conversations file {path} must hold a JSON list of records, got {type(data).__name__}")
    records, problems = [], []
    for index, item in enumerate(data):
        where = f"{path} record {index}"
        try:
            if not isinstance(item, dict):
                raise _BadRecord(f"{where}: expected an object, got {type(item).__name__}")
            rid = item.get("id")
            if isinstance(rid, bool) or not isinstance(rid, (str, int)) or str(rid) == "":
                raise _BadRecord(f"{where}: 'id' must be a non-empty string or an integer, got {rid!r}")
            where = f"{where} (id {str(rid)!r})"
            image = item.get("image")
            if not isinstance(image, str) or not image:
                raise _BadRecord(f"{where}: 'image' must be a non-empty path, got {image!r}")
            question, response = _conversation(item, where)
            records.append(Record(index, where, f"{index:08d}", str(rid), image_root / image, question,
                                   response))
        except _BadRecord as exc:
            problems.append((index, str(exc)))
    return records, problems


# ---- the run -----------------------------------------------------------------------------------

def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """The one output policy of every command (emu3_vq.cli.check_outputs): OUT/list/train.json and
    OUT/feature can be written, and an earlier run's are replaced only with `overwrite`; nothing
    is created yet."""
    features = dataset.feature_dir(out_dir)
    check_outputs([dataset.list_path(out_dir)], overwrite=overwrite, option="--out",
                  directories=[features] if features.exists() else ())


def _vq_checkpoint(vq) -> Path:
    """A local vision tokenizer directory, or the cached snapshot of a hub repo id holding its
    config.json, preprocessor_config.json and weights (emu3_vq.hub)."""
    from emu3_vq import hub

    if not hub.is_repo_id(vq):
        return Path(vq)
    try:
        hub.resolve(vq, ["preprocessor_config.json"], required=("preprocessor_config.json",))
        return hub.resolve_weights(vq, lambda key: True)  # the same snapshot folder, weights added
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None


def _load_vq_files(vq_dir: Path):
    """The checkpoint's config and image processor (cheap: no weights), checked."""
    from emu3_vq.config import Emu3VQConfig
    from emu3_vq.processor import Emu3ImageProcessor

    if not vq_dir.is_dir():
        raise UserError(f"vision tokenizer directory not found: {vq_dir}")
    if not (vq_dir / "config.json").is_file():
        raise UserError(f"{vq_dir} has no config.json: not a vision tokenizer checkpoint")
    try:
        config = Emu3VQConfig.from_json_file(vq_dir / "config.json")
        processor = Emu3ImageProcessor.from_pretrained(vq_dir)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise UserError(f"{vq_dir}: {exc}") from None
    if processor.spatial_factor != config.spatial_factor:
        raise UserError(f"{vq_dir}: preprocessor_config.json has spatial_factor {processor.spatial_factor} "
                        f"but the model downsamples by {config.spatial_factor}")
    return config, processor


def _load_model(vq_dir: Path, config, jit: bool | None, dtype=None):
    from emu3_vq import device
    from emu3_vq.commands import AUTO_JIT_MIN_CH
    from emu3_vq.model import Emu3VQModel

    if jit is None:  # the rule of `emu3 vq --jit auto`
        jit = device.policy().jit_small_models or config.ch >= AUTO_JIT_MIN_CH
    return Emu3VQModel.from_pretrained(vq_dir, dtype=dtype, jit=jit)


def _check_area(image_area) -> None:
    if isinstance(image_area, bool) or not isinstance(image_area, int) or image_area < 1:
        raise UserError(f"image_area must be a positive number of pixels, got {image_area!r}")


def _run(records: list[Record], problems: list[tuple[int, str]], vq_dir, out_dir, image_area: int, skip_bad: bool,
         jit: bool | None, progress: bool, task: str, overwrite: bool = False, dtype=None,
         frames: int | None = None) -> PrepareResult:
    """The run every prepare command shares: check every record (`task` "video": videos, else
    images) before the VQ model loads, then encode and write each sample, and the list last
    (recording `task`). `frames`: video only, how many frames of each to take (None: all)."""
    from tqdm import tqdm

    video = task == "video"
    vq_dir, out_dir = _vq_checkpoint(vq_dir), Path(out_dir)
    config, processor = _load_vq_files(vq_dir)
    factor = int(config.temporal_downsample_factor)
    if video and frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)
                                         or frames < 1 or frames % factor):
        raise UserError(f"frames must be a positive multiple of {factor} (the vision tokenizer's temporal "
                        f"factor), got {frames!r}")
    _check_out_dir(out_dir, overwrite)
    good = []
    for record in records:
        try:
            if video:
                _check_video(record, processor, image_area, factor, frames)
            else:
                _check_image(record, processor, image_area)
            good.append(record)
        except _BadRecord as exc:
            problems.append((record.order, str(exc)))
    problems.sort()
    if problems and not skip_bad:
        more = f" (and {len(problems) - 1} more bad records)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0][1]}{more}; fix the input or pass skip_bad (--skip-bad) to skip bad records")
    if not good:
        raise UserError(f"no usable records to prepare ({len(problems)} bad)")

    model = _load_model(vq_dir, config, jit, dtype)
    list_file, features = dataset.list_path(out_dir), dataset.feature_dir(out_dir)
    dataset.remove_list(list_file)
    features.mkdir(parents=True, exist_ok=True)
    files = []
    encoded: dict[Path, np.ndarray] = {}  # an image several records share (VQA) is encoded once
    for record in tqdm(good, desc=f"prepare-{task}", unit="video" if video else "image", disable=not progress):
        codes = encoded.get(record.image)
        if codes is None:
            try:  # what reading the whole file finds: a cut image, frames of different sizes
                pixels = (_video_pixels(record, processor, image_area, frames) if video
                          else _image_pixels(record, processor, image_area))
            except (ValueError, OSError) as exc:
                message = f"{record.where}: {exc}"
                if not skip_bad:
                    raise UserError(f"{message}; fix the input or pass skip_bad (--skip-bad) to skip bad "
                                    f"records") from None
                problems.append((record.order, message))
                continue
            codes = model.encode(pixels)
            codes = np.asarray(codes.asnumpy() if hasattr(codes, "asnumpy") else codes)[0]  # [h, w] or [t, h, w]
            encoded[record.image] = codes
        name = f"{record.stem}{dataset.SUFFIX}"
        dataset.write_sample(features / name, record.name, codes, record.text, record.response)
        files.append(name)
    if not files:
        raise UserError(f"no records could be prepared ({len(problems)} bad)")
    dataset.write_list(list_file, features.resolve(), files, task=task)
    return PrepareResult(list_path=list_file, feature_dir=features, written=len(files), skipped=len(problems),
                         problems=[message for _, message in sorted(problems)])


def prepare_t2i(captions_jsonl: str | os.PathLike, vq_dir: str | os.PathLike, out_dir: str | os.PathLike,
                image_area: int = T2I_IMAGE_AREA, skip_bad: bool = False, jit: bool | None = None,
                progress: bool = True, overwrite: bool = False, dtype=None) -> PrepareResult:
    """Text-to-image data: a JSONL of {"image", "text"} -> OUT/feature/*.ckpt + OUT/list/train.json.

    `vq_dir`: a vision tokenizer checkpoint (config.json, weights, preprocessor_config.json).
    `jit`: compile the VQ model (None: as `emu3 vq --jit auto`). `dtype`: the VQ's ("fp32" |
    "fp16" | "bf16"; None: the device's default). `progress`: a tqdm bar on stderr. `overwrite`: replace an earlier run's OUT/list and OUT/feature (refused otherwise).
    Raises `emu3_vq.cli.UserError` (one line) for bad input.
    """
    _check_area(image_area)
    records, problems = read_captions(captions_jsonl)
    return _run(records, problems, vq_dir, out_dir, image_area, skip_bad, jit, progress, "t2i", overwrite, dtype)


def prepare_vqa(conversations_json: str | os.PathLike, image_root: str | os.PathLike, vq_dir: str | os.PathLike,
                out_dir: str | os.PathLike, image_area: int = VQA_IMAGE_AREA, skip_bad: bool = False,
                jit: bool | None = None, progress: bool = True, overwrite: bool = False,
                dtype=None) -> PrepareResult:
    """VQA data: a LLaVA-style JSON list with images under `image_root` -> OUT/feature/*.ckpt +
    OUT/list/train.json. Other arguments as `prepare_t2i`."""
    _check_area(image_area)
    if not Path(image_root).is_dir():
        raise UserError(f"image root directory not found: {image_root}")
    records, problems = read_conversations(conversations_json, image_root)
    return _run(records, problems, vq_dir, out_dir, image_area, skip_bad, jit, progress, "vqa", overwrite, dtype)


def prepare_video(videos_jsonl: str | os.PathLike, vq_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  image_area: int = VIDEO_IMAGE_AREA, frames: int | None = None, skip_bad: bool = False,
                  jit: bool | None = None, progress: bool = True, overwrite: bool = False,
                  dtype=None) -> PrepareResult:
    """Video continuation data: a JSONL of {"video", "text"} -> OUT/feature/*.ckpt (codes
    [t, h, w]) + OUT/list/train.json (task "video"). `frames`: take the first N frames of each
    video (a multiple of the temporal factor; a shorter video is a bad record); None: all of
    them, whose number must then be a multiple of it. Other arguments as `prepare_t2i`."""
    _check_area(image_area)
    records, problems = read_videos(videos_jsonl)
    return _run(records, problems, vq_dir, out_dir, image_area, skip_bad, jit, progress, "video", overwrite,
                dtype, frames=frames)
