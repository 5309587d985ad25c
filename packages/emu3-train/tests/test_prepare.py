"""prepare_t2i / prepare_vqa and `emu3 train prepare-*` on PNGs and the micro vision tokenizer."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from emu3_train import dataset
from emu3_train.prepare import prepare_t2i, prepare_vqa
from emu3_vq import cli
from emu3_vq.cli import UserError
from emu3_vq.model import Emu3VQModel
from emu3_vq.processor import Emu3ImageProcessor
from PIL import Image

AREA = 32 * 32  # the micro processor keeps images within 32*32 .. 96*96 pixels
# (name, width, height): scaled to AREA then rounded by the processor to even sides;
# 48x32 -> 39x26 (area) -> 40x26 (processor): two resizes, as the reference does
IMAGES = [("a.png", 32, 32), ("b.png", 48, 32), ("c.png", 32, 48)]


@pytest.fixture(scope="module")
def vq_model(vq_dir):
    return Emu3VQModel.from_pretrained(vq_dir, jit=False)


@pytest.fixture(scope="module")
def expected_codes(vq_dir, vq_model):
    """Codes of an image the way the reference scripts make them, written out independently."""
    processor = Emu3ImageProcessor.from_pretrained(vq_dir)

    @functools.cache
    def codes(path):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        r = (AREA / (w * h)) ** 0.5
        image = image.resize((round(w * r), round(h * r)), Image.BICUBIC)
        return vq_model.encode(processor.preprocess([image])).asnumpy()[0]

    return codes


@pytest.fixture
def t2i_input(tmp_path, save_image):
    """captions.jsonl beside an images/ folder; image paths relative to the JSONL file."""
    root = tmp_path / "in"
    lines = []
    for i, (name, w, h) in enumerate(IMAGES):
        save_image(root / "images" / name, w, h, seed=i)
        lines.append(json.dumps({"image": f"images/{name}", "text": f"caption number {i}"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root / "captions.jsonl"


@pytest.fixture
def vqa_input(tmp_path, save_image):
    root = tmp_path / "vqa"
    save_image(root / "img" / "x.png", 32, 32, seed=5)
    save_image(root / "img" / "sub" / "y.png", 40, 56, seed=6)
    records = [
        {"id": "rec-x", "image": "x.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in this picture?"},
            {"from": "gpt", "value": "A cat on a mat."}]},
        {"id": 17, "image": "sub/y.png", "conversations": [
            {"from": "human", "value": "Describe the image. <image>"},
            {"from": "gpt", "value": "It shows a blue square."}]},
    ]
    (root / "conv.json").write_text(json.dumps(records))
    return root / "conv.json", root / "img"


@pytest.fixture
def no_model(monkeypatch):
    """Loading the VQ model fails loudly: for tests whose run must stop before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the VQ model was loaded before the input was validated")

    monkeypatch.setattr(Emu3VQModel, "from_pretrained", classmethod(refuse))


def test_prepare_t2i(t2i_input, vq_dir, tmp_path, expected_codes):
    out = tmp_path / "out"
    result = prepare_t2i(t2i_input, vq_dir, out, image_area=AREA, progress=False)
    assert (result.written, result.skipped, result.problems) == (3, 0, [])
    assert result.list_path == out / "list" / "train.json"
    listed = json.loads(result.list_path.read_text())
    assert listed == {"prefix": str((out / "feature").resolve()),
                      "path_list": ["00000001.ckpt", "00000002.ckpt", "00000003.ckpt"], "task": "t2i"}
    samples = dataset.read_list(result.list_path)
    for i, (name, w, h) in enumerate(IMAGES):
        sample = samples.read(i)
        assert (sample.name, sample.texts, sample.response) == (f"{i + 1:08d}", f"caption number {i}", None)
        want = expected_codes(t2i_input.parent / "images" / name)
        assert sample.images.dtype == np.int32
        assert np.array_equal(sample.images, want)
    # the two resizes: 48x32 -> 39x26 -> 40x26 pixels -> 20x13 codes (spatial factor 2)
    assert samples.read(1).images.shape == (13, 20)
    assert samples.read(2).images.shape == (20, 13)


