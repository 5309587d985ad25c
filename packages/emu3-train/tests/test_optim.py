"""emu3_train.optim against torch and transformers on the CPU (the oracles), fp32.

AdamW: the same random parameters and gradients for 5 steps, weight decay in one group and
not the other, the lr from the schedule changing every step (0 at the first, warmup); after
every step the weights and both moments must equal torch.optim.AdamW's. "Equal" is
`|ours - torch| <= 1e-6 * max|torch|` per tensor (REL): the two differ only by float32
rounding (torch's CPU kernels fuse multiply-adds, its bias corrections are float64 host
numbers). One parameter has gradients of size 1e-6, where eps decides the update, so eps in
the wrong place fails the test; MindSpore's nn.AdamWeightDecay (no bias correction) fails it
by far. The schedule equals transformers' for every step; clipping equals clip_grad_norm_.
Compiled steps equal eager ones and compile once. Run with -s to see the measured differences.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from emu3_train.optim import (
    NO_DECAY_PATTERNS,
    AdamW,
    bias_correction_table,
    clip_by_global_norm,
    cosine_with_min_lr,
    param_groups,
)
from mindspore import Parameter, Tensor, nn, ops

REL = 1e-6
BETAS, EPS, WD = (0.9, 0.95), 1e-6, 0.1
LR, MIN_LR, STEPS, WARMUP = 1e-2, 1e-3, 5, 2
# name: (shape, gradient scale); the bias gets gradients where eps decides the update
SHAPES = {
    "model.layers.0.self_attn.q_proj.weight": ((8, 6), 1.0),
    "model.layers.0.input_layernorm.weight": ((6,), 1.0),
    "lm_head.weight": ((5, 6), 3.0),
    "model.norm.weight": ((6,), 0.5),
    "head.bias": ((5,), 1e-6),
}
DECAYED = ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def rel(ours, theirs) -> float:
    """max |ours - theirs| over max |theirs|: the scale-relative difference of one tensor."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def initial_and_grads(seed=0):
    rng = np.random.default_rng(seed)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in SHAPES.items()}
    grads = [{k: (scale * rng.standard_normal(s)).astype(np.float32) for k, (s, scale) in SHAPES.items()}
             for _ in range(STEPS)]
    return init, grads


def ours_with_groups(init, betas=BETAS):
    params = {k: Parameter(Tensor(v.copy()), name=k) for k, v in init.items()}
    groups = [{"params": [params[k] for k in SHAPES if k in DECAYED], "weight_decay": WD},
              {"params": [params[k] for k in SHAPES if k not in DECAYED], "weight_decay": 0.0}]
    return AdamW(groups, betas=betas, eps=EPS)


def torch_groups(params):
    return [{"params": [params[k] for k in SHAPES if k in DECAYED], "weight_decay": WD},
            {"params": [params[k] for k in SHAPES if k not in DECAYED], "weight_decay": 0.0}]


