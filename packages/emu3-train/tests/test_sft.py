"""`emu3 train sft` (trainer.train) end to end on a tiny model, against the oracle.

Three steps of our trainer equal transformers' Emu3ForCausalLM trained by torch.optim.AdamW +
clip_grad_norm_ + transformers' cosine_with_min_lr schedule on the same batches: the losses and
gradient norms of metrics.jsonl and the final weights. A run killed after a checkpoint and
resumed ends bit-equal to an uninterrupted one. The checkpoints load with
Emu3ForCausalLM.from_pretrained. Bad options fail before any training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_lm.tiny_assets import build_tokenizer
from emu3_train import trainer
from emu3_train.trainer import SftConfig
from emu3_vq.weights import iter_checkpoint

CAPTIONS = ["a red circle", "a blue square on a white background", "a green triangle", "a cat on a mat",
            "the quick brown fox", "a shiba inu running"]


def write_reference_sample(path: Path, name: str, codes: np.ndarray, text: str) -> None:
    """One sample file exactly as the reference's prepare scripts write it."""
    ms.save_checkpoint([], str(path), append_dict={"name": name, "images": ms.Tensor(codes, ms.int32),
                                                     "texts": text})


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny LM checkpoint (random weights, no dropout) with its tokenizer, and a t2i data set."""
    root = tmp_path_factory.mktemp("sft")
    config = Emu3LMConfig.from_name("tiny", attention_dropout=0.0)
    model_dir = root / "model"
    ms.set_seed(0)
    Emu3ForCausalLM(config, dtype=ms.float32).save_pretrained(model_dir)
    build_tokenizer(model_dir, "tiktoken", num_visual_tokens=config.num_visual_tokens)
    feature = root / "data" / "feature"
    feature.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i, text in enumerate(CAPTIONS):
        h, w = (3, 4) if i % 2 else (4, 4)
        write_reference_sample(feature / f"{i:03d}.ckpt", f"{i:03d}",
                               rng.integers(0, config.num_visual_tokens, (h, w)).astype(np.int32), text)
        names.append(f"{i:03d}.ckpt")
    (root / "data" / "list").mkdir()
    data = root / "data" / "list" / "train.json"
    data.write_text(json.dumps({"prefix": str(feature), "path_list": names}))
    return {"root": root, "model": model_dir, "data": data}


def sft_config(assets, out, **kw) -> SftConfig:
    base = dict(data=str(assets["data"]), model=str(assets["model"]), out=str(out), task="t2i",
                steps=3, batch_size=2, max_length=40, lr=2e-3, min_lr=2e-4, warmup_steps=1,
                clip_grad_norm=1.0, weight_decay=0.1, null_prompt_prob=0.0, seed=1)
    base.update(kw)
    return SftConfig(**base)


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def final_weights(directory) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in iter_checkpoint(directory)}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_three_steps_equal_transformers_and_torch_adamw(assets, tmp_path, oracle_text_config):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from emu3_lm.tokenizer import Emu3Tokenizer
    from emu3_train.sequences import SftDataset

    config = sft_config(assets, tmp_path / "out")
    summary = trainer.train(config, progress=False)
    assert summary["steps"] == 3
    ours = metrics(config.out)
    assert [m["step"] for m in ours] == [1, 2, 3]

    # the oracle: transformers' model on the same weights and batches, torch's optimiser
    hf = transformers.Emu3ForCausalLM(oracle_text_config(Emu3LMConfig.from_name("tiny", attention_dropout=0.0)))
    start = final_weights(assets["model"])
    hf.load_state_dict({k: torch.tensor(v) for k, v in start.items()})
    hf.train()
    decay = [n for n in transformers.Trainer.get_decay_parameter_names(None, hf)]
    params = dict(hf.named_parameters())
    opt = torch.optim.AdamW([{"params": [params[n] for n in params if n in decay], "weight_decay": 0.1},
                             {"params": [params[n] for n in params if n not in decay], "weight_decay": 0.0}],
                            lr=config.lr, betas=(0.9, 0.95), eps=1e-6, foreach=False)
    sched = transformers.get_cosine_with_min_lr_schedule_with_warmup(opt, config.warmup_steps, config.steps,
                                                                      min_lr=config.min_lr)
    dataset = SftDataset(config.data, Emu3Tokenizer.from_pretrained(config.model), "t2i", config.max_length,
                         null_prompt_prob=0.0, seed=config.seed)
    theirs = []
    for step in range(config.steps):
        (batch,) = trainer.rank_micro_batches(dataset, config, step, 1, 0)
        opt.zero_grad()
        out = hf(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                 attention_mask=torch.tensor(batch["attention_mask"]),
                 labels=torch.tensor(batch["labels"], dtype=torch.long))
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), config.clip_grad_norm)
        theirs.append({"loss": float(out.loss), "grad_norm": float(norm), "lr": sched.get_last_lr()[0]})
        opt.step()
        sched.step()

    for o, t in zip(ours, theirs):
        print(f"\nstep {o['step']}: loss {o['loss']:.7f} vs {t['loss']:.7f}, "
              f"norm {o['grad_norm']:.6f} vs {t['grad_norm']:.6f}, lr {o['lr']:.3e} vs {t['lr']:.3e}")
        assert abs(o["loss"] - t["loss"]) <= 1e-5 * abs(t["loss"])
        assert abs(o["grad_norm"] - t["grad_norm"]) <= 1e-4 * t["grad_norm"]
        assert o["lr"] == pytest.approx(t["lr"], rel=1e-12)
    assert ours[0]["grad_norm"] > config.clip_grad_norm  # clipping was active
    trained = final_weights(Path(config.out) / "final")
    expected = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    assert trained.keys() == expected.keys()
    errors = {k: rel(trained[k], expected[k]) for k in expected}
    worst = max(errors, key=errors.get)
    moved = max(rel(expected[k], start[k]) for k in expected)
    print(f"final weights: worst relative difference {errors[worst]:.2e} ({worst}); moved {moved:.2e}")
    assert errors[worst] <= 1e-4 and moved > 1e-3


def test_final_checkpoint_loads_and_holds_the_run(assets, tmp_path):
    config = sft_config(assets, tmp_path / "out", steps=2, save_every=1)
    trainer.train(config, progress=False)
    out = Path(config.out)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "final", "metrics.jsonl"]
    model = Emu3ForCausalLM.from_pretrained(out / "final")
    assert model.dtype == ms.float32
    for name in ("config.json", "model.safetensors", "emu3.tiktoken", "optimizer.safetensors",
                 "trainer_state.json"):
        assert (out / "final" / name).is_file(), name
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["config"]["lr"] == config.lr
    m = metrics(out)
    assert set(m[0]) >= {"step", "loss", "lr", "grad_norm", "tokens", "seconds"}
    # t2i labels are the visual tokens only: 4x4 or 3x4 codes per sample, two samples a step
    assert all(24 <= r["tokens"] <= 32 for r in m)


def test_generation_config_of_the_start_is_kept(assets, tmp_path):
    """The starting model's generation_config.json (its pipeline defaults) travels to every
    checkpoint unchanged; a start without one gives checkpoints without one."""
    import shutil

    start = tmp_path / "start"
    shutil.copytree(assets["model"], start)
    (start / "generation_config.json").write_text('{"guidance_scale": 2.0, "negative_prompt": ""}\n')
    config = sft_config(assets, tmp_path / "out", model=str(start), steps=2, save_every=1)
    trainer.train(config, progress=False)
    for name in ("checkpoint-1", "final"):
        kept = Path(config.out) / name / "generation_config.json"
        assert kept.read_bytes() == (start / "generation_config.json").read_bytes()
    plain = sft_config(assets, tmp_path / "plain", steps=1)
    trainer.train(plain, progress=False)
    assert not (Path(plain.out) / "final" / "generation_config.json").exists()


class Interrupt(Exception):
    pass


def test_killed_and_resumed_equals_uninterrupted(assets, tmp_path, monkeypatch):
    whole = sft_config(assets, tmp_path / "whole", steps=4, save_every=2)
    trainer.train(whole, progress=False)

    cut = sft_config(assets, tmp_path / "cut", steps=4, save_every=2)
    from emu3_train import engine as engine_module

    real_step = engine_module.TrainEngine.step
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # killed during step 4, after checkpoint-2 and step 3's metrics line
            raise Interrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(engine_module.TrainEngine, "step", dying_step)
    with pytest.raises(Interrupt):
        trainer.train(cut, progress=False)
    monkeypatch.setattr(engine_module.TrainEngine, "step", real_step)
    assert len(metrics(cut.out)) == 3 and not (Path(cut.out) / "final").exists()
    with pytest.raises(ValueError, match="--resume"):
        trainer.train(cut, progress=False)
    cut.resume = True
    summary = trainer.train(cut, progress=False)
    assert summary["resumed_from"] == 2
    assert metrics(cut.out) == [dict(m, seconds=n["seconds"]) for m, n in zip(metrics(whole.out),
                                                                                metrics(cut.out))]
    a, b = final_weights(Path(whole.out) / "final"), final_weights(Path(cut.out) / "final")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # a resume with other numbers is refused, naming the option
    other = sft_config(assets, tmp_path / "cut", steps=4, save_every=2, lr=1e-3, resume=True)
    with pytest.raises(ValueError, match="--lr"):
        trainer.train(other, progress=False)


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=0), "--batch-size"),
    (dict(lr=float("nan")), "--lr"),
    (dict(min_lr=1.0), "--min-lr"),
    (dict(task="caption"), "--task"),
    (dict(dtype="int8"), "--dtype"),
    (dict(zero_stage=4), "--zero-stage"),
    (dict(max_length=41, sequence_parallel=2), "--max-length"),
    (dict(null_prompt_prob=1.5), "--null-prompt-prob"),
    (dict(data="/nonexistent/train.json"), "--data"),
    (dict(batch_size=3, accumulate=2), "--batch-size"),
    (dict(freeze_layers=9), "--freeze-layers"),
])
def test_bad_options_fail_before_training(assets, tmp_path, change, message):
    config = sft_config(assets, tmp_path / "out", **change)
    with pytest.raises(ValueError, match=message):
        trainer.train(config, progress=False)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_frozen_layers_do_not_move(assets, tmp_path):
    config = sft_config(assets, tmp_path / "out", steps=2, freeze_layers=1)
    trainer.train(config, progress=False)
    before, after = final_weights(assets["model"]), final_weights(Path(config.out) / "final")
    for k in before:
        same = np.array_equal(before[k], after[k])
        assert same == k.startswith("model.layers.0."), k


def test_sft_command(assets, tmp_path):
    from emu3_vq.cli import main

    out = tmp_path / "cli"
    argv = ["train", "sft", "--data", str(assets["data"]), "--model", str(assets["model"]), "--task", "t2i",
            "--out", str(out), "--steps", "1", "--batch-size", "2", "--max-length", "40", "--lr", "1e-3"]
    assert main(argv) == 0
    assert (out / "final" / "model.safetensors").is_file() and len(metrics(out)) == 1
    assert main(argv) == 2  # the directory holds a run now: refused without --resume
    shutil.rmtree(out)
    assert main([*argv[:-4], "--max-length", "8", "--lr", "1e-3"]) == 2  # a sample does not fit
    assert not (out / "metrics.jsonl").exists()


def test_sft_command_on_two_processes_equals_one(assets, tmp_path):
    """`emu3 train sft --nproc 2 --zero-stage 3` (msrun, 2 CPU workers, data parallel): the same
    losses, checkpoints and final weights as one process on the same global batches."""
    from emu3_vq.cli import main

    def argv(out, *extra):
        return ["train", "sft", "--data", str(assets["data"]), "--model", str(assets["model"]), "--task",
                "t2i", "--out", str(out), "--steps", "2", "--batch-size", "4", "--max-length", "40",
                "--lr", "2e-3", "--warmup-steps", "0", "--clip-grad-norm", "1.0", "--null-prompt-prob", "0",
                "--save-every", "1", *extra]

    assert main(argv(tmp_path / "one")) == 0
    assert main(argv(tmp_path / "two", "--nproc", "2", "--device-id", "0")) == 2  # one chip, two processes
    assert not (tmp_path / "two").exists()
    # --device and --threads reach the workers (msrun runs the same command)
    assert main(argv(tmp_path / "two", "--nproc", "2", "--zero-stage", "3", "--device", "cpu", "--threads", "1")) == 0
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["tokens"] for m in one] == [m["tokens"] for m in two]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) <= 5e-6 and abs(a["grad_norm"] - b["grad_norm"]) <= 5e-6
    for name in ("checkpoint-1", "final"):
        a, b = final_weights(tmp_path / "one" / name), final_weights(tmp_path / "two" / name)
        assert a.keys() == b.keys()
        worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
        print(f"\n{name}: 2 processes vs 1, max |d| {worst:.2e}")
        assert worst <= 5e-6
    state = json.loads((tmp_path / "two" / "final" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