def test_prepare_vqa(vqa_input, vq_dir, tmp_path, expected_codes):
    conv, image_root = vqa_input
    result = prepare_vqa(conv, image_root, vq_dir, tmp_path / "out", image_area=AREA, progress=False)
    assert (result.written, result.skipped) == (2, 0)
    samples = dataset.read_list(result.list_path)
    assert samples.files == ("00000000.ckpt", "00000001.ckpt") and samples.task == "vqa"
    x, y = samples.read(0), samples.read(1)
    assert (x.name, x.texts, x.response) == ("rec-x", "What is in this picture?", "A cat on a mat.")
    assert (y.name, y.texts, y.response) == ("17", "Describe the image.", "It shows a blue square.")
    assert np.array_equal(x.images, expected_codes(image_root / "x.png"))
    assert np.array_equal(y.images, expected_codes(image_root / "sub" / "y.png"))


def _bad_t2i_input(root, save_image):
    """Lines 1 and 6 good; 2 missing image, 3 unreadable image, 4 empty text, 5 not JSON."""
    save_image(root / "ok.png", 32, 32)
    save_image(root / "ok2.png", 32, 32, seed=1)
    (root / "junk.png").write_bytes(b"this is not an image")
    lines = [json.dumps({"image": "ok.png", "text": "fine"}),
             json.dumps({"image": "missing.png", "text": "no image"}),
             json.dumps({"image": "junk.png", "text": "bad image"}),
             json.dumps({"image": "ok.png", "text": "  "}),
             '{"image": "ok.png", "text": ',
             json.dumps({"image": "ok2.png", "text": "fine too"})]
    path = root / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_records_stop_the_run_before_the_model_loads(tmp_path, save_image, vq_dir, no_model):
    captions = _bad_t2i_input(tmp_path, save_image)
    with pytest.raises(UserError) as info:
        prepare_t2i(captions, vq_dir, tmp_path / "out", image_area=AREA, progress=False)
    message = str(info.value)
    assert f"{captions}:2: image not found" in message and "missing.png" in message
    assert "and 3 more bad records" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # nothing written, not even a directory


def test_skip_bad_skips_and_counts(tmp_path, save_image, vq_dir):
    captions = _bad_t2i_input(tmp_path, save_image)
    result = prepare_t2i(captions, vq_dir, tmp_path / "out", image_area=AREA, skip_bad=True, progress=False)
    assert (result.written, result.skipped) == (2, 4)
    for lineno, text in [(2, "image not found"), (3, "cannot read image"), (4, "empty or missing 'text'"),
                         (5, "not valid JSON")]:
        assert any(p.startswith(f"{captions}:{lineno}: ") and text in p for p in result.problems), (lineno, text)
    samples = dataset.read_list(result.list_path)
    assert samples.files == ("00000001.ckpt", "00000006.ckpt")
    assert [samples.read(i).texts for i in range(2)] == ["fine", "fine too"]


def test_an_image_that_fails_to_decode_while_running(tmp_path, save_image, vq_dir):
    """A PNG whose header reads but whose data is cut: found when the image is loaded."""
    png = save_image(tmp_path / "cut.png", 32, 32).read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    save_image(tmp_path / "ok.png", 32, 32)
    captions = tmp_path / "c.jsonl"
    captions.write_text(json.dumps({"image": "cut.png", "text": "t"}) + "\n" + json.dumps({"image": "ok.png", "text": "u"}))
    with pytest.raises(UserError, match=f"{captions}:1: cannot read image"):
        prepare_t2i(captions, vq_dir, tmp_path / "out", image_area=AREA, progress=False)
    assert not dataset.list_path(tmp_path / "out").exists()
    # the stopped run left OUT/feature: replacing it takes overwrite, as for every command
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prepare_t2i(captions, vq_dir, tmp_path / "out", image_area=AREA, skip_bad=True, progress=False)
    result = prepare_t2i(captions, vq_dir, tmp_path / "out", image_area=AREA, skip_bad=True, progress=False,
                         overwrite=True)
    assert (result.written, result.skipped) == (1, 1)