def torch_run(torch, transformers, init, grads):
    """torch.optim.AdamW + transformers' schedule: per step, {name: (param, exp_avg, exp_avg_sq)}, lrs."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    params = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in init.items()}
    opt = torch.optim.AdamW(torch_groups(params), lr=LR, betas=BETAS, eps=EPS, foreach=False)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, WARMUP, STEPS, min_lr=MIN_LR)
    states, lrs = [], []
    for g in grads:
        lrs.append(opt.param_groups[0]["lr"])
        for k, p in params.items():
            p.grad = torch.tensor(g[k])
        opt.step()
        sched.step()
        states.append({k: (p.detach().numpy().copy(), opt.state[p]["exp_avg"].numpy().copy(),
                           opt.state[p]["exp_avg_sq"].numpy().copy()) for k, p in params.items()})
    return states, lrs


def ours_state(opt):
    return {p.name: (p.asnumpy(), m.asnumpy(), v.asnumpy())
            for p, m, v in zip(opt.params, opt.exp_avg, opt.exp_avg_sq)}


def worst(ours, theirs) -> dict[str, float]:
    """The largest scale-relative difference of weights, exp_avg, exp_avg_sq over all tensors."""
    return {what: max(rel(ours[k][i], theirs[k][i]) for k in theirs)
            for i, what in enumerate(("param", "exp_avg", "exp_avg_sq"))}


def step_grads(opt, g):
    return tuple(Tensor(g[p.name]) for p in opt.params)


@pytest.mark.parity
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_adamw_matches_torch(torch, transformers, compiled):
    init, grads = initial_and_grads()
    expected, torch_lrs = torch_run(torch, transformers, init, grads)
    opt = ours_with_groups(init)
    update = ms.jit(opt.construct) if compiled else opt
    assert [p.name for p in opt.params] == [*DECAYED, *(k for k in SHAPES if k not in DECAYED)]
    assert opt.weight_decays == (WD, WD, 0.0, 0.0, 0.0)
    overall = dict.fromkeys(("param", "exp_avg", "exp_avg_sq"), 0.0)
    for step, g in enumerate(grads):
        lr = cosine_with_min_lr(step, STEPS, WARMUP, LR, MIN_LR)
        assert lr == torch_lrs[step]
        update(ms.mutable(step_grads(opt, g)), Tensor(lr, ms.float32))
        diffs = worst(ours_state(opt), expected[step])
        print(f"AdamW ({'compiled' if compiled else 'eager'}) step {step} (lr {lr:.3e}) vs torch: "
              + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        overall = {k: max(overall[k], v) for k, v in diffs.items()}
    print(f"AdamW ({'compiled' if compiled else 'eager'}) vs torch over {STEPS} steps: "
          + ", ".join(f"{k} {v:.2e}" for k, v in overall.items()))
    assert max(overall.values()) <= REL, overall
    assert int(opt.steps.asnumpy()) == STEPS
    # the updates are large enough to matter: a wrong step would show far above REL
    moved = max(rel(expected[-1][k][0], init[k]) for k in SHAPES)
    assert moved > 1e-3


@pytest.mark.parity
def test_the_comparison_catches_nn_adamweightdecay(torch, transformers):
    """MindSpore's nn.AdamWeightDecay has no bias correction: the same check fails by far."""
    init, grads = initial_and_grads()
    expected, torch_lrs = torch_run(torch, transformers, init, grads)
    params = {k: Parameter(Tensor(v.copy()), name=k) for k, v in init.items()}
    lr = Parameter(Tensor(0.0, ms.float32), name="lr")
    theirs = nn.AdamWeightDecay(
        [{"params": [params[k] for k in SHAPES if k in DECAYED], "weight_decay": WD},
         {"params": [params[k] for k in SHAPES if k not in DECAYED], "weight_decay": 0.0}],
        learning_rate=lr, beta1=BETAS[0], beta2=BETAS[1], eps=EPS)
    for step, g in enumerate(grads):
        lr.set_data(Tensor(torch_lrs[step], ms.float32))
        theirs(tuple(Tensor(g[p.name]) for p in theirs.parameters))
    diff = max(rel(params[k].asnumpy(), expected[-1][k][0]) for k in SHAPES)
    print(f"nn.AdamWeightDecay vs torch AdamW after {STEPS} steps: weights {diff:.2e}")
    assert diff > 1000 * REL


