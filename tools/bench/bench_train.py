"""Training benchmark: emu3_train's train step against transformers + torch.optim.AdamW, same weights.

    python tools/bench/bench_train.py --out bench-results/train.json [--threads 2] [--skip-1b] [--skip-zero]

Throughput: tokens/s of whole optimiser steps (forward, backward, global-norm clipping, AdamW)
on one batch, fp32, dropout off, in one run; the best of the rounds each. The small config runs
both sides in one process, in turns (ours, peer, ours, ...) so that load from other processes
hits both alike; bench-1b runs each side in a fresh process of its own, one after the other
(both models with their gradients and AdamW state do not fit 24 GB together). Two configs:
"small" (hidden 256, 4 layers, 4/2 heads, the real vocabulary of 184622: the head and its loss
are a large part of the step) and "bench-1b" (the LM bench config, 468 M parameters) with
recompute on both sides (`layer.recompute()` / `gradient_checkpointing_enable()`). The peer
computes the loss the transformers way (fp32 logits of the whole vocabulary for every token);
ours with the chunked head (no [tokens, vocab] logits kept for the backward).

ZeRO memory: the bytes each rank holds for parameters, gradients and optimiser state
(`TrainEngine.memory_report`) after one step with 2 processes (msrun, CPU) for stages 0-3,
against one process; and each process's peak RSS. Written to train_zero.json.
Writes JSON rows {"bench", "case", "ours", "peer", "unit", "ratio"} (ratio > 1: ours better).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2)


def make_batch(cfg, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded rows, the first quarter of each a prompt (not supervised), as SFT batches are."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[-1, length - length // 8:] = 0  # one row padded
    ids[mask == 0] = cfg.pad_token_id
    labels = np.where(mask == 1, ids, -100).astype(np.int32)
    labels[:, : length // 4] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _peer_model(cfg):
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.Emu3ForCausalLM(transformers.Emu3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, attention_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}))


def ours_stepper(cfg, state: dict, data: dict, recompute: bool):
    """A function running one optimiser step of ours (TrainEngine) -> (seconds, loss)."""
    import mindspore as ms
    from emu3_lm.model import Emu3ForCausalLM
    from emu3_train.engine import EngineConfig, TrainEngine

    ours = Emu3ForCausalLM(cfg, dtype=ms.float32, init_weights=False)
    ours.load_state_dict(state)
    if recompute:
        for layer in ours.model.layers:
            layer.recompute()
    engine = TrainEngine(ours, EngineConfig(clip_grad_norm=5.0, weight_decay=0.1))

    def step():
        t = time.perf_counter()
        result = engine.step([data], 1e-5)
        return time.perf_counter() - t, result.loss

    return step


def peer_stepper(peer, data: dict, recompute: bool):
    """One optimiser step of the peer: transformers' loss, backward, clip_grad_norm_, AdamW."""
    import torch
    import transformers

    if recompute:
        peer.gradient_checkpointing_enable()
    peer.train()
    decay = set(transformers.Trainer.get_decay_parameter_names(None, peer))
    params = dict(peer.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in params.items() if n in decay], "weight_decay": 0.1},
                             {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0}],
                            lr=1e-5, betas=(0.9, 0.95), eps=1e-6)
    t_ids, t_mask = torch.tensor(data["input_ids"], dtype=torch.long), torch.tensor(data["attention_mask"])
    t_labels = torch.tensor(data["labels"], dtype=torch.long)

    def step():
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = peer(input_ids=t_ids, attention_mask=t_mask, labels=t_labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), 5.0)
        opt.step()
        return time.perf_counter() - t, float(out.loss.detach())

    return step


def _row(name, batch, length, recompute, ours_t, peer_t, losses, placement) -> dict:
    tokens = batch * length
    o, p = tokens / min(ours_t), tokens / min(peer_t)
    print(f"  {name}: ours {o:.1f} tokens/s, peer {p:.1f} tokens/s ({o / p:.2f}x)", flush=True)
    return {"case": f"train step, {name}, {batch} x {length} tokens" + (", recompute" if recompute else ""),
            "ours": o, "peer": p, "unit": "tokens/s", "ratio": o / p, "first_losses": losses,
            "placement": placement}