def test_bad_vqa_records_are_named_by_id(tmp_path, save_image, vq_dir, no_model):
    save_image(tmp_path / "img" / "a.png", 32, 32)
    turns = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    records = [{"id": "ok", "image": "a.png", "conversations": turns},
               {"id": "lost", "image": "b.png", "conversations": turns},
               {"id": "silent", "image": "a.png", "conversations": [turns[0], {"from": "gpt", "value": " "}]},
               {"id": "only-image", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\n"},
                                                                        turns[1]]},
               {"id": "long", "image": "a.png", "conversations": turns + turns},
               {"image": "a.png", "conversations": turns}]
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps(records))
    with pytest.raises(UserError, match=r"record 1 \(id 'lost'\): image not found") as info:
        prepare_vqa(conv, tmp_path / "img", vq_dir, tmp_path / "out", image_area=AREA, progress=False)
    assert "and 4 more bad records" in str(info.value)

    from emu3_train.prepare import read_conversations

    records, problems = read_conversations(conv, tmp_path / "img")
    assert [r.name for r in records] == ["ok", "lost"]  # the image of "lost" is checked later
    problems = [message for _, message in problems]
    assert "record 2 (id 'silent'): empty answer" in problems[0]
    assert "record 3 (id 'only-image'): empty question" in problems[1]
    assert "record 4 (id 'long'): 'conversations' must be one human turn then one gpt turn" in problems[2]
    assert "record 5: 'id' must be" in problems[3]


def test_inputs_and_output_checked_before_the_model_loads(tmp_path, t2i_input, vq_dir, no_model):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        prepare_t2i(t2i_input, vq_dir, tmp_path / "file", image_area=AREA)
    with pytest.raises(UserError, match="file is not a directory"):
        prepare_t2i(t2i_input, vq_dir, tmp_path / "file" / "sub", image_area=AREA)
    with pytest.raises(UserError, match="captions file not found"):
        prepare_t2i(tmp_path / "nope.jsonl", vq_dir, tmp_path / "out", image_area=AREA)
    with pytest.raises(UserError, match="vision tokenizer directory not found"):
        prepare_t2i(t2i_input, tmp_path / "novq", tmp_path / "out", image_area=AREA)
    with pytest.raises(UserError, match="image_area"):
        prepare_t2i(t2i_input, vq_dir, tmp_path / "out", image_area=0)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        prepare_vqa(tmp_path / "bad.json", tmp_path, vq_dir, tmp_path / "out", image_area=AREA)
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(UserError, match="must hold a JSON list"):
        prepare_vqa(tmp_path / "obj.json", tmp_path, vq_dir, tmp_path / "out", image_area=AREA)
    # an image too elongated for the processor (aspect ratio above 5) is a bad record
    big = t2i_input.parent / "images" / "wide.png"
    Image.new("RGB", (120, 20)).save(big)
    t2i_input.write_text(json.dumps({"image": "images/wide.png", "text": "wide"}) + "\n")
    with pytest.raises(UserError, match=r"captions.jsonl:1: .*wide.png.*too elongated"):
        prepare_t2i(t2i_input, vq_dir, tmp_path / "out", image_area=AREA)


