"""`emu3 train vq` (vq_train.train_vq, vq_loss.VQLoss) on a tiny vision tokenizer.

One command-line run of 8 steps (images and a video, k-means initialisation, dead-code
restarts, a checkpoint at step 4) is shared by the tests: its loss falls, its metrics have the
documented keys, its checkpoints load as vision tokenizers, and a copy of it cut back to the
checkpoint and resumed ends bit-equal. The objective's straight-through gradients, the
quantizer (equal to `Emu3VQModel.encode`), k-means and the restarts are checked directly.
Bad options fail in one line (exit status 2) before any model is built.

The model is a custom config (one resolution level, temporal factor 2, no attention) on 8x8
images: its train step compiles in about half the time of the `micro` preset's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from emu3_train import vq_train
from emu3_train.vq_loss import VQLoss
from emu3_train.vq_train import VQTrainConfig, VQTrainer, initial_state, kmeans, step_batch
from emu3_vq.cli import build_parser, main
from emu3_vq.config import Emu3VQConfig
from emu3_vq.model import Emu3VQModel
from emu3_vq.processor import Emu3ImageProcessor
from emu3_vq.weights import read_safetensors
from PIL import Image

TINY = dict(codebook_size=64, ch=32, ch_mult=[1], num_res_blocks=1, attn_resolutions=[],
            temporal_downsample_factor=2)
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 50), (20, 20, 20)]
METRIC_KEYS = {"step", "lr", "loss", "l1", "mse", "codebook", "commitment", "perplexity", "codes_used",
               "restarted", "psnr", "seconds"}
STEPS, SAVE_EVERY = 8, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Flat-colour 8x8 images, one 4-frame video, and the tiny model's config.json."""
    root = tmp_path_factory.mktemp("vqdata")
    (root / "images" / "sub").mkdir(parents=True)
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (8, 8), colour).save(root / "images" / ("sub" if i % 2 else "") / f"{i}.png")
    clip = root / "videos" / "clip0"
    clip.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (12, 12), (40 * i + 30, 90, 200 - 40 * i)).save(clip / f"f{i}.png")  # resized to 8
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root