def test_adamw_compiled_equals_eager_and_compiles_once():
    init, grads = initial_and_grads(seed=1)
    eager, compiled = ours_with_groups(init), ours_with_groups(init)

    @ms.jit
    def update(grads, lr):
        return compiled(grads, lr)

    compiles = []
    for step, g in enumerate(grads):
        lr = Tensor(cosine_with_min_lr(step, STEPS, WARMUP, LR, MIN_LR), ms.float32)
        eager(step_grads(eager, g), lr)
        before = compile_count()
        # a tuple argument from outside the graph must be ms.mutable, or each call compiles anew
        steps = update(ms.mutable(step_grads(compiled, g)), lr)
        compiles.append(compile_count() - before)
        assert int(steps.asnumpy()) == step + 1
    diffs = worst(ours_state(compiled), ours_state(eager))
    print("AdamW compiled vs eager after 5 steps: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
          + f"; graphs compiled per step {compiles}")
    # bit for bit on the CPU: a scalar such as `1.0 - beta1` written inside the graph is folded
    # in float32 and moved the moments by 2e-7 (eager: float64); this catches such drift
    assert max(diffs.values()) == 0.0
    assert compiles == [1, 0, 0, 0, 0]
    assert int(compiled.steps.asnumpy()) == STEPS


@pytest.mark.parity
@pytest.mark.parametrize("betas,steps", [((0.9, 0.95), 400), ((0.9, 0.999), 60)])
def test_adamw_long_run_matches_torch(torch, betas, steps):
    """Many compiled steps at a constant lr, past the end of the bias-correction table (339
    steps for betas (0.9, 0.95)), and with beta2 0.999, where float32 `1 - beta2**t` fails."""
    rng = np.random.default_rng(5)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in SHAPES.items()}
    params = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in init.items()}
    topt = torch.optim.AdamW(torch_groups(params), lr=1e-3, betas=betas, eps=EPS, foreach=False)
    opt = ours_with_groups(init, betas)

    @ms.jit
    def update(grads, lr):
        return opt(grads, lr)

    lr = Tensor(1e-3, ms.float32)
    for _ in range(steps):
        g = {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, (s, scale) in SHAPES.items()}
        for k, p in params.items():
            p.grad = torch.tensor(g[k])
        topt.step()
        update(ms.mutable(step_grads(opt, g)), lr)
    expected = {k: (p.detach().numpy(), topt.state[p]["exp_avg"].numpy(), topt.state[p]["exp_avg_sq"].numpy())
                for k, p in params.items()}
    diffs = worst(ours_state(opt), expected)
    print(f"AdamW betas {betas} vs torch after {steps} steps: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= REL
    assert int(opt.steps.asnumpy()) == steps


@pytest.mark.parametrize("betas", [(0.9, 0.95), (0.9, 0.999), (0.0, 0.9999), (0.5, 0.0)])
def test_bias_correction_table_is_float64_arithmetic(betas):
    table = bias_correction_table(*betas)
    t = np.arange(1, len(table) + 100, dtype=np.float64)
    exact = np.stack([1 - betas[0] ** t, np.sqrt(1 - betas[1] ** t)], axis=1).astype(np.float32)
    assert table.dtype == np.float32 and np.array_equal(table, exact[:len(table)])
    assert (exact[len(table) - 1:] == 1.0).all()  # past the table: 1.0, its last row
    assert len(bias_correction_table(0.9, 0.95)) == 339


def compile_count() -> int:
    """How many graphs MindSpore has compiled in this process (its private phase cache)."""
    try:
        from mindspore.graph import api
    except ImportError:  # MindSpore < 2.10
        from mindspore.common import api
    return len(api.ms_compile_cache)


class TinyNet(nn.Cell):
    """x @ w.T, an RMS norm with a weight, a bias, a head: names as Emu3 spells them."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        self.w = Parameter(Tensor(weights["model.proj.weight"]), name="model.proj.weight")
        self.norm_weight = Parameter(Tensor(weights["model.norm.weight"]), name="model.norm.weight")
        self.bias = Parameter(Tensor(weights["model.proj.bias"]), name="model.proj.bias")
        self.head = Parameter(Tensor(weights["lm_head.weight"]), name="lm_head.weight")

    def construct(self, x, y):
        h = ops.matmul(x, self.w.T) + self.bias
        h = h * ops.rsqrt(ops.mean(h * h, -1, keep_dims=True) + 1e-6) * self.norm_weight
        return ops.mean(ops.square(ops.matmul(h, self.head.T) - y))


def torch_tiny_loss(torch, p, x, y):
    h = x @ p["model.proj.weight"].T + p["model.proj.bias"]
    h = h * torch.rsqrt((h * h).mean(-1, keepdim=True) + 1e-6) * p["model.norm.weight"]
    return ((h @ p["lm_head.weight"].T - y) ** 2).mean()


@pytest.mark.parity
def test_compiled_train_step_matches_torch(torch, transformers):
    """value_and_grad + clip_by_global_norm + AdamW in one ms.jit step, 5 steps, against torch."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    rng = np.random.default_rng(2)
    weights = {"model.proj.weight": rng.standard_normal((8, 6)),
               "model.norm.weight": 1 + 0.1 * rng.standard_normal(8),
               "model.proj.bias": 0.1 * rng.standard_normal(8), "lm_head.weight": rng.standard_normal((4, 8))}
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    batches = [(rng.standard_normal((5, 6)).astype(np.float32),
                rng.standard_normal((5, 4)).astype(np.float32)) for _ in range(STEPS)]
    max_norm = 2.0

    net = TinyNet(weights)
    groups = param_groups(net, WD)
    assert [p.name for p in groups[0]["params"]] == ["model.proj.weight", "lm_head.weight"]
    opt = AdamW(groups, betas=BETAS, eps=EPS)
    grad_fn = ms.value_and_grad(net, None, opt.params)

    @ms.jit
    def train_step(x, y, lr):
        loss, grads = grad_fn(x, y)
        grads, norm = clip_by_global_norm(grads, max_norm)
        opt(grads, lr)
        return loss, norm

    tp = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in weights.items()}
    decay_names = set(transformers.Trainer.get_decay_parameter_names(None, torch_module(torch, tp)))
    assert decay_names == {p.name for p in groups[0]["params"]}  # transformers' rule, on torch's side
    decay = [tp[k] for k in tp if k in decay_names]
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                              {"params": [p for p in tp.values() if all(p is not q for q in decay)],
                               "weight_decay": 0.0}], lr=LR, betas=BETAS, eps=EPS, foreach=False)
    sched = get_cosine_with_min_lr_schedule_with_warmup(topt, WARMUP, STEPS, min_lr=MIN_LR)

    compiles, losses, norms = [], 0.0, 0.0
    for step, (x, y) in enumerate(batches):
        topt.zero_grad()
        tloss = torch_tiny_loss(torch, tp, torch.tensor(x), torch.tensor(y))
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(tp.values(), max_norm, foreach=False)
        topt.step()
        sched.step()
        before = compile_count()
        lr = cosine_with_min_lr(step, STEPS, WARMUP, LR, MIN_LR)
        loss, norm = train_step(Tensor(x), Tensor(y), Tensor(lr, ms.float32))
        compiles.append(compile_count() - before)
        losses = max(losses, rel(loss.asnumpy(), tloss.item()))
        norms = max(norms, rel(norm.asnumpy(), tnorm.item()))
    weights_diff = max(rel(p.asnumpy(), tp[p.name].detach().numpy()) for p in opt.params)
    print(f"compiled train step vs torch over {STEPS} steps: loss {losses:.2e}, grad norm {norms:.2e}, "
          f"weights {weights_diff:.2e}; graphs compiled per step {compiles}")
    assert losses <= 1e-5 and norms <= 1e-5 and weights_diff <= 1e-5
    assert compiles == [1, 0, 0, 0, 0]


