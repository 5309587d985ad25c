"""Worker of test_parallel.py: 3 engine steps per configuration, results written to files.

Under msrun (2 processes): `python parallel_worker.py --out DIR --configs sp2,dp2_zero0,...`;
tests import it and call `run("reference", out)` for the one-process run. Every process builds
the same tiny model (weights from a numpy seed) and the same global batch of 4 right-padded
rows; a data-parallel rank takes its half of the rows, split into `accumulate` micro-batches.

Per configuration, rank 0 writes <name>.npz (losses, grad norms, tokens, every weight "w/<name>"
and the gathered optimizer state "opt/<key>" after the 3 steps; "round_trip": whether loading that
state back and gathering it again gives it unchanged); every rank writes
<name>.rank<r>.json (its memory_report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# msrun runs this file in its scheduler process too, which serves the cluster inside
# parallel.init() and never returns from it: main() joins the world before building anything
from emu3_train import parallel

CONFIGS = {
    "reference": {"zero_stage": 0, "sequence_parallel": 1, "accumulate": 1},  # one process, the global batch
    "sp2": {"zero_stage": 0, "sequence_parallel": 2, "accumulate": 1},
    "dp2_zero0": {"zero_stage": 0, "sequence_parallel": 1, "accumulate": 1},
    "dp2_zero1": {"zero_stage": 1, "sequence_parallel": 1, "accumulate": 2},
    "dp2_zero2": {"zero_stage": 2, "sequence_parallel": 1, "accumulate": 2},
    "dp2_zero3": {"zero_stage": 3, "sequence_parallel": 1, "accumulate": 2},
    "sp2_zero3": {"zero_stage": 3, "sequence_parallel": 2, "accumulate": 2, "recompute": True},
    # 4 processes: 2 data-parallel groups of 2 sequence-parallel ranks (sub-groups)
    "dp2_sp2_zero2": {"zero_stage": 2, "sequence_parallel": 2, "accumulate": 1},
}
LRS = (2e-3, 1e-3, 5e-4)
CLIP = 1.0  # below the gradient norms (~3): clipping acts at every step, on norms taken across shards
ROWS, LENGTH = 4, 16


def weights(shapes: dict) -> dict:
    """The same random weights in every process: normal(0, 0.02), norms 1 + 0.1 normal."""
    import numpy as np

    rng = np.random.default_rng(1234)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    return out


def global_batch(cfg):
    """4 right-padded rows of length 16: bos, a prompt (labels -100), a supervised answer, padding."""
    import numpy as np

    rng = np.random.default_rng(7)
    lengths, prompts = (16, 13, 9, 11), (5, 3, 4, 6)
    ids = np.full((ROWS, LENGTH), cfg.pad_token_id, np.int32)
    mask = np.zeros((ROWS, LENGTH), np.int32)
    labels = np.full((ROWS, LENGTH), -100, np.int32)
    for r, (n, p) in enumerate(zip(lengths, prompts)):
        ids[r, 0] = cfg.bos_token_id
        ids[r, 1:n] = rng.integers(0, cfg.pad_token_id, n - 1)  # ordinary text tokens
        mask[r, :n] = 1
        labels[r, p:n] = ids[r, p:n]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def micro_batches(batch, dp_size: int, dp_rank: int, accumulate: int) -> list[dict]:
    """This data-parallel rank's rows, in `accumulate` micro-batches."""
    rows = ROWS // dp_size
    mine = {k: v[dp_rank * rows:(dp_rank + 1) * rows] for k, v in batch.items()}
    per = rows // accumulate
    return [{k: v[i * per:(i + 1) * per] for k, v in mine.items()} for i in range(accumulate)]


def run(name: str, out: str) -> None:
    import mindspore as ms
    import numpy as np
    from emu3_lm.config import Emu3LMConfig
    from emu3_lm.model import Emu3ForCausalLM
    from emu3_train.engine import EngineConfig, TrainEngine

    spec = dict(CONFIGS[name])
    cfg = Emu3LMConfig.from_name("tiny", attention_dropout=0.0)
    model = Emu3ForCausalLM(cfg, dtype=ms.float32, init_weights=False)
    model.load_state_dict(weights(model.checkpoint_shapes()))
    if spec.pop("recompute", False):  # each layer's forward (and its ZeRO-3 gathers) again in the backward
        for layer in model.model.layers:
            layer.recompute()
    world = parallel.ParallelConfig.detect(spec["sequence_parallel"])
    engine = TrainEngine(model, EngineConfig(clip_grad_norm=CLIP, **spec), world)
    batch = global_batch(cfg)
    losses, norms, tokens, times = [], [], [], []
    for lr in LRS:
        start = time.perf_counter()
        result = engine.step(micro_batches(batch, engine.dp_size, engine.dp_rank, spec["accumulate"]), lr)
        times.append(time.perf_counter() - start)
        losses.append(result.loss)
        norms.append(result.grad_norm)
        tokens.append(result.tokens)
    state = engine.state_dict()  # collective
    optimizer = engine.optimizer_state()  # collective
    engine.load_optimizer_state(optimizer)  # each rank takes its shard back
    again = engine.optimizer_state()
    round_trip = all(np.array_equal(again[k], v) for k, v in optimizer.items())
    report = dict(engine.memory_report(), rank=engine.rank, world_size=engine.world_size, step_seconds=times)
    with open(os.path.join(out, f"{name}.rank{engine.rank}.json"), "w") as f:
        json.dump(report, f)
    if engine.rank == 0:
        arrays = {"losses": np.array(losses), "norms": np.array(norms), "tokens": np.array(tokens),
                  "round_trip": np.array(round_trip)}
        arrays.update({f"w/{k}": v for k, v in state.items()})
        arrays.update({f"opt/{k}": v for k, v in optimizer.items()})
        np.savez(os.path.join(out, f"{name}.npz"), **arrays)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--configs", required=True, help="comma-separated names of CONFIGS")
    args = parser.parse_args(argv)
    parallel.init()
    for name in args.configs.split(","):
        start = time.perf_counter()
        run(name, args.out)
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
