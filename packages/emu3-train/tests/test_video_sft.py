"""Video continuation data: the sequence layout and labels (docs/video_layout.md), the prefix
that `emu3_decoding.video` feeds the model, and `prepare_video` / `emu3 train prepare-video` on
the micro vision tokenizer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from emu3_train import dataset
from emu3_train.dataset import feature_dir, list_path, write_list, write_sample
from emu3_train.prepare import prepare_video
from emu3_train.sequences import SftDataset, t2i_sequence, video_sequence
from emu3_vq import cli
from emu3_vq.cli import UserError
from emu3_vq.model import Emu3VQModel
from emu3_vq.processor import Emu3ImageProcessor
from PIL import Image

IGNORE = -100
AREA = 32 * 32


def _codes(t, h, w, seed):
    return np.random.default_rng(seed).integers(0, 32, (t, h, w))


def _by_hand(tok, caption, codes):
    """bos + caption + boi "h*w" img + per frame (rows of [w visual, eol], eof) + eoi + eos, from
    the named tokens."""
    sp = tok.special_tokens
    t, h, w = codes.shape
    ids = [sp["<|extra_203|>"]] + tok.encode(caption)
    ids += [sp["<|image start|>"]] + tok.encode(f"{h}*{w}") + [sp["<|image token|>"]]
    for frame in codes:
        for row in frame:
            ids += [sp[f"<|visual token {c:06d}|>"] for c in row] + [sp["<|extra_200|>"]]
        ids.append(sp["<|extra_201|>"])
    return ids + [sp["<|image end|>"], sp["<|extra_204|>"]]


def test_video_sequence_layout_and_labels(tokenizer):
    tok = tokenizer
    codes = _codes(3, 2, 3, 0)
    ids, labels = video_sequence(tok, "a ball rolls", codes)
    assert ids.dtype == np.int32 and labels.dtype == np.int32
    assert ids.tolist() == _by_hand(tok, "a ball rolls", codes)
    # the same as one string tokenised in one go
    frames = "".join("".join("".join(f"<|visual token {c:06d}|>" for c in row) + "<|extra_200|>" for row in f)
                     + "<|extra_201|>" for f in codes)
    text = "<|extra_203|>a ball rolls<|image start|>2*3<|image token|>" + frames + "<|image end|><|extra_204|>"
    assert ids.tolist() == tok.encode(text)
    # labels: the visual tokens of every frame, in order; nothing else (not eol, eof, eoi, eos, text)
    kept = labels != IGNORE
    assert kept.sum() == codes.size
    assert np.array_equal(labels[kept] - tok.first_visual_id, codes.reshape(-1))
    assert np.array_equal(labels[kept], ids[kept])
    # one latent frame: the image block of text-to-image, then eos
    one, _ = video_sequence(tok, "x", codes[:1])
    image, _ = t2i_sequence(tok, "x", codes[0])
    assert one.tolist() == image.tolist() + [tok.eos_id]
    with pytest.raises(ValueError, match=r"\[t, h, w\]"):
        video_sequence(tok, "x", codes[0])


def test_decoding_prompt_is_a_prefix(tokenizer):
    """What `emu3_decoding.video` gives the model to continue a video (the caption and the first
    frames, block left open) is token for token the start of the training sequence."""
    video = pytest.importorskip("emu3_decoding.video")
    codes = _codes(3, 2, 3, 1)
    ids, _ = video_sequence(tokenizer, "a ball rolls", codes)
    processor = SimpleNamespace(tokenizer=tokenizer)
    for given in (1, 2, 3):
        prompt = video.video_prompt_ids(processor, codes[:given], "a ball rolls")
        assert ids[:len(prompt)].tolist() == prompt
        assert ids[len(prompt) - 1] == tokenizer.eof_id  # it ends at a frame's eof
    # and with the null prompt (classifier-free guidance's negative text "")
    empty, _ = video_sequence(tokenizer, "", codes)
    prompt = video.video_prompt_ids(processor, codes[:2], "")
    assert empty[:len(prompt)].tolist() == prompt


def _make_list(root, samples, task=None):
    files = []
    for name, codes, text in samples:
        write_sample(feature_dir(root) / f"{name}.ckpt", name, codes, text)
        files.append(f"{name}.ckpt")
    return write_list(list_path(root), feature_dir(root).resolve(), files, task=task)


def test_video_dataset(tokenizer, tmp_path):
    samples = [("v0", _codes(2, 2, 3, 2), "a ball rolls"), ("v1", _codes(1, 3, 2, 3), "waves")]
    lp = _make_list(tmp_path / "v", samples, task="video")
    assert dataset.read_list(lp).task == "video"
    assert json.loads(lp.read_text())["task"] == "video"
    ds = SftDataset(lp, tokenizer, "video", max_length=64, null_prompt_prob=0.0)
    for i, (_, codes, text) in enumerate(samples):
        ids, labels = ds.example(i)
        assert ids.tolist() == _by_hand(tokenizer, text, codes)
    lengths = ds.validate()
    assert ds.supervised.tolist() == [12, 6] and lengths.tolist() == [len(ds.example(i)[0]) for i in range(2)]
    # the null prompt applies to video captions as to text-to-image ones
    always = SftDataset(lp, tokenizer, "video", max_length=64, null_prompt_prob=1.0)
    assert always.example(0)[0].tolist() == _by_hand(tokenizer, "", samples[0][1])
    some = SftDataset(lp, tokenizer, "video", max_length=64, null_prompt_prob=0.5, seed=2)
    assert 0 < np.mean([some.null_prompt(0, e) for e in range(200)]) < 1
    # video codes are not an image, and the other way round
    with pytest.raises(ValueError, match=r"sample 'v0' .*video codes"):
        SftDataset(lp, tokenizer, "t2i", max_length=64).example(0)
    image = _make_list(tmp_path / "i", [("i0", _codes(1, 2, 2, 4)[0], "img")])
    with pytest.raises(ValueError, match=r"sample 'i0' .*not video codes"):
        SftDataset(image, tokenizer, "video", max_length=64).example(0)


# ---- prepare-video on the micro vision tokenizer ------------------------------------------------------

def _frames(directory, count, width=32, height=32, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # natural order: f2 before f10
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(directory / f"f{i}.png")
    return directory


@pytest.fixture
def video_input(tmp_path):
    root = tmp_path / "in"
    _frames(root / "clips" / "a", 4, seed=0)
    _frames(root / "clips" / "b", 8, 48, 32, seed=1)
    lines = [json.dumps({"video": "clips/a", "text": "first clip"}),
             json.dumps({"video": "clips/b", "text": "second clip"})]
    (root / "videos.jsonl").write_text("\n".join(lines) + "\n")
    return root / "videos.jsonl"


@pytest.fixture(scope="module")
def vq_model(vq_dir):
    return Emu3VQModel.from_pretrained(vq_dir, jit=False)


def _expected(vq_dir, vq_model, directory, count=None):
    """Codes of a video written out independently: frames in natural order, each scaled to AREA,
    resized by the processor, encoded as one clip."""
    processor = Emu3ImageProcessor.from_pretrained(vq_dir)
    files = sorted(directory.iterdir(), key=lambda p: int(p.stem[1:]))[:count]
    frames = []
    for f in files:
        image = Image.open(f).convert("RGB")
        w, h = image.size
        r = (AREA / (w * h)) ** 0.5
        frames.append(image.resize((round(w * r), round(h * r)), Image.BICUBIC))
    return vq_model.encode(processor.preprocess_video(frames)[None]).asnumpy()[0]


def test_prepare_video(video_input, vq_dir, vq_model, tmp_path):
    out = tmp_path / "out"
    result = prepare_video(video_input, vq_dir, out, image_area=AREA, progress=False, jit=False)
    assert (result.written, result.skipped) == (2, 0)
    listed = json.loads(result.list_path.read_text())
    assert listed["task"] == "video" and listed["path_list"] == ["00000001.ckpt", "00000002.ckpt"]
    samples = dataset.read_list(result.list_path)
    a, b = samples.read(0), samples.read(1)
    assert (a.texts, b.texts, a.response) == ("first clip", "second clip", None)
    assert a.images.dtype == np.int32 and a.images.shape == (1, 16, 16)
    assert b.images.shape == (2, 13, 20)  # 8 frames of 48x32 -> 39x26 -> 40x26 pixels
    # frames in natural order (f0 .. f7), each scaled like an image, one clip: as written out here
    assert np.array_equal(b.images, _expected(vq_dir, vq_model, video_input.parent / "clips" / "b"))


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the VQ model was loaded before the input was validated")

    monkeypatch.setattr(Emu3VQModel, "from_pretrained", classmethod(refuse))


def test_bad_videos_are_named_before_the_model_loads(tmp_path, vq_dir, no_model):
    root = tmp_path / "in"
    _frames(root / "ok", 4)
    _frames(root / "five", 5)
    lines = [json.dumps({"video": "ok", "text": "fine"}),
             json.dumps({"video": "five", "text": "odd count"}),
             json.dumps({"video": "gone", "text": "missing"}),
             json.dumps({"video": "ok", "text": " "})]
    videos = root / "videos.jsonl"
    videos.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as info:
        prepare_video(videos, vq_dir, tmp_path / "out", image_area=AREA, progress=False)
    message = str(info.value)
    assert message.startswith(f"{videos}:2: ") and "has 5 frames, not a multiple of 4" in message
    assert "and 2 more bad records" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="frames must be a positive multiple of 4"):
        prepare_video(videos, vq_dir, tmp_path / "out", image_area=AREA, frames=6, progress=False)
    with pytest.raises(UserError, match=f"{videos}:1: .*fewer than frames=8"):
        prepare_video(videos, vq_dir, tmp_path / "out", image_area=AREA, frames=8, progress=False)


def test_cli_prepare_video_skip_bad(tmp_path, vq_dir, capsys, monkeypatch):
    real = cli.entry_points
    monkeypatch.setattr(cli, "entry_points", lambda group: [e for e in real(group=group) if e.name == "train"])
    root = tmp_path / "in"
    _frames(root / "ok", 8)
    _frames(root / "three", 3)
    videos = root / "videos.jsonl"
    videos.write_text(json.dumps({"video": "three", "text": "short"}) + "\n"
                      + json.dumps({"video": "ok", "text": "fine"}) + "\n")
    argv = ["train", "prepare-video", "--videos", str(videos), "--vq", str(vq_dir), "--out", str(tmp_path / "out"),
            "--image-area", str(AREA), "--jit", "off", "--frames", "4"]
    assert cli.main(argv) == 2
    assert f"{videos}:1: " in capsys.readouterr().err
    assert cli.main([*argv[:-2], "--frames", "6"]) == 2
    assert "frames must be a positive multiple of 4" in capsys.readouterr().err
    assert cli.main([*argv, "--skip-bad"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "wrote 1 sample" in stdout and "1 bad record skipped" in stdout
    assert f"emu3: skipped: {videos}:1: " in stderr and "fewer than frames=4" in stderr
    samples = dataset.read_list(tmp_path / "out" / "list" / "train.json")
    assert samples.files == ("00000002.ckpt",) and samples.task == "video"
    assert samples.read(0).images.shape == (1, 16, 16)  # --frames 4: the first 4 of 8 frames
    assert cli.main([*argv, "--skip-bad"]) == 2  # an earlier run's output: --overwrite
    assert "--overwrite" in capsys.readouterr().err
    parser = cli.build_parser()
    args = parser.parse_args(["train", "prepare-video", "--videos", "v", "--vq", "q", "--out", "o"])
    assert (args.image_area, args.frames, args.skip_bad) == (512 * 512, None, False)