def torch_module(torch, tensors):
    """A torch Module holding `tensors` under their dotted names, for transformers' decay rule."""
    root = torch.nn.Module()
    for name, tensor in tensors.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, tensor)
    return root


@pytest.mark.parity
def test_param_groups_follow_transformers_rule_on_emu3(torch, transformers):
    from emu3_lm.config import Emu3LMConfig
    from emu3_lm.model import Emu3ForCausalLM

    cfg = Emu3LMConfig.from_name("tiny")
    ours = Emu3ForCausalLM(cfg, dtype=ms.float32)
    hf = transformers.Emu3ForCausalLM(transformers.Emu3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id))
    expected = set(transformers.Trainer.get_decay_parameter_names(None, hf))
    decay, no_decay = param_groups(ours, 0.1)
    assert {p.name for p in decay["params"]} == expected
    assert {p.name for p in no_decay["params"]} == {n for n, _ in hf.named_parameters()} - expected
    assert {p.name for p in no_decay["params"]} == {
        "model.norm.weight", *(f"model.layers.{i}.{n}_layernorm.weight"
                               for i in range(cfg.num_hidden_layers) for n in ("input", "post_attention"))}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert NO_DECAY_PATTERNS == (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def test_param_groups_biases_layernorm_cells_and_frozen():
    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.proj = nn.Dense(4, 4)                  # proj.weight, proj.bias
            self.ln = nn.LayerNorm((4,))                # ln.gamma, ln.beta: a LayerNorm cell
            self.normal = nn.Dense(4, 4, has_bias=False)  # "normal" is not a norm
            self.q_norm = nn.Dense(4, 4, has_bias=False)  # "_norm" is
            self.frozen = Parameter(Tensor(np.ones(3, np.float32)), name="frozen.weight", requires_grad=False)

    decay, no_decay = param_groups(Net(), 0.05)
    assert [p.name for p in decay["params"]] == ["proj.weight", "normal.weight"]
    assert [p.name for p in no_decay["params"]] == ["proj.bias", "ln.gamma", "ln.beta", "q_norm.weight"]
    assert decay["weight_decay"] == 0.05


@pytest.mark.parity
def test_schedule_matches_transformers(torch, transformers):
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    for total, warmup, lr, min_lr in ((100, 30, 1e-5, 1e-6), (100, 30, 1e-6, 0.0), (37, 0, 3e-4, 3e-5)):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr=min_lr)
        expected = []
        for _ in range(total + 5):  # a few past the end too
            expected.append(opt.param_groups[0]["lr"])  # the lr this optimiser step uses
            opt.step()
            sched.step()
        ours = [cosine_with_min_lr(k, total, warmup, lr, min_lr) for k in range(total + 5)]
        print(f"schedule ({total} steps, {warmup} warmup): max |ours - transformers| "
              f"{max(abs(a - b) for a, b in zip(ours, expected)):.1e}")
        assert ours == expected
    assert cosine_with_min_lr(0, 100, 30, 1e-5, 1e-6) == 0.0
    assert cosine_with_min_lr(30, 100, 30, 1e-5, 1e-6) == 1e-5
    assert math.isclose(cosine_with_min_lr(100, 100, 30, 1e-5, 1e-6), 1e-6)


