"""TrainEngine in one process against the step written by hand and against torch (the oracles).

The tiny config in fp32, dropout off, a right-padded batch whose labels mask the prompt and the
padding (-100). Clipping at 1.0, below the gradient norms (~2.7), so the clipping coefficient
acts at every step. Measured on the CPU (run with -s to see): one step equals
value_and_grad + clip_by_global_norm + AdamW to float rounding; 3 steps equal transformers +
torch.optim.AdamW + clip_grad_norm_ within the forward/backward's own difference (REL_TORCH);
2 micro-batches of half the rows equal 1 of all rows; fp16 dynamic loss scaling skips an
overflowing step and halves the scale, and doubles it after a clean window.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_train import sequence_parallel
from emu3_train.engine import EngineConfig, StepResult, TrainEngine
from emu3_train.optim import AdamW, clip_by_global_norm, param_groups

CFG = Emu3LMConfig.from_name("tiny", attention_dropout=0.0)
LRS = (2e-3, 1e-3, 5e-4)
CLIP = 1.0
REL_SAME = 1e-5  # the same MindSpore arithmetic in another arrangement (measured: 0 by hand, 9.6e-7 accumulating)
REL_TORCH = 1e-4  # against torch (measured 1.2e-5 weights, 3.1e-6 moments): the kernels differ by float rounding


def weights(seed=1234) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = Emu3ForCausalLM(CFG, dtype=ms.float32, init_weights=False)
    out = {}
    for name, shape in model.checkpoint_shapes().items():
        scale, base = (0.1, 1.0) if name.endswith("norm.weight") else (0.02, 0.0)
        out[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
    return out


def model_from(arrays, dtype=ms.float32) -> Emu3ForCausalLM:
    model = Emu3ForCausalLM(CFG, dtype=dtype, init_weights=False)
    model.load_state_dict(arrays)
    return model


def batch(rows=4) -> dict[str, np.ndarray]:
    """Right-padded rows of length 16: bos, a prompt (labels -100), a supervised answer, padding."""
    rng = np.random.default_rng(7)
    lengths, prompts = (16, 13, 9, 11)[:rows], (5, 3, 4, 6)[:rows]
    ids = np.full((rows, 16), CFG.pad_token_id, np.int32)
    mask = np.zeros((rows, 16), np.int32)
    labels = np.full((rows, 16), -100, np.int32)
    for r, (n, p) in enumerate(zip(lengths, prompts)):
        ids[r, 0] = CFG.bos_token_id
        ids[r, 1:n] = rng.integers(0, CFG.pad_token_id, n - 1)  # ordinary text tokens
        mask[r, :n] = 1
        labels[r, p:n] = ids[r, p:n]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def rows(b, lo, hi):
    return {k: v[lo:hi] for k, v in b.items()}


def rel(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def worst(ours: dict, theirs: dict) -> tuple[float, str]:
    assert ours.keys() == theirs.keys()
    errors = {k: rel(ours[k], theirs[k]) for k in theirs}
    name = max(errors, key=errors.get)
    return errors[name], name


def moved(after: dict, before: dict) -> float:
    return max(float(np.abs(after[k] - before[k]).max()) for k in before)


def test_one_step_equals_value_and_grad_clip_adamw_by_hand():
    init, b = weights(), batch()
    engine = TrainEngine(model_from(init), EngineConfig(clip_grad_norm=CLIP))
    assert (engine.rank, engine.world_size, engine.dp_size, engine.sp_size) == (0, 1, 1, 1)
    result = engine.step([b], LRS[0])

    model = model_from(init)
    model.set_train(True)
    optimizer = AdamW(param_groups(model, 0.1), betas=(0.9, 0.95), eps=1e-6)

    def loss_fn(i, y, m):
        return model.loss(i, y, attention_mask=m)

    grad_fn = ms.value_and_grad(loss_fn, None, optimizer.params)

    @ms.jit
    def by_hand(i, y, m, lr):
        loss, grads = grad_fn(i, y, m)
        grads, norm = clip_by_global_norm(grads, CLIP)
        optimizer(grads, lr)
        return loss, norm

    loss, norm = by_hand(ms.Tensor(b["input_ids"]), ms.Tensor(b["labels"]), ms.Tensor(b["attention_mask"]),
                         ms.Tensor(LRS[0], ms.float32))
    expected = model.state_dict()
    err, name = worst(engine.state_dict(), expected)
    tokens = int((b["labels"][:, 1:] != -100).sum())
    print(f"\nby hand: loss {result.loss:.7f} vs {float(loss.asnumpy()):.7f}, norm {result.grad_norm:.7f} vs "
          f"{float(norm.asnumpy()):.7f}; worst weight difference {err:.2e} ({name})")
    assert isinstance(result, StepResult) and not result.skipped and result.loss_scale == 1.0
    assert result.tokens == tokens
    assert abs(result.loss - float(loss.asnumpy())) <= 1e-6 * result.loss
    assert abs(result.grad_norm - float(norm.asnumpy())) <= 1e-6 * result.grad_norm
    assert result.grad_norm > CLIP  # clipping acted
    assert err <= REL_SAME
    assert moved(expected, init) > 1e-3  # the step did something
    state = engine.optimizer_state()
    for p, m, v in zip(optimizer.params, optimizer.exp_avg, optimizer.exp_avg_sq):
        assert rel(state[f"exp_avg.{p.name}"], m.asnumpy()) <= REL_SAME
        assert rel(state[f"exp_avg_sq.{p.name}"], v.asnumpy()) <= REL_SAME
    assert int(state["step"]) == 1


def torch_twin(oracle_text_config):
    """transformers' Emu3ForCausalLM with `weights()` and torch's AdamW with our groups and settings."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.Emu3ForCausalLM(oracle_text_config(CFG)).train()
    init = weights()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.tensor(init[name]))
    decay = [p for n, p in hf.named_parameters() if not n.endswith("norm.weight")]
    no_decay = [p for n, p in hf.named_parameters() if n.endswith("norm.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LRS[0], betas=(0.9, 0.95), eps=1e-6, foreach=False)
    return hf, opt, init


@pytest.mark.parity
def test_three_steps_equal_transformers_and_torch_adamw(oracle_text_config):
    torch = pytest.importorskip("torch")
    hf, opt, init = torch_twin(oracle_text_config)
    engine = TrainEngine(model_from(init), EngineConfig(clip_grad_norm=CLIP))
    b = batch()
    inputs = {"input_ids": torch.tensor(b["input_ids"], dtype=torch.long),
              "attention_mask": torch.tensor(b["attention_mask"]),
              "labels": torch.tensor(b["labels"], dtype=torch.long)}
    for step, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss = hf(**inputs).loss
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP))
        opt.step()
        result = engine.step([b], lr)
        print(f"\nstep {step}: loss {result.loss:.7f} vs torch {float(loss):.7f}, "
              f"norm {result.grad_norm:.7f} vs {norm:.7f}")
        assert abs(result.loss - float(loss)) <= 1e-5 * float(loss)
        assert abs(result.grad_norm - norm) <= 1e-5 * norm
    theirs = {n: p.detach().numpy() for n, p in hf.named_parameters()}
    err, name = worst(engine.state_dict(), theirs)
    state = engine.optimizer_state()
    moment_errors = {}
    for n, p in hf.named_parameters():
        moment_errors[f"exp_avg.{n}"] = rel(state[f"exp_avg.{n}"], opt.state[p]["exp_avg"].numpy())
        moment_errors[f"exp_avg_sq.{n}"] = rel(state[f"exp_avg_sq.{n}"], opt.state[p]["exp_avg_sq"].numpy())
    moment = max(moment_errors, key=moment_errors.get)
    print(f"after {len(LRS)} steps vs torch: worst weight {err:.2e} ({name}), "
          f"worst moment {moment_errors[moment]:.2e} ({moment})")
    assert err <= REL_TORCH
    assert moment_errors[moment] <= REL_TORCH
    assert moved(theirs, init) > 1e-3