def throughput(name: str, cfg, batch: int, length: int, recompute: bool, rounds: int) -> dict:
    """Both sides in this process, in turns (ours, peer, ours, ...), so load hits both alike."""
    peer = _peer_model(cfg)
    data = make_batch(cfg, batch, length)
    ours_step = ours_stepper(cfg, {k: v.detach().numpy() for k, v in peer.state_dict().items()}, data,
                             recompute)
    peer_step = peer_stepper(peer, data, recompute)
    first_ours, first_peer = ours_step(), peer_step()  # compile, allocate moments
    print(f"  {name}: first step ours {first_ours[0]:.1f} s (compiles), peer {first_peer[0]:.1f} s; "
          f"losses {first_ours[1]:.5f} / {first_peer[1]:.5f}", flush=True)
    ours_t, peer_t = [], []
    for _ in range(rounds):
        ours_t.append(ours_step()[0])
        peer_t.append(peer_step()[0])
    return _row(name, batch, length, recompute, ours_t, peer_t, [first_ours[1], first_peer[1]], "one process")


def one_side(side: str, preset: str, batch: int, length: int, recompute: bool, rounds: int) -> dict:
    """One side alone in this process (a model this size, its gradients and AdamW state twice
    over would not fit 24 GB): the same weights (the peer's seed), the same batch."""
    from emu3_lm.config import Emu3LMConfig

    cfg = Emu3LMConfig.from_name(preset, attention_dropout=0.0)
    peer = _peer_model(cfg)
    data = make_batch(cfg, batch, length)
    if side == "ours":
        state = {k: v.detach().numpy() for k, v in peer.state_dict().items()}
        del peer
        step = ours_stepper(cfg, state, data, recompute)
        del state
    else:
        step = peer_stepper(peer, data, recompute)
    first = step()
    times = [step()[0] for _ in range(rounds)]
    return {"first": first, "times": times}


def throughput_apart(name: str, preset: str, batch: int, length: int, recompute: bool, rounds: int,
                     threads: int) -> dict:
    """Each side in a fresh process of its own, one after the other, in one run."""
    res = {}
    for side in ("ours", "peer"):
        out = subprocess.run([sys.executable, __file__, "--one-side", side, "--preset", preset,
                              "--batch", str(batch), "--length", str(length), "--rounds", str(rounds),
                              "--threads", str(threads)] + (["--recompute"] if recompute else []),
                             capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})
        if out.returncode:
            raise RuntimeError(f"{side} side failed (exit status {out.returncode}):\n{out.stderr[-3000:]}")
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {name}, {side}: first step {res[side]['first'][0]:.1f} s, then "
              f"{', '.join(f'{t:.1f}' for t in res[side]['times'])} s", flush=True)
    return _row(name, batch, length, recompute, res["ours"]["times"], res["peer"]["times"],
                [res["ours"]["first"][1], res["peer"]["first"][1]], "a process per side")


_ZERO_WORKER = r'''
import json, os, sys
import numpy as np
import mindspore as ms
from emu3_lm.config import Emu3LMConfig
from emu3_lm.model import Emu3ForCausalLM
from emu3_train.engine import EngineConfig, TrainEngine
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from bench_train import SMALL, make_batch
stage, out = int(sys.argv[2]), sys.argv[3]
cfg = Emu3LMConfig.from_name("bench-1b", **SMALL, attention_dropout=0.0)
ms.set_seed(0)
np.random.seed(0)
model = Emu3ForCausalLM(cfg, dtype=ms.float32)
engine = TrainEngine(model, EngineConfig(zero_stage=stage))
data = make_batch(cfg, 1, 256, seed=engine.dp_rank)
engine.step([data], 1e-5)
report = engine.memory_report()
with open("/proc/self/status") as f:
    report["peak_rss"] = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
with open(f"{out}/rank{engine.rank}-stage{stage}.json", "w") as f:
    json.dump(report, f)
'''