def test_schedule_rejects_bad_arguments():
    bad = ((-1, 10, 2, 1e-5, 1e-6), (0, 10, -2, 1e-5, 1e-6), (0, 10, 2, 0.0, 0.0), (0, 10, 2, 1e-5, -1.0))
    for args in bad:
        with pytest.raises(ValueError):
            cosine_with_min_lr(*args)


def clip_case(scale, seed=3):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(s)).astype(np.float32) for s in ((8, 6), (6,), (5, 3, 2))]


@pytest.mark.parity
# the last case has a norm of about 0.01, where the 1e-6 of the coefficient shows (1e-4)
@pytest.mark.parametrize("scale,max_norm", [(3.0, 5.0), (0.1, 5.0), (1.0, 1e-3), (1e-3, 1e-4)])
def test_clip_matches_torch(torch, scale, max_norm):
    grads = clip_case(scale)
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False).item()
    expected = [p.grad.numpy() for p in params]

    @ms.jit
    def clip(gs):
        return clip_by_global_norm(gs, max_norm)

    eager = clip_by_global_norm(tuple(Tensor(g) for g in grads), max_norm)
    compiled = clip(ms.mutable(tuple(Tensor(g) for g in grads)))
    for clipped, norm in (eager, compiled):
        assert norm.dtype == ms.float32 and norm.shape == ()
        norm_diff = rel(norm.asnumpy(), expected_norm)
        grad_diff = max(rel(c.asnumpy(), e) for c, e in zip(clipped, expected))
        print(f"clip (norm {expected_norm:.3f}, max_norm {max_norm}): "
              f"norm {norm_diff:.2e}, grads {grad_diff:.2e}")
        assert norm_diff <= REL and grad_diff <= REL
        if expected_norm < max_norm:  # below the threshold: unchanged, bit for bit
            assert all(np.array_equal(c.asnumpy(), g) for c, g in zip(clipped, grads))
        else:
            clipped_norm = math.sqrt(sum(float(np.sum(c.asnumpy().astype(np.float64) ** 2)) for c in clipped))
            # torch's coefficient: max_norm / (norm + 1e-6), so just under max_norm
            assert math.isclose(clipped_norm, max_norm * expected_norm / (expected_norm + 1e-6), rel_tol=1e-6)