ROW_WEIGHTS = np.array([1.0, 6.0, 0.5, 2.0], np.float32)  # a mixture's per-data-set loss weights, one per row


def weighted(b) -> dict:
    return {**b, "loss_weights": np.repeat(ROW_WEIGHTS[:len(b["labels"]), None], b["labels"].shape[1], 1)}


@pytest.mark.parity
def test_loss_weights_equal_torch_weighted_mean_and_accumulate(oracle_text_config):
    """loss_weights: 3 steps equal torch's sum(w * ce) / sum(w) over the supervised tokens +
    clip_grad_norm_ + AdamW; two micro-batches equal one; all-1 weights equal none, bit for bit."""
    torch = pytest.importorskip("torch")
    hf, opt, init = torch_twin(oracle_text_config)
    b = weighted(batch())
    ids = torch.tensor(b["input_ids"], dtype=torch.long)
    target = torch.tensor(b["labels"][:, 1:], dtype=torch.long)
    w = torch.tensor(b["loss_weights"][:, 1:]) * (target != -100)
    one = TrainEngine(model_from(init), EngineConfig(clip_grad_norm=CLIP))
    two = TrainEngine(model_from(init), EngineConfig(clip_grad_norm=CLIP, accumulate=2))
    for step, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        logits = hf(input_ids=ids, attention_mask=torch.tensor(b["attention_mask"])).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                               ignore_index=-100, reduction="none")
        loss = (ce * w.reshape(-1)).sum() / w.sum()
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(hf.parameters(), CLIP))
        opt.step()
        r1 = one.step([b], lr)
        r2 = two.step([rows(b, 0, 2), rows(b, 2, 4)], lr)
        print(f"\nstep {step}: weighted loss {r1.loss:.7f} / {r2.loss:.7f} vs torch {float(loss):.7f}, "
              f"norm {r1.grad_norm:.7f} vs {norm:.7f}")
        assert r1.tokens == r2.tokens == int((target != -100).sum())
        for r in (r1, r2):
            assert abs(r.loss - float(loss)) <= 1e-5 * float(loss)
            assert abs(r.grad_norm - norm) <= 1e-5 * norm
    theirs = {n: p.detach().numpy() for n, p in hf.named_parameters()}
    err, name = worst(one.state_dict(), theirs)
    err2, _ = worst(two.state_dict(), one.state_dict())
    print(f"after {len(LRS)} weighted steps vs torch: worst weight {err:.2e} ({name}); "
          f"2 micro-batches vs 1: {err2:.2e}")
    assert err <= REL_TORCH and err2 <= REL_SAME
    # not vacuous: the weights change the steps (the same batch unweighted ends elsewhere)
    plain = TrainEngine(model_from(init), EngineConfig(clip_grad_norm=CLIP))
    ones = TrainEngine(model_from(init), EngineConfig(clip_grad_norm=CLIP))
    for lr in LRS:
        plain.step([batch()], lr)
        ones.step([{**batch(), "loss_weights": np.ones((4, 16), np.float32)}], lr)
    assert worst(plain.state_dict(), one.state_dict())[0] > 100 * REL_TORCH
    a, c = plain.state_dict(), ones.state_dict()
    assert all(np.array_equal(a[k], c[k]) for k in a)  # all-1 weights: the plain mean, bit for bit
    with pytest.raises(ValueError, match="loss_weights must be finite non-negative"):
        plain.step([{**batch(), "loss_weights": -np.ones((4, 16), np.float32)}], LRS[0])


