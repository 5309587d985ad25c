"""Mixtures of data sets: `--data PATH[,task=T][,weight=W]` parsing and task resolution, the
sampling rule (`MixtureOrder`), and `emu3 train sft` over text-to-image + VQA + video on the
tiny model: the loss falls, the mixture is recorded, a killed and resumed run is bit-equal."""

from __future__ import annotations

import json
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_lm.tiny_assets import build_tokenizer
from emu3_train import trainer
from emu3_train.dataset import feature_dir, list_path, write_list, write_sample
from emu3_train.trainer import DataSpec, MixtureOrder, SftConfig, parse_data_spec, sample_indices
from emu3_vq.weights import iter_checkpoint

# ---- specs --------------------------------------------------------------------------------------


def test_parse_data_spec():
    assert parse_data_spec("d/list/train.json") == DataSpec("d/list/train.json", None, 1.0)
    assert parse_data_spec("d/train.json,task=vqa") == DataSpec("d/train.json", "vqa", 1.0)
    assert parse_data_spec("d/train.json,weight=2.5,task=video") == DataSpec("d/train.json", "video", 2.5)
    assert parse_data_spec("a,b/train.json,weight=3") == DataSpec("a,b/train.json", None, 3.0)  # commas in paths
    assert parse_data_spec("d.json,loss_weight=8,task=vqa") == DataSpec("d.json", "vqa", 1.0, 8.0)