def test_clip_half_gradients_norm_in_float32():
    grads = clip_case(300.0)  # sum of squares past float16's range
    ref = math.sqrt(sum(float(np.sum(g.astype(np.float16).astype(np.float64) ** 2)) for g in grads))
    clipped, norm = clip_by_global_norm(tuple(Tensor(g, ms.float16) for g in grads), 1.0)
    assert norm.dtype == ms.float32 and math.isfinite(float(norm.asnumpy()))
    assert math.isclose(float(norm.asnumpy()), ref, rel_tol=1e-6)
    assert all(c.dtype == ms.float16 for c in clipped)
    assert clip_by_global_norm((), 1.0)[0] == ()


def test_adamw_half_parameters_keep_their_dtype_and_fp32_moments():
    init, grads = initial_and_grads(seed=4)
    full = ours_with_groups(init)
    half_params = {k: Parameter(Tensor(v.copy(), ms.float16), name=k) for k, v in init.items()}
    half = AdamW([half_params[p.name] for p in full.params], betas=BETAS, eps=EPS)
    assert all(m.dtype == ms.float32 and v.dtype == ms.float32 for m, v in zip(half.exp_avg, half.exp_avg_sq))
    for step, g in enumerate(grads):
        lr = Tensor(cosine_with_min_lr(step, STEPS, WARMUP, LR, MIN_LR), ms.float32)
        full(step_grads(full, g), lr)
        half(tuple(Tensor(g[p.name], ms.float16) for p in half.params), lr)
    assert all(p.dtype == ms.float16 for p in half.params)
    for p, q in zip(half.params, full.params):
        if p.name in DECAYED:
            continue  # `half` decays nothing
        # float16 storage: about 1e-3 relative per step
        assert rel(p.asnumpy(), q.asnumpy()) < 1e-2


def test_adamw_rejects_bad_groups():
    p = Parameter(Tensor(np.zeros(2, np.float32)), name="p")
    q = Parameter(Tensor(np.zeros(2, np.float32)), name="q")
    with pytest.raises(ValueError, match="empty"):
        AdamW([])
    with pytest.raises(ValueError, match="'weight_decay'"):
        AdamW([{"params": [p], "lr": 1e-3}])
    with pytest.raises(ValueError, match="twice"):
        AdamW([{"params": [p]}, {"params": [p], "weight_decay": 0.0}])
    with pytest.raises(TypeError):
        AdamW(p)
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], betas=(0.9, 1.0))
    opt = AdamW([{"params": [p]}, {"params": [q], "weight_decay": 0.0}], weight_decay=0.3)
    assert opt.weight_decays == (0.3, 0.0)