def test_two_half_micro_batches_equal_one_full_batch():
    init, b = weights(), batch()
    whole = TrainEngine(model_from(init), EngineConfig(clip_grad_norm=CLIP))
    halves = TrainEngine(model_from(init), EngineConfig(clip_grad_norm=CLIP, accumulate=2))
    for lr in LRS[:2]:
        r1 = whole.step([b], lr)
        r2 = halves.step([rows(b, 0, 2), rows(b, 2, 4)], lr)
        print(f"\nloss {r1.loss:.7f} vs {r2.loss:.7f}, norm {r1.grad_norm:.7f} vs {r2.grad_norm:.7f}")
        assert r1.tokens == r2.tokens
        assert abs(r1.loss - r2.loss) <= 1e-6 * r1.loss
        assert abs(r1.grad_norm - r2.grad_norm) <= 1e-6 * r1.grad_norm
    err, name = worst(halves.state_dict(), whole.state_dict())
    print(f"accumulation: worst weight difference {err:.2e} ({name})")
    assert err <= REL_SAME
    with pytest.raises(ValueError, match="needs 2 micro-batches"):
        halves.step([b], LRS[0])


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    init, b = weights(), batch()
    fp16 = {k: v.astype(np.float16) for k, v in init.items()}
    # a scale of 2**40 overflows fp16 gradients: an injected overflow
    engine = TrainEngine(model_from(fp16, ms.float16), EngineConfig(clip_grad_norm=CLIP, loss_scale_init=2.0**40,
                                                                    loss_scale_window=2))
    assert engine.scaling  # 'auto' turns dynamic scaling on for fp16
    result = engine.step([b], LRS[0])
    print(f"\nfp16 overflow: {result}")
    assert result.skipped and result.loss_scale == 2.0**40 and engine.loss_scale == 2.0**39
    assert not np.isfinite(result.grad_norm) and np.isfinite(result.loss)
    assert moved(engine.state_dict(), fp16) == 0.0  # the update was skipped
    state = engine.optimizer_state()
    assert int(state["step"]) == 0 and float(state["loss_scale"]) == 2.0**39
    # from a scale of 1024: two clean steps (the window) double it
    state["loss_scale"] = np.array(1024.0)
    engine.load_optimizer_state(state)
    results = [engine.step([b], lr) for lr in LRS[:2]]
    print(f"fp16 clean: {results}")
    assert not any(r.skipped for r in results) and [r.loss_scale for r in results] == [1024.0, 1024.0]
    assert engine.loss_scale == 2048.0 and int(engine.optimizer_state()["step"]) == 2
    assert all(np.isfinite(r.grad_norm) for r in results)
    assert moved(engine.state_dict(), fp16) > 1e-3


