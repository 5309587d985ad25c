"""Emu3Pipeline: the plain functions' results for the same seed, the checkpoint's
generation_config.json defaults, seeds drawn and reported, configs read before any weights,
hub repo ids passed through to the loaders. Tiny checkpoints (random weights, conftest)."""

import json
from pathlib import Path

import numpy as np
import pytest
from emu3_decoding.image import NEGATIVE_PROMPT, generate_image
from emu3_decoding.pipeline import Emu3Pipeline, read_generation_config
from emu3_decoding.sampling import Sampling
from emu3_decoding.video import continue_video
from emu3_decoding.vqa import answer
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from PIL import Image

AREA = 64 * 64  # 8x8 tokens with the tiny vision tokenizer: 75 positions


def pixels(image) -> np.ndarray:
    return np.asarray(image)


def picture(seed=0, size=32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture
def lm_with(checkpoints, tmp_path):
    """A copy of the LM directory with the given generation_config.json (weights linked, not copied)."""
    def make(generation: dict | str):
        lm = tmp_path / "lm"
        lm.mkdir()
        for f in Path(checkpoints[0]).iterdir():
            (lm / f.name).symlink_to(f)
        text = generation if isinstance(generation, str) else json.dumps(generation)
        (lm / "generation_config.json").write_text(text)
        return str(lm)

    return make


# ---- the same results as the functions ------------------------------------------------------------

def test_images_equal_generate_image_with_their_seeds(pipe):
    """Image j of a call with seed s is what generate_image makes for its prompt alone with s + j:
    the images of one prompt are one batch, each row drawing from its own seed."""
    out = pipe("a cat", image_area=AREA, num_images=2, seed=5, top_k=16)
    assert out.seeds == [5, 6] and out.prompts == ["a cat"] * 2
    assert out.settings.cfg_scale == 3.0 and out.settings.negative_prompt == NEGATIVE_PROMPT
    for image, seed in zip(out.images, out.seeds):
        alone = generate_image(pipe.model, pipe.processor, "a cat", image_area=AREA, seed=seed, top_k=16)[0]
        np.testing.assert_array_equal(pixels(image), pixels(alone))
    assert not np.array_equal(pixels(out.images[0]), pixels(out.images[1]))  # their seeds differ
    # a list of prompts: numbered in order, num_images each
    two = pipe(["a dog", "a cat"], image_area=AREA, seed=5, top_k=16)
    assert two.seeds == [5, 6] and two.prompts == ["a dog", "a cat"]
    np.testing.assert_array_equal(pixels(two.images[1]), pixels(out.images[1]))  # "a cat", seed 6

def test_a_drawn_seed_is_reported_and_reproduces(pipe):
    out = pipe("a house", image_area=AREA, cfg_scale=1.0)
    (seed,) = out.seeds
    assert isinstance(seed, int) and 0 <= seed < 2 ** 31
    again = pipe("a house", image_area=AREA, cfg_scale=1.0, seed=seed)
    np.testing.assert_array_equal(pixels(out.images[0]), pixels(again.images[0]))
    meta = out.metadata(0)
    assert meta["seed"] == str(seed) and meta["prompt"] == "a house" and meta["cfg_scale"] == "1.0"
    assert meta["model"] == pipe.source["model"] and "emu3-decoding" in meta["versions"]


def test_answers_equal_answer(pipe):
    image = picture(1)
    greedy = pipe.answer(image, "what is this?", max_new_tokens=8)
    assert greedy.seed is None and greedy.settings.temperature == 0  # greedy: no randomness
    assert greedy.text == answer(pipe.model, pipe.processor, image, "what is this?", 8)
    sampled = pipe.answer(image, "what is this?", max_new_tokens=8, temperature=0.8, top_k=50, seed=3)
    assert sampled.text == answer(pipe.model, pipe.processor, image, "what is this?", 8,
                                  sampling=Sampling(0.8, 50), seed=3)
    drawn = pipe.answer(image, "what is this?", max_new_tokens=8, temperature=1.0)
    assert drawn.seed is not None
    assert pipe.answer(image, "what is this?", max_new_tokens=8, temperature=1.0, seed=drawn.seed).text == drawn.text


def test_video_equals_continue_video(pipe):
    clip = [picture(i, 48) for i in range(4)]
    out = pipe.continue_video(clip, 4, "waves", seed=1, top_k=16)
    assert out.seed == 1 and len(out.frames) == 4 and out.frames[0].size == (48, 48)
    ref = continue_video(pipe.model, pipe.processor, clip, 4, "waves", seed=1, top_k=16)
    for a, b in zip(out.frames, ref):
        np.testing.assert_array_equal(pixels(a), pixels(b))
    assert out.metadata()["n_frames"] == "4" and out.metadata()["prompt"] == "waves"


# ---- defaults from generation_config.json ---------------------------------------------------------

def test_generation_config_sets_the_defaults(checkpoints, lm_with, monkeypatch):
    """Only the keys the file holds; arguments win; nothing of the weights is read."""
    monkeypatch.setattr(Emu3ForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: pytest.fail("weights loaded")))
    lm = lm_with({"guidance_scale": 1.5, "top_k": 7, "max_new_tokens": 12, "do_sample": True,
                  "temperature": 0.5, "bos_token_id": 1, "transformers_version": "4.44.0"})
    pipe = Emu3Pipeline.from_pretrained(lm, checkpoints[1], lazy=True)
    assert not pipe.loaded
    assert pipe.generation_config == {"guidance_scale": 1.5, "top_k": 7, "temperature": 0.5,
                                      "max_new_tokens": 12, "do_sample": True}
    _, s = pipe.check_image("a cat", image_area=AREA)
    assert (s.cfg_scale, s.top_k, s.temperature, s.top_p) == (1.5, 7, 0.5, 1.0)  # top_p: not in the file
    _, s = pipe.check_image("a cat", image_area=AREA, cfg_scale=3.0, top_k=9, temperature=1.0)
    assert (s.cfg_scale, s.top_k, s.temperature) == (3.0, 9, 1.0)
    a = pipe.check_answer()
    assert (a.max_new_tokens, a.temperature, a.top_k, a.top_p) == (12, 0.5, 7, 1.0)  # do_sample: sampled
    assert pipe.check_answer(4, temperature=0).temperature == 0  # greedy when asked
    v = pipe.check_video((64, 64), 4, 4)
    assert (v.cfg_scale, v.top_k, v.temperature) == (1.0, 7, 0.5)  # guidance_scale is for images