@pytest.mark.parametrize("spec, message", [
    ("d.json,task=caption", "task must be one of t2i, vqa, video, got 'caption'"),
    ("d.json,weight=0", "weight must be a positive number, got '0'"),
    ("d.json,weight=-1", "weight must be a positive number"),
    ("d.json,weight=inf", "weight must be a positive number"),
    ("d.json,weight=heavy", "weight must be a positive number, got 'heavy'"),
    ("d.json,loss_weight=0", "loss_weight must be a positive number, got '0'"),
    ("d.json,loss_weight=nan", "loss_weight must be a positive number"),
    ("d.json,colour=red", "unknown option 'colour'"),
    ("d.json,task=t2i,task=vqa", "'task' given twice"),
    (",task=t2i", "no path"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_data_spec(spec)
    assert spec in str(info.value)


def _list(root, task=None, n=1):
    feature_dir(root).mkdir(parents=True, exist_ok=True)
    return write_list(list_path(root), feature_dir(root).resolve(), [f"{i}.ckpt" for i in range(n)], task=task)


def test_task_resolution(tmp_path):
    plain, vqa = _list(tmp_path / "plain"), _list(tmp_path / "vqa", task="vqa")

    def resolve(*data, task=None):
        return [(Path(d.path).name, d.task, d.weight) for d in
                SftConfig(data=list(data), model="m", out=str(tmp_path / "o"), steps=1, batch_size=1,
                          max_length=8, task=task).mixture()]

    # the spec's task, else the list's, else --task
    assert resolve(f"{plain},task=video", str(vqa)) == [("train.json", "video", 1.0), ("train.json", "vqa", 1.0)]
    assert resolve(str(plain), f"{vqa},weight=3", task="t2i") == [("train.json", "t2i", 1.0),
                                                                   ("train.json", "vqa", 3.0)]
    with pytest.raises(ValueError, match=rf"--data {plain}: no task known .*,task=t2i\|vqa\|video .*--task"):
        resolve(str(plain), str(vqa))
    with pytest.raises(ValueError, match=r"task=t2i but the list file .* records task 'vqa'"):
        resolve(f"{vqa},task=t2i")
    with pytest.raises(ValueError, match="--data .*nowhere.json: no such file"):
        resolve(str(tmp_path / "nowhere.json"), task="t2i")
    with pytest.raises(ValueError, match="--data"):
        resolve(f"{vqa},weight=0")


# ---- the sampling rule --------------------------------------------------------------------------------

def test_weights_set_the_proportions():
    order = MixtureOrder(seed=5, sizes=[7, 3], weights=[3.0, 1.0])
    picks = order.picks(0, 4000)
    share = np.mean([k == 0 for k, _, _ in picks])
    assert abs(share - 0.75) < 0.05, share  # sd 0.007
    three = MixtureOrder(seed=1, sizes=[2, 3, 4], weights=[1, 2, 5]).picks(0, 4000)
    shares = np.bincount([k for k, _, _ in three], minlength=3) / 4000
    assert np.all(np.abs(shares - np.array([1, 2, 5]) / 8) < 0.05), shares
    for bad in ([1.0], [1.0, 0.0], [1.0, float("inf")]):
        with pytest.raises(ValueError, match="mixture weights must be positive, one per data set"):
            MixtureOrder(seed=5, sizes=[7, 3], weights=bad)


def test_each_data_set_is_visited_in_its_own_epochs():
    order = MixtureOrder(seed=2, sizes=[5, 3], weights=[1.0, 1.0])
    picks = order.picks(0, 400)
    for k, size in enumerate(order.sizes):
        mine = [(i, e) for kk, i, e in picks if kk == k]
        for n, (i, e) in enumerate(mine):
            assert e == n // size
        full = len(mine) // size
        for epoch in range(full):  # every complete epoch holds each sample once
            assert sorted(i for i, e in mine if e == epoch) == list(range(size))


def test_any_position_without_state():
    """A fresh order (a resumed run) gives the same picks for any window, across chunk edges."""
    whole = MixtureOrder(seed=3, sizes=[4, 6, 5], weights=[1, 1, 2]).picks(0, 9000)
    for start, count in [(0, 10), (4090, 13), (8192 - 3, 7), (8999, 1)]:
        assert MixtureOrder(seed=3, sizes=[4, 6, 5], weights=[1, 1, 2]).picks(start, count) == \
            whole[start:start + count]
    other = MixtureOrder(seed=4, sizes=[4, 6, 5], weights=[1, 1, 2]).picks(0, 100)
    assert other != whole[:100]


def test_one_data_set_keeps_the_single_order():
    order = MixtureOrder(seed=7, sizes=[6])
    assert [(i, e) for _, i, e in order.picks(3, 20)] == sample_indices(7, 3, 20, 6)
    with pytest.raises(ValueError, match="weights"):
        MixtureOrder(seed=0, sizes=[2, 2], weights=[1, 0])


# ---- sft over a mixture ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The tiny LM (random weights, no dropout) and three data sets: text-to-image (reference
    format, no task recorded), VQA and video (tasks recorded)."""
    root = tmp_path_factory.mktemp("mix")
    config = Emu3LMConfig.from_name("tiny", attention_dropout=0.0)
    ms.set_seed(0)
    Emu3ForCausalLM(config, dtype=ms.float32).save_pretrained(root / "model")
    build_tokenizer(root / "model", "tiktoken", num_visual_tokens=config.num_visual_tokens)
    rng = np.random.default_rng(0)

    def data(name, samples, task):
        d = root / name
        files = []
        for i, (shape, text, response) in enumerate(samples):
            codes = rng.integers(0, config.num_visual_tokens, shape)
            write_sample(feature_dir(d) / f"{i}.ckpt", f"{name}{i}", codes, text, response)
            files.append(f"{i}.ckpt")
        return write_list(list_path(d), feature_dir(d).resolve(), files, task=task)

    return {
        "model": root / "model",
        "t2i": data("t2i", [((3, 4), "a red circle", None), ((4, 4), "a blue square", None),
                            ((3, 3), "a cat", None)], None),
        "vqa": data("vqa", [((2, 3), "What is it?", "a cat"), ((2, 2), "Colour?", "red")], "vqa"),
        "video": data("video", [((2, 2, 3), "a ball rolls", None), ((3, 2, 2), "waves", None)], "video"),
    }


def _config(assets, out, **kw):
    base = dict(data=[f"{assets['t2i']},task=t2i", str(assets["vqa"]), f"{assets['video']},weight=2"],
                model=str(assets["model"]), out=str(out), steps=6, batch_size=4, max_length=64, lr=3e-3,
                min_lr=1e-3, warmup_steps=1, clip_grad_norm=1.0, null_prompt_prob=0.1, seed=1, save_every=3)
    base.update(kw)
    return SftConfig(**base)


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(directory):
    return {k: np.array(v) for k, v in iter_checkpoint(directory)}


class Interrupt(Exception):
    pass


def test_sft_on_a_mixture_learns_and_resumes_bit_equal(assets, tmp_path, monkeypatch):
    whole = _config(assets, tmp_path / "whole")
    trainer.train(whole, progress=False)
    m = _metrics(whole.out)
    losses = [r["loss"] for r in m]
    print("\nmixture losses:", " ".join(f"{x:.3f}" for x in losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.3
    # rows of every task shared the batches; per-task supervised tokens add up to the step's
    seen = set()
    for r in m:
        assert sum(r["task_tokens"].values()) == r["tokens"]
        seen |= set(r["task_tokens"])
    assert seen == {"t2i", "vqa", "video"}
    state = json.loads((Path(whole.out) / "final" / "trainer_state.json").read_text())
    assert state["mixture"] == [
        {"path": str(assets["t2i"].resolve()), "task": "t2i", "weight": 1.0, "loss_weight": 1.0},
        {"path": str(assets["vqa"].resolve()), "task": "vqa", "weight": 1.0, "loss_weight": 1.0},
        {"path": str(assets["video"].resolve()), "task": "video", "weight": 2.0, "loss_weight": 1.0}]

    cut = _config(assets, tmp_path / "cut")
    from emu3_train import engine as engine_module

    real_step = engine_module.TrainEngine.step
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # killed during step 5, after checkpoint-3
            raise Interrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(engine_module.TrainEngine, "step", dying_step)
    with pytest.raises(Interrupt):
        trainer.train(cut, progress=False)
    monkeypatch.setattr(engine_module.TrainEngine, "step", real_step)
    # a resume with another mixture is refused, naming --data
    other = _config(assets, tmp_path / "cut", resume=True,
                    data=[f"{assets['t2i']},task=t2i", str(assets["vqa"]), str(assets["video"])])
    with pytest.raises(ValueError, match="--resume: --data .*weight=1 but the run .* used .*weight=2"):
        trainer.train(other, progress=False)
    cut.resume = True
    assert trainer.train(cut, progress=False)["resumed_from"] == 3
    assert _metrics(cut.out) == [dict(a, seconds=b["seconds"]) for a, b in zip(m, _metrics(cut.out))]
    a, b = _weights(Path(whole.out) / "final"), _weights(Path(cut.out) / "final")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_loss_weight_reaches_the_batches_and_the_record(assets, tmp_path):
    """,loss_weight=X: every row of that data set carries X at each position, the micro-batches
    keep them, the step's loss is the weighted mean (tests/test_engine.py checks it against torch),
    and trainer_state.json records it; all 1 adds nothing to the batches."""
    config = _config(assets, tmp_path / "w", steps=2, save_every=0,
                     data=[f"{assets['t2i']},task=t2i", f"{assets['vqa']},loss_weight=4"])
    specs = config.mixture()
    from emu3_lm.tokenizer import Emu3Tokenizer
    from emu3_train.sequences import SftDataset

    tok = Emu3Tokenizer.from_pretrained(str(assets["model"]))
    datasets = [SftDataset(d.path, tok, d.task, 64, seed=1) for d in specs]
    mixture = trainer.SftMixture(datasets, seed=1, loss_weights=[d.loss_weight for d in specs])
    (micro,) = trainer.rank_micro_batches(mixture, config, 0, 1, 0)
    tasks = [datasets[k].task for k, _, _ in mixture.picks(0, config.batch_size)]
    assert micro["loss_weights"].shape == micro["labels"].shape
    assert [float(w[0]) for w in micro["loss_weights"]] == [4.0 if t == "vqa" else 1.0 for t in tasks]
    assert "loss_weights" not in trainer.SftMixture(datasets, seed=1, loss_weights=[1, 1]).row((0, 0, 0))
    with pytest.raises(ValueError, match="loss_weights must be positive, one per data set"):
        trainer.SftMixture(datasets, seed=1, loss_weights=[1.0, -2.0])
    trainer.train(config, progress=False)
    state = json.loads((Path(config.out) / "final" / "trainer_state.json").read_text())
    assert [d["loss_weight"] for d in state["mixture"]] == [1.0, 4.0]


def test_sft_command_takes_several_data(assets, tmp_path):
    """--data repeated, --task optional: parsed into the config, and given again to msrun's workers."""
    from emu3_train.commands import _sft_argv
    from emu3_vq.cli import build_parser

    specs = [f"{assets['t2i']},task=t2i", f"{assets['vqa']},weight=0.5"]
    argv = ["train", "sft", "--data", specs[0], "--data", specs[1], "--model", str(assets["model"]),
            "--out", str(tmp_path / "o"), "--steps", "1", "--batch-size", "2", "--max-length", "64"]
    args = build_parser().parse_args(argv)
    assert args.data == specs and args.task is None
    config = _config(assets, tmp_path / "o", data=args.data, steps=1, batch_size=2)
    config.validate()
    again = build_parser().parse_args(_sft_argv(config))
    assert again.data == specs and again.task is None
    assert [d.weight for d in config.mixture()] == [1.0, 0.5]