def run_argv(data, out, *extra) -> list[str]:
    return ["train", "vq", "--images", str(data / "images"), "--videos", str(data / "videos"),
            "--out", str(out), "--config", str(data / "tiny.json"), "--image-size", "8",
            "--steps", str(STEPS), "--batch-size", "6", "--clip-batch-size", "1", "--lr", "5e-3",
            "--min-lr", "1e-3", "--warmup-steps", "1", "--restart-every", "3", "--kmeans-batches", "2",
            "--seed", "3", "--save-every", str(SAVE_EVERY), *extra]


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """The shared run, through the command line: (output directory, its stderr)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("vqrun") / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(run_argv(data, out)) == 0, err.getvalue()[-2000:]
    return out, err.getvalue()


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def flat_pixels(colours, size=8) -> np.ndarray:
    return np.stack([np.full((3, size, size), np.array(c, np.float32)[:, None, None] / 127.5 - 1.0)
                     for c in colours]).astype(np.float32)


# ---- the run --------------------------------------------------------------------------------

def test_run_learns_and_logs_every_step(run):
    out, err = run
    m = metrics(out)
    assert [r["step"] for r in m] == list(range(1, STEPS + 1))
    assert all(set(r) == METRIC_KEYS for r in m)
    assert m[0]["lr"] == 0.0 and m[1]["lr"] == pytest.approx(5e-3)  # warmup from 0, then the peak
    assert all(np.isfinite(r["loss"]) and r["loss"] == pytest.approx(
        r["l1"] + r["mse"] + r["codebook"] + 0.25 * r["commitment"], rel=1e-5) for r in m)
    # the reconstruction improves; the total need not yet: while the encoder's latents move
    # faster than Adam moves the codes, the codebook and commitment terms grow at first
    recon = [r["l1"] + r["mse"] for r in m]
    assert recon[-1] < 0.9 * recon[0], recon
    assert m[-1]["psnr"] > m[0]["psnr"] + 0.5
    assert sum(r["restarted"] for r in m) > 0  # 64 codes: some unused in 3 steps, moved onto latents
    assert [r["restarted"] for r in m if r["step"] % 3] == [0] * (STEPS - STEPS // 3)
    summary = [line for line in err.splitlines() if line.startswith("emu3: trained")]
    assert len(summary) == 1 and f"{out / 'final'}" in summary[0] and "of 64 codes" in summary[0]


def test_checkpoints_are_vision_tokenizers(run, data):
    out, _ = run
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4", "final", "metrics.jsonl"]
    for name, step in (("checkpoint-4", 4), ("final", STEPS)):
        state = json.loads((out / name / "trainer_state.json").read_text())
        assert state["step"] == step and state["last"]["step"] == step
        assert state["settings"]["images"] == str((data / "images").resolve())
    model = Emu3VQModel.from_pretrained(out / "final", jit=False)
    assert model.config.codebook_size == 64 and model.config.ch_mult == (1,)
    processor = Emu3ImageProcessor.from_pretrained(out / "final")
    assert processor.spatial_factor == 1
    pixels = flat_pixels(COLOURS[:2])
    codes = model.encode(pixels).asnumpy()
    assert codes.shape == (2, 8, 8) and codes.dtype == np.int32
    recon = model.decode(codes).asnumpy()
    assert recon.shape == (2, 3, 8, 8) and np.isfinite(recon).all()
    video = np.repeat(pixels[:1, None], 4, axis=1)  # [1, 4, 3, 8, 8]: two latent frames
    assert model.encode(video).shape == (1, 2, 8, 8)


@pytest.mark.slow  # ~40 s; sft's resume is bit-equal by default (test_sft)
def test_resume_is_bit_equal(run, data, tmp_path, monkeypatch):
    """A run killed after its checkpoint at step 4 (metrics logged to the end, no final) and
    resumed, from another working directory with relative paths, ends where the run ended."""
    out, _ = run
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    shutil.rmtree(cut / "final")
    monkeypatch.chdir(data)
    config = VQTrainConfig(images="images", videos="videos", out=str(cut), config="tiny.json", image_size=8,
                           steps=STEPS, batch_size=6, clip_batch_size=1, lr=5e-3, min_lr=1e-3, warmup_steps=1,
                           restart_every=3, kmeans_batches=2, seed=3, save_every=SAVE_EVERY, resume=True)
    result = vq_train.train_vq(config, progress=False)
    assert result["step"] == STEPS and result["final"] == str(cut / "final")
    ours, theirs = metrics(cut), metrics(out)
    assert [dict(r, seconds=0) for r in ours] == [dict(r, seconds=0) for r in theirs]
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = read_safetensors(out / "final" / name), read_safetensors(cut / "final" / name)
        assert sorted(a) == sorted(b)
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    assert "codebook_usage" in b and "adamw.steps" in b


# ---- the command line -----------------------------------------------------------------------

def test_cli_errors_are_one_line(run, data, tmp_path, capsys):
    out, _ = run
    empty = tmp_path / "empty"
    empty.mkdir()

    def fails(argv, *words):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("emu3: error:"), err
        for word in words:
            assert word in err, err

    base = ["train", "vq", "--out", str(tmp_path / "o")]
    fails([*base, "--images", str(empty)], "--images", "no images")
    fails([*base, "--images", str(tmp_path / "missing")], "not a directory")
    fails([*base, "--images", str(data / "images"), "--config", "micro", "--image-size", "9"],
          "--image-size 9", "spatial factor 2")
    fails([*base, "--images", str(data / "images"), "--config", "nope"], "--config 'nope'", "preset")
    fails([*base, "--images", str(data / "images"), "--steps", "0"], "--steps")
    fails([*base, "--images", str(data / "images"), "--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr")
    fails([*base, "--images", str(data / "images"), "--videos", str(empty)], "--videos", "no frame folders")
    fails(run_argv(data, out), "already holds files", "--resume")
    fails(run_argv(data, out, "--resume", "--lr", "1e-2"), "--resume: --lr is 0.01", "used 0.005")
    fails(run_argv(data, out, "--resume", "--steps", "9"), "--resume: --steps is 9")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4", "final", "metrics.jsonl"]  # untouched


def test_cli_options_map_to_the_config():
    args = build_parser().parse_args(["train", "vq", "--images", "i", "--out", "o"])
    d = VQTrainConfig(images="i", out="o")
    for field in ("config", "image_size", "steps", "batch_size", "clip_batch_size", "clip_latent_frames", "lr",
                  "min_lr", "warmup_steps", "beta", "restart_every", "kmeans_batches", "seed", "save_every", "resume"):
        assert getattr(args, field) == getattr(d, field), field
    assert args.videos is None and args.threads is None and not hasattr(args, "dtype")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "vq", "--images", "i", "--out", "o", "--dtype", "fp16"])


def test_clips_of_two_latent_frames(data, tmp_path, capsys):
    """--clip-latent-frames 2: clips of 2 x temporal_downsample_factor frames (4 here) train the
    decoder on a second latent frame; a video shorter than a clip, or 0 latent frames, is an error."""
    import contextlib
    import io

    out = tmp_path / "two"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(run_argv(data, out, "--clip-latent-frames", "2", "--steps", "2", "--save-every", "0")) == 0
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["settings"]["clip_latent_frames"] == 2 and len(metrics(out)) == 2
    assert main(run_argv(data, tmp_path / "three", "--clip-latent-frames", "3")) != 0
    assert "4 frames, a clip needs 6" in capsys.readouterr().err
    assert main(run_argv(data, tmp_path / "zero", "--clip-latent-frames", "0")) != 0
    assert "--clip-latent-frames must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "three").exists() and not (tmp_path / "zero").exists()


def test_two_latent_frame_clip_codes_equal_encode_and_every_frame_counts():
    """A clip of two latent frames: the loss's codes are `encode`'s for the video, and its
    reconstruction term covers all 4 frames (changing the last frame changes the loss)."""
    model = tiny_model()
    loss_fn = VQLoss(model, beta=0.25)
    rng = np.random.default_rng(2)
    clip = rng.uniform(-1, 1, (1, 4, 3, 8, 8)).astype(np.float32)
    images = rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    loss, aux = loss_fn(ms.Tensor(images), ms.Tensor(clip))
    codes = aux[4].asnumpy()
    video_codes = model.encode(clip).asnumpy()
    assert video_codes.shape == (1, 2, 8, 8)
    np.testing.assert_array_equal(codes[-video_codes.size:], video_codes.reshape(-1))
    changed = clip.copy()
    changed[:, 3] = -changed[:, 3]
    assert float(loss_fn(ms.Tensor(images), ms.Tensor(changed))[0].asnumpy()) != float(loss.asnumpy())


# ---- the pieces -----------------------------------------------------------------------------

def tiny_model(seed=0):
    config = Emu3VQConfig(**TINY)
    model = Emu3VQModel(config, jit=False)
    from emu3_vq.weights import load_into

    load_into(model, initial_state(config, seed).items())
    rng = np.random.default_rng(seed)
    model.quantize.embedding.weight.set_data(ms.Tensor(rng.standard_normal((64, 4)).astype(np.float32)))
    return model


def test_straight_through_gradients_and_codes_equal_encode():
    """beta 0: the encoder's gradient can come only through the straight-through estimator;
    the codebook's is the codebook term's alone, 2 (e_k - z) / (M C) summed over the positions
    choosing k; the codes are `Emu3VQModel.encode`'s."""
    model = tiny_model()
    loss_fn = VQLoss(model, beta=0.0)
    params = list(model.trainable_params())
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    (loss, aux), grads = ms.value_and_grad(loss_fn, None, params, has_aux=True)(ms.Tensor(images), None)
    grad = {p.name: g.asnumpy() for p, g in zip(params, grads)}
    codes, latents = aux[4].asnumpy(), aux[5].asnumpy()

    assert np.abs(grad["encoder.conv_in.weight"]).max() > 0 and np.isfinite(grad["encoder.conv_in.weight"]).all()
    assert np.abs(grad["quant_conv.conv.weight"]).max() > 0
    e = model.quantize.embedding.weight.asnumpy()
    expected = np.zeros_like(e)
    np.add.at(expected, codes, 2 * (e[codes] - latents) / latents.size)
    np.testing.assert_allclose(grad["quantize.embedding.weight"], expected, rtol=1e-4, atol=1e-9)
    assert len(np.unique(codes)) > 1  # several codes chosen: rows of the gradient differ

    encoded = model.encode(images).asnumpy()
    np.testing.assert_array_equal(codes, encoded.reshape(-1))
    assert float(aux[2].asnumpy()) == pytest.approx(((latents - e[codes]) ** 2).mean(), rel=1e-5)