def test_generation_config_sets_the_prompt_words(checkpoints, lm_with, tmp_path):
    """negative_prompt and positive_prompt_suffix: a model trained on other captions drops
    Emu3-Gen's quality words; arguments still win; a non-string is refused naming the key."""
    pipe = Emu3Pipeline.from_pretrained(lm_with({"negative_prompt": "", "positive_prompt_suffix": ""}),
                                        checkpoints[1], lazy=True)
    _, s = pipe.check_image("a cat", image_area=AREA)
    assert (s.negative_prompt, s.positive_suffix) == ("", "")
    _, s = pipe.check_image("a cat", image_area=AREA, negative_prompt="blurry", positive_suffix=" sharp")
    assert (s.negative_prompt, s.positive_suffix) == ("blurry", " sharp")
    plain = Emu3Pipeline.from_pretrained(*checkpoints, lazy=True)
    _, s = plain.check_image("a cat", image_area=AREA)
    assert s.negative_prompt == NEGATIVE_PROMPT and "best quality" in s.positive_suffix
    bad = tmp_path / "bad.json"
    bad.write_text('{"negative_prompt": 3}')
    with pytest.raises(ValueError, match="negative_prompt must be a string, got 3"):
        read_generation_config(bad)


def test_without_generation_config_the_original_recipes(checkpoints, lm_with):
    pipe = Emu3Pipeline.from_pretrained(*checkpoints, lazy=True)
    assert pipe.generation_config == {}
    _, s = pipe.check_image("a cat", image_area=AREA)
    assert (s.cfg_scale, s.top_k, s.temperature, s.top_p) == (3.0, 2048, 1.0, 1.0)
    a = pipe.check_answer()
    assert (a.max_new_tokens, a.temperature) == (1024, 0.0)  # greedy
    with pytest.raises(ValueError, match="top_k and top_p apply when sampling"):
        pipe.check_answer(top_k=5)
    # do_sample false (or absent) keeps answers greedy; its sampling keys then apply when asked
    greedy = Emu3Pipeline.from_pretrained(lm_with({"do_sample": False, "top_p": 0.5}), checkpoints[1], lazy=True)
    assert greedy.check_answer().temperature == 0
    assert greedy.check_answer(temperature=0.7).top_p == 0.5


def test_generation_config_values_are_checked(checkpoints, lm_with, tmp_path):
    lm = lm_with({"top_k": -1})
    with pytest.raises(ValueError, match=r"generation_config.json: top_k must be an integer >= 0, got -1"):
        Emu3Pipeline.from_pretrained(lm, checkpoints[1], lazy=True)
    bad = tmp_path / "g.json"
    bad.write_text('{"guidance_scale": NaN}')
    with pytest.raises(ValueError, match="guidance_scale must be a finite number, got nan"):
        read_generation_config(bad)