def test_an_interrupted_run_leaves_no_list(t2i_input, vq_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    stale = dataset.write_list(dataset.list_path(out), dataset.feature_dir(out), ["old.ckpt"])  # an older run's
    real = Emu3VQModel.encode
    calls = []

    def encode(self, pixels):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(self, pixels)

    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prepare_t2i(t2i_input, vq_dir, out, image_area=AREA, progress=False)
    assert stale.exists()  # refused before anything was touched
    monkeypatch.setattr(Emu3VQModel, "encode", encode)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_t2i(t2i_input, vq_dir, out, image_area=AREA, progress=False, overwrite=True)
    assert not stale.exists()
    assert [p.name for p in dataset.feature_dir(out).iterdir()] == ["00000001.ckpt"]  # complete, not listed


# ---- the command line ---------------------------------------------------------------------------

@pytest.fixture
def train_commands_only(monkeypatch):
    real = cli.entry_points
    monkeypatch.setattr(cli, "entry_points", lambda group: [e for e in real(group=group) if e.name == "train"])


def test_cli_prepare_t2i(t2i_input, vq_dir, tmp_path, capsys, train_commands_only, expected_codes):
    (t2i_input.parent / "images" / "b.png").unlink()
    argv = ["train", "prepare-t2i", "--captions", str(t2i_input), "--vq", str(vq_dir), "--out", str(tmp_path / "out"),
            "--image-area", str(AREA)]
    code = cli.main(argv)
    stdout, stderr = capsys.readouterr()
    assert code == 2
    assert stderr.startswith(f"emu3: error: {t2i_input}:2: image not found")
    assert not (tmp_path / "out").exists()

    code = cli.main([*argv, "--skip-bad"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "wrote 2 samples" in stdout and "1 bad record skipped" in stdout
    assert str(tmp_path / "out" / "list" / "train.json") in stdout
    assert f"emu3: skipped: {t2i_input}:2: image not found" in stderr
    samples = dataset.read_list(tmp_path / "out" / "list" / "train.json")
    assert samples.files == ("00000001.ckpt", "00000003.ckpt")
    assert np.array_equal(samples.read(0).images, expected_codes(t2i_input.parent / "images" / "a.png"))


def test_cli_prepare_vqa(vqa_input, vq_dir, tmp_path, capsys, train_commands_only):
    conv, image_root = vqa_input
    code = cli.main(["train", "prepare-vqa", "--conversations", str(conv), "--image-root", str(image_root),
                     "--vq", str(vq_dir), "--out", str(tmp_path / "out"), "--image-area", str(AREA),
                     "--dtype", "fp32"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "wrote 2 samples" in stdout
    assert dataset.read_list(tmp_path / "out" / "list" / "train.json").read(1).response == "It shows a blue square."


def test_cli_defaults_are_the_references(train_commands_only):
    parser = cli.build_parser()
    t2i = parser.parse_args(["train", "prepare-t2i", "--captions", "c", "--vq", "v", "--out", "o"])
    vqa = parser.parse_args(["train", "prepare-vqa", "--conversations", "c", "--image-root", "r", "--vq", "v",
                             "--out", "o"])
    assert (t2i.image_area, vqa.image_area) == (720 * 720, 480 * 320)
    assert (t2i.skip_bad, t2i.jit) == (False, "auto")


def test_prepare_takes_a_hub_repo_id(t2i_input, vq_dir, tmp_path, hub_cache, monkeypatch):
    """--vq ORG/NAME from the local Hugging Face cache: the same samples as the local directory."""
    import huggingface_hub.constants

    cache, publish = hub_cache
    publish("org/tiny-vq", vq_dir)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    result = prepare_t2i(t2i_input, "org/tiny-vq", tmp_path / "out", image_area=AREA, progress=False)
    local = prepare_t2i(t2i_input, vq_dir, tmp_path / "local", image_area=AREA, progress=False)
    assert result.written == local.written > 0
    a, b = dataset.read_list(result.list_path), dataset.read_list(local.list_path)
    assert np.array_equal(a.read(0).images, b.read(0).images)
    with pytest.raises(UserError, match="hf download org/absent"):
        prepare_t2i(t2i_input, "org/absent", tmp_path / "out2", image_area=AREA, progress=False)