def test_frozen_parameters_stay_out_and_optimizer_state_round_trips():
    init, b = weights(), batch()
    model = model_from(init)
    model.model.embed_tokens.weight.requires_grad = False
    engine = TrainEngine(model, EngineConfig(clip_grad_norm=CLIP))
    assert not engine.scaling and engine.loss_scale == 1.0  # fp32: no loss scaling
    engine.step([b], LRS[0])
    state, weights_after = engine.optimizer_state(), engine.state_dict()
    assert "exp_avg.model.embed_tokens.weight" not in state
    assert np.array_equal(weights_after["model.embed_tokens.weight"], init["model.embed_tokens.weight"])
    assert moved(weights_after, init) > 1e-3
    report = engine.memory_report()
    frozen = init["model.embed_tokens.weight"].nbytes
    total = sum(a.nbytes for a in init.values())
    print(f"\nmemory_report, one process, embedding frozen: {report}")
    assert report["parameters"] == total
    assert report["gradients"] == total - frozen
    assert report["optimizer"] == 2 * (total - frozen) + 4
    # the state round-trips: a second engine loaded from it takes the same next step
    other = model_from(weights_after)
    other.model.embed_tokens.weight.requires_grad = False
    twin = TrainEngine(other, EngineConfig(clip_grad_norm=CLIP))
    twin.load_optimizer_state(state)
    r1, r2 = engine.step([b], LRS[1]), twin.step([b], LRS[1])
    assert r1 == r2
    err, _ = worst(twin.state_dict(), engine.state_dict())
    assert err == 0.0
    with pytest.raises(ValueError, match="missing"):
        twin.load_optimizer_state({k: v for k, v in state.items() if k != "step"})


def test_config_and_batch_errors():
    with pytest.raises(ValueError, match="zero_stage"):
        EngineConfig(zero_stage=4)
    with pytest.raises(ValueError, match="loss_scale"):
        EngineConfig(loss_scale="static")
    with pytest.raises(ValueError, match="accumulate"):
        EngineConfig(accumulate=0)
    with pytest.raises(ValueError, match="divisible by 3"):
        sequence_parallel.check_heads(CFG, 3)
    b = batch()
    with pytest.raises(ValueError, match="not divisible by sequence_parallel 3"):
        sequence_parallel.split_batch(b["input_ids"], b["labels"], b["attention_mask"], 3, 0)
    # a rank's share: its positions, the labels it predicts, the whole mask
    share = sequence_parallel.split_batch(b["input_ids"], b["labels"], b["attention_mask"], 2, 1)
    assert np.array_equal(share["input_ids"], b["input_ids"][:, 8:])
    assert np.array_equal(share["labels"][:, :-1], b["labels"][:, 9:]) and (share["labels"][:, -1] == -100).all()
    assert np.array_equal(share["positions"][0], np.arange(8, 16))
    assert share["attention_mask"].shape == (4, 16)