# ---- configs first, then the weights --------------------------------------------------------------

def test_requests_are_checked_before_any_weights(checkpoints, monkeypatch):
    loaded = []
    monkeypatch.setattr(Emu3ForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: loaded.append(a)))
    pipe = Emu3Pipeline.from_pretrained(*checkpoints, lazy=True)
    with pytest.raises(ValueError, match="exceeds the model's context of 1024 positions"):
        pipe.check_image("a cat", image_area=10 ** 12)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        pipe("a cat", image_area=10 ** 12)  # the call checks before it loads
    with pytest.raises(ValueError, match="num_images must be a positive int"):
        pipe("a cat", num_images=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        pipe("a cat", image_area=AREA, seed=-1)
    with pytest.raises(ValueError, match="n_frames must be a positive multiple of 4"):
        pipe.check_video((64, 64), 4, 3)
    assert loaded == [] and not pipe.loaded


@pytest.mark.parametrize("kwargs, message", [
    ({"vq": "somewhere"}, "vq needs model"),
    ({"revision": "v1"}, "revision (--revision) applies to a hub repo id model"),
    ({"dtype": "fp64"}, "unknown dtype 'fp64'"),
])
def test_default_model_arguments(kwargs, message):
    with pytest.raises(ValueError) as err:
        Emu3Pipeline.from_pretrained(lazy=True, **kwargs)
    assert message in str(err.value)


def test_checkpoint_names(checkpoints, tmp_path):
    lm, vq = checkpoints
    with pytest.raises(ValueError, match="holds no vision tokenizer .* vq=... / --vq"):
        Emu3Pipeline.from_pretrained(lm, lazy=True)
    with pytest.raises(ValueError, match="is a local directory"):
        Emu3Pipeline.from_pretrained(lm, vq, revision="main", lazy=True)
    with pytest.raises(FileNotFoundError, match="is not a vision tokenizer directory \\(no config.json\\)"):
        Emu3Pipeline.from_pretrained(lm, str(tmp_path), lazy=True)
    with pytest.raises(FileNotFoundError, match="nor a hub repo id"):
        Emu3Pipeline.from_pretrained(str(tmp_path / "no" / "such" / "dir"), vq, lazy=True)
    # the default model (emu3-shapes), named by nothing
    from emu3_vq.defaults import model_dirs

    default = Emu3Pipeline.from_pretrained(lazy=True)
    assert (default.source["model"], default.source["vq"]) == ("default", "default")
    assert default.config.vocab_size == Emu3LMConfig.from_pretrained(model_dirs()["lm"]).vocab_size


@pytest.mark.slow  # ~45 s; repo ids from the cache by default in emu3-lm and emu3-train
def test_repo_ids_from_a_local_hub_cache(checkpoints, pipe, hub_cache, tmp_path, monkeypatch, capsys):
    """The pipeline and `emu3 generate` by repo id, offline from the Hugging Face cache: the same
    image as from the local directories; an absent repo is one line saying how to download."""
    import huggingface_hub.constants
    from emu3_vq import cli

    cache, publish = hub_cache
    publish("org/lm", Path(checkpoints[0]))
    publish("org/vq", Path(checkpoints[1]))
    by_id = Emu3Pipeline.from_pretrained("org/lm", "org/vq", cache_dir=cache, local_files_only=True)
    assert by_id.source["model"] == "org/lm"
    want = pipe("a red circle", seed=3).images[0]
    assert np.array_equal(np.asarray(by_id("a red circle", seed=3).images[0]), np.asarray(want))

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    out = tmp_path / "image.png"
    code = cli.main(["generate", "image", "a red circle", "--model", "org/lm", "--vq", "org/vq", "--seed", "3",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want))
    code = cli.main(["generate", "image", "x", "--model", "org/absent", "--vq", "org/vq", "--out",
                     str(tmp_path / "b.png")])
    assert code == 2 and "hf download org/absent" in capsys.readouterr().err


def test_a_pipeline_from_loaded_parts(pipe):
    again = Emu3Pipeline(pipe.model, pipe.processor, {"top_k": 3})
    assert again.loaded and again.check_image("x", image_area=AREA)[1].top_k == 3
    with pytest.raises(TypeError, match="needs a model and a processor with its VQ model"):
        Emu3Pipeline(None, pipe.processor)