def test_kmeans():
    rng = np.random.default_rng(0)
    means = np.array([[0, 0, 0, 0], [10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 10, 10]], np.float64)
    points = np.concatenate([m + rng.standard_normal((60, 4)) * 0.3 for m in means])
    centres = kmeans(points, 4, seed=5)
    assert centres.shape == (4, 4) and centres.dtype == np.float32
    nearest = np.abs(centres[:, None] - means[None]).sum(-1).argmin(1)
    assert sorted(nearest) == [0, 1, 2, 3]  # one centre a cluster
    np.testing.assert_allclose(centres, means[nearest], atol=0.15)
    np.testing.assert_array_equal(kmeans(points, 4, seed=5), centres)  # a function of the seed

    few = rng.standard_normal((5, 4))
    c = kmeans(few, 8, seed=0)
    assert len(np.unique(c, axis=0)) == 8
    assert all(np.abs(c - p).sum(1).min() < 1e-6 for p in few.astype(np.float32))  # each point a centroid

    repeated = np.repeat(np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0]]), 50, axis=0)  # flat colours
    for k in (2, 3, 7):
        assert len(np.unique(kmeans(repeated, k, seed=1), axis=0)) == k
    many = rng.standard_normal((300, 4))
    assert len(np.unique(kmeans(many, 32, seed=2), axis=0)) == 32