def zero_memory(threads: int) -> list[dict]:
    """Per-rank bytes under ZeRO 0-3 with 2 processes, against one process (stage 0)."""
    from emu3_train.launch import launch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        worker = Path(tmp) / "zero_worker.py"
        worker.write_text(_ZERO_WORKER)
        env = {**os.environ, "GLOG_v": "3", "OMP_NUM_THREADS": str(max(1, threads // 2))}
        me = str(Path(__file__).resolve())
        one = subprocess.run([sys.executable, str(worker), me, "0", tmp], env=env, capture_output=True, text=True)
        if one.returncode:
            raise RuntimeError(one.stderr[-3000:])
        base = json.loads((Path(tmp) / "rank0-stage0.json").read_text())
        for stage in (0, 1, 2, 3):
            rc = launch(2, [str(worker), me, str(stage), tmp], log_dir=str(Path(tmp) / f"log{stage}"),
                        env=env, quiet=True, timeout=1800)
            if rc:
                raise RuntimeError(f"ZeRO {stage} run failed ({rc})")
            ranks = [json.loads((Path(tmp) / f"rank{r}-stage{stage}.json").read_text()) for r in (0, 1)]
            held = max(r["parameters"] + r["gradients"] + r["optimizer"] for r in ranks)
            one_held = base["parameters"] + base["gradients"] + base["optimizer"]
            rss = max(r["peak_rss"] for r in ranks)
            print(f"  ZeRO {stage}, 2 ranks: {held / 2**20:.0f} MiB held per rank vs {one_held / 2**20:.0f} "
                  f"MiB in one process ({held / one_held:.3f}x); peak RSS {rss / 2**20:.0f} MiB "
                  f"(one process {base['peak_rss'] / 2**20:.0f})", flush=True)
            rows.append({"case": f"ZeRO {stage}, 2 processes: parameters + gradients + optimiser state per rank",
                         "ours": held / 2**20, "peer": one_held / 2**20, "unit": "MiB",
                         "ratio": one_held / held,
                         "detail": {"ranks": ranks, "one_process": base}})
            rows.append({"case": f"ZeRO {stage}, 2 processes: peak RSS per rank", "ours": rss / 2**20,
                         "peer": base["peak_rss"] / 2**20, "unit": "MiB", "ratio": base["peak_rss"] / rss})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="JSON rows to write (train.json; ZeRO rows to train_zero.json)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-1b", action="store_true")
    ap.add_argument("--skip-zero", action="store_true")
    ap.add_argument("--only-zero", action="store_true", help="the ZeRO memory rows only")
    ap.add_argument("--one-side", choices=("ours", "peer"), help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="bench-1b", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, default=512, help=argparse.SUPPRESS)
    ap.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_side:
        import mindspore as ms
        import torch

        torch.set_num_threads(args.threads)
        ms.device_context.cpu.op_tuning.threads_num(args.threads)
        print(json.dumps(one_side(args.one_side, args.preset, args.batch, args.length, args.recompute,
                                  args.rounds)))
        return 0

    import mindspore as ms
    import torch
    import transformers
    from emu3_lm.config import Emu3LMConfig

    torch.set_num_threads(args.threads)
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    meta = {"threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__,
            "mindspore": ms.__version__}
    rows = []
    small = Emu3LMConfig.from_name("bench-1b", **SMALL, attention_dropout=0.0)
    if args.only_zero:
        args.skip_1b = True
    else:
        rows.append(throughput("small (hidden 256, 4 layers, vocab 184622)", small, 2, 512, False, args.rounds))
    for r in rows:
        r.update(bench="train", meta=meta)

    def write():
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))

    if rows:
        write()
    if not args.skip_1b:
        try:
            rows.append(throughput_apart("bench-1b", "bench-1b", 1, 512, True, args.rounds, args.threads))
            rows[-1].update(bench="train", meta=meta)
            write()
        except RuntimeError as exc:  # e.g. killed for memory: keep the rows measured so far
            print(f"  bench-1b: {str(exc).splitlines()[0]}", flush=True)
    if not args.skip_zero:
        zrows = zero_memory(args.threads)
        zmeta = {"config": "small (hidden 256, 4 layers, vocab 184622)", "processes": 2,
                 "peer": "one process, ZeRO 0", "mindspore": ms.__version__}
        for r in zrows:
            r.update(bench="train_zero", meta=zmeta, peer_label="one process")
        if args.out:
            (args.out.parent / "train_zero.json").write_text(json.dumps(zrows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
