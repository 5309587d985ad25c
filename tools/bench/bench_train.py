"""Training benchmark: emu3_train's train step against transformers + torch.optim.AdamW, same weights.

    python tools/bench/bench_train.py --out bench-results/train.json [--threads 2] [--skip-1b] [--skip-zero]

Throughput: tokens/s of whole optimiser steps (forward, backward, global-norm clipping, AdamW)
on one batch, fp32, dropout off, side by side in one process, in turns (ours, peer, ours, ...)
so that load from other processes hits both alike; the best of the rounds each. Two configs:
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


def throughput(name: str, cfg, batch: int, length: int, recompute: bool, rounds: int, threads: int) -> dict:
    import mindspore as ms
    import torch
    import transformers
    from emu3_lm.model import Emu3ForCausalLM
    from emu3_train.engine import EngineConfig, TrainEngine

    torch.manual_seed(0)
    peer = transformers.Emu3ForCausalLM(transformers.Emu3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, attention_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}))
    ours = Emu3ForCausalLM(cfg, dtype=ms.float32, init_weights=False)
    ours.load_state_dict({k: v.detach().numpy() for k, v in peer.state_dict().items()})
    if recompute:
        peer.gradient_checkpointing_enable()
        for layer in ours.model.layers:
            layer.recompute()
    peer.train()
    engine = TrainEngine(ours, EngineConfig(clip_grad_norm=5.0, weight_decay=0.1))
    decay = set(transformers.Trainer.get_decay_parameter_names(None, peer))
    params = dict(peer.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in params.items() if n in decay], "weight_decay": 0.1},
                             {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0}],
                            lr=1e-5, betas=(0.9, 0.95), eps=1e-6)
    data = make_batch(cfg, batch, length)
    t_ids, t_mask = torch.tensor(data["input_ids"], dtype=torch.long), torch.tensor(data["attention_mask"])
    t_labels = torch.tensor(data["labels"], dtype=torch.long)
    tokens = batch * length

    def ours_step():
        t = time.perf_counter()
        result = engine.step([data], 1e-5)
        return time.perf_counter() - t, result.loss

    def peer_step():
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = peer(input_ids=t_ids, attention_mask=t_mask, labels=t_labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), 5.0)
        opt.step()
        return time.perf_counter() - t, float(out.loss.detach())

    first_ours, first_peer = ours_step(), peer_step()  # compile, allocate moments
    print(f"  {name}: first step ours {first_ours[0]:.1f} s (compiles), peer {first_peer[0]:.1f} s; "
          f"losses {first_ours[1]:.5f} / {first_peer[1]:.5f}", flush=True)
    ours_t, peer_t = [], []
    for _ in range(rounds):
        ours_t.append(ours_step()[0])
        peer_t.append(peer_step()[0])
    o, p = tokens / min(ours_t), tokens / min(peer_t)
    print(f"  {name}: ours {o:.1f} tokens/s, peer {p:.1f} tokens/s ({o / p:.2f}x)", flush=True)
    return {"case": f"train step, {name}, {batch} x {length} tokens" + (", recompute" if recompute else ""),
            "ours": o, "peer": p, "unit": "tokens/s", "ratio": o / p,
            "first_losses": [first_ours[1], first_peer[1]]}


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
    args = ap.parse_args(argv)

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
    rows.append(throughput("small (hidden 256, 4 layers, vocab 184622)", small, 2, 512, False, args.rounds,
                           args.threads))
    if not args.skip_1b:
        rows.append(throughput("bench-1b", Emu3LMConfig.from_name("bench-1b", attention_dropout=0.0), 1, 512,
                               True, args.rounds, args.threads))
    for r in rows:
        r.update(bench="train", meta=meta)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
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