def test_dead_code_restart_moves_unused_codes_onto_latents():
    model_config = Emu3VQConfig(**TINY)
    trainer = VQTrainer(model_config, initial_state(model_config, 0),
                        VQTrainConfig(images="i", out="o", jit=False))
    before = np.arange(256, dtype=np.float32).reshape(64, 4)
    trainer.set_codebook(before)
    assert trainer.restart_dead(np.random.default_rng(0)) == 0  # no step yet: nothing to restart onto
    latents = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32) + 100
    trainer._last_latents = ms.Tensor(latents)
    used = np.array([0, 3, 7, 8])
    trainer.usage[used] = [5, 1, 2, 9]
    assert trainer.restart_dead(np.random.default_rng(0)) == 60
    after = trainer.codebook.asnumpy()
    np.testing.assert_array_equal(after[used], before[used])
    dead = np.setdiff1d(np.arange(64), used)
    gap = np.abs(after[dead][:, None] - latents[None]).max(-1).min(1)
    assert (gap < 0.01).all()  # each onto a latent (plus 1e-3 noise)
    assert (trainer.usage == 0).all()


def test_codebook_moving_averages():
    """The codes follow the mean of their latents; a code not chosen keeps its place (the
    averages start at the loaded codebook, as for `--init`); a restarted code starts afresh."""
    import mindspore as ms

    model_config = Emu3VQConfig(**TINY)
    state = initial_state(model_config, 0)
    state["quantize.embedding.weight"] = np.arange(256, dtype=np.float32).reshape(64, 4)
    trainer = VQTrainer(model_config, state, VQTrainConfig(images="i", out="o", jit=False))
    np.testing.assert_array_equal(trainer.ema.sums.asnumpy(), state["quantize.embedding.weight"])
    latents = np.full((6, 4), 2.0, np.float32)
    codes = np.zeros(6, np.int32)  # every position chose code 0
    trainer.ema(ms.Tensor(codes), ms.Tensor(latents))
    after = trainer.codebook.asnumpy()
    np.testing.assert_allclose(after[1:], state["quantize.embedding.weight"][1:], rtol=1e-4)  # unchosen: kept
    decay = trainer.ema.decay
    count = decay * 1 + (1 - decay) * 6
    expected = (decay * state["quantize.embedding.weight"][0] + (1 - decay) * 12.0) / count
    np.testing.assert_allclose(after[0], expected, rtol=1e-3)  # moved towards the mean latent (2.0)
    assert np.abs(after[0] - 2.0).sum() < np.abs(state["quantize.embedding.weight"][0] - 2.0).sum()
    # the gradient never reaches the codebook: it is not a parameter of the optimiser
    assert all(p is not trainer.codebook for p in trainer.optimizer.params)


def test_batches_are_a_function_of_seed_and_step():
    images = flat_pixels(COLOURS)
    videos = [np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)]
    config = VQTrainConfig(images="i", out="o", batch_size=3, clip_batch_size=2, seed=7)
    a, ca = step_batch(images, videos, config, 11, 4)
    b, cb = step_batch(images, videos, config, 11, 4)
    assert np.array_equal(a, b) and np.array_equal(ca, cb) and ca.shape == (2, 4, 3, 8, 8)
    c, _ = step_batch(images, videos, config, 12, 4)
    k, _ = step_batch(images, videos, config, 11, 4, stream=1)
    assert a.shape == (3, 3, 8, 8) and not (np.array_equal(a, c) and np.array_equal(a, k))
