"""LM benchmark: emu3_lm (MindSpore) against transformers' Emu3ForCausalLM (torch CPU), same weights.

    python tools/bench/bench_lm.py --out bench-results/lm.json [--threads 2] [--config bench-1b]

One process, the 'bench-1b' config of docs/benchmarks.md by default (real vocabulary, fp32), the
peer's random weights copied into ours. Measures prefill tokens/s (64- and 512-token prompts),
greedy decode tokens/s after a 64-token prompt, per-token decode latency (greedy step: forward,
full-vocabulary logits, argmax) at contexts 512/2048/8192 with the cache filled with random
keys/values up to that point (ours: static cache sized context+16; peer: DynamicCache as its
generate() uses), weight bytes read per token / time against a large-array-sum read bandwidth,
and the peak resident memory of loading a sharded bf16 checkpoint, relative to its size on disk
(each in a fresh subprocess). Writes JSON rows {"bench", "case", "ours", "peer", "unit", "ratio"}
(ratio > 1: ours better) and prints a table.
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


def rows_table(rows) -> str:
    lines = [f"{'case':52s} {'ours':>10s} {'peer':>10s} {'unit':>10s} {'ratio':>7s}"]
    for r in rows:
        lines.append(f"{r['case']:52s} {r['ours']:10.4g} {r['peer']:10.4g} {r['unit']:>10s} "
                     f"{r['ratio']:7.3g}")
    return "\n".join(lines)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(ours_fn, peer_fn, rounds: int) -> tuple[float, float]:
    """Best result of each, run in turns (ours, peer, ours, ...) so that load from other processes
    on a shared machine hits both alike. Each fn returns its own figure (seconds)."""
    ours, peer = [], []
    for _ in range(rounds):
        ours.append(ours_fn())
        peer.append(peer_fn())
    return min(ours), min(peer)


# ---- memory of loading a checkpoint, measured in a fresh process ---------------------------

_OURS_LOAD = """
import json, sys
def mib(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
import mindspore as ms
from emu3_lm.model import Emu3ForCausalLM
base = mib('VmRSS')
m = Emu3ForCausalLM.from_pretrained(sys.argv[1], dtype=ms.float32)
print(json.dumps({'base': base, 'peak': mib('VmHWM'), 'final': mib('VmRSS')}))
"""

_PEER_LOAD = """
import json, sys
def mib(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
import torch, transformers
cfg = transformers.Emu3TextConfig(**json.loads(sys.argv[2]))
base = mib('VmRSS')
m = transformers.Emu3ForCausalLM.from_pretrained(sys.argv[1], config=cfg, dtype=torch.float32)
print(json.dumps({'base': base, 'peak': mib('VmHWM'), 'final': mib('VmRSS')}))
"""


def load_memory(script: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, "GLOG_v": "3"})
    if out.returncode:
        raise RuntimeError(f"load subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="JSON rows to write")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch and MindSpore")
    ap.add_argument("--config", default="bench-1b", help="Emu3LMConfig preset")
    ap.add_argument("--new-tokens", type=int, default=32, help="greedy decode length")
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args(argv)

    import mindspore as ms
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    from emu3_decoding.loop import decode_head
    from emu3_lm.config import Emu3LMConfig
    from emu3_lm.model import Emu3ForCausalLM

    cfg = Emu3LMConfig.from_name(args.config)
    text_config = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=max(cfg.max_position_embeddings, 9216),
        rms_norm_eps=cfg.rms_norm_eps, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
    t0 = time.perf_counter()
    torch.manual_seed(0)
    peer = transformers.Emu3ForCausalLM(transformers.Emu3TextConfig(**text_config)).eval()
    ours = Emu3ForCausalLM(cfg, dtype=ms.float32, init_weights=False)
    ours.load_state_dict({k: v.detach().numpy() for k, v in peer.state_dict().items()})
    ours.set_train(False)
    print(f"built {args.config} ({cfg.num_parameters() / 1e6:.0f} M parameters) in "
          f"{time.perf_counter() - t0:.0f} s, {args.threads} threads", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    meta = {"config": args.config, "threads": args.threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "mindspore": ms.__version__}

    def row(case, o, p, unit, higher_is_better=True):
        r = {"bench": "lm", "case": case, "ours": float(o), "peer": float(p), "unit": unit,
             "ratio": float(o / p if higher_is_better else p / o), "meta": meta}
        rows.append(r)
        print(f"  {case}: ours {o:.4g} {unit}, peer {p:.4g} {unit}", flush=True)

    # read bandwidth of this machine, now: sum of a 1 GiB array with the same threads
    big = torch.ones(256 * 1024 * 1024, dtype=torch.float32)
    bandwidth = big.numel() * 4 / min(timed(big.sum) for _ in range(6)) / 1e9
    print(f"  large-array read bandwidth: {bandwidth:.1f} GB/s", flush=True)

    # the full-vocabulary head as emu3-decoding multiplies with it
    head = decode_head(ours, 0, cfg.vocab_size)
    head_matmul = ms.ops.MatMul(transpose_b=not getattr(head, "transposed", False))

    @ms.jit
    def greedy_head(h):  # full-vocabulary logits and argmax in one graph (a pynative argmax costs ~1 ms)
        return ms.ops.argmax(head_matmul(h, head.weight), -1).astype(ms.int32)

    def ours_greedy(h):
        return greedy_head(h)

    # ---- prefill (both compute the logits of the last position only, as generate() does) ----
    for n in (64, 512):
        ids = rng.integers(0, cfg.first_visual_token_id, (1, n)).astype(np.int32)
        ours.setup_cache(1, n + 64)
        t_ids, p_ids = ms.Tensor(ids), torch.tensor(ids, dtype=torch.long)

        def ours_prefill():
            return timed(lambda: ours_greedy(ours.prefill(t_ids)).asnumpy())

        def peer_prefill():
            with torch.no_grad():
                return timed(lambda: peer(p_ids, use_cache=True, logits_to_keep=1).logits.argmax(-1))

        ours_prefill(), peer_prefill()  # compile / warm up
        t_ours, t_peer = alternate(ours_prefill, peer_prefill, 3)
        row(f"prefill {n} tokens", n / t_ours, n / t_peer, "tokens/s")

    # ---- greedy decode after a 64-token prompt ---------------------------------------------
    n_new = args.new_tokens
    prompt = rng.integers(0, cfg.first_visual_token_id, (1, 64)).astype(np.int32)
    ours.setup_cache(1, 64 + n_new + 8)
    slots = [ms.Tensor(64 + i, ms.int32) for i in range(n_new)]

    def run_ours():
        tok = ours_greedy(ours.prefill(ms.Tensor(prompt)))
        out = [tok]
        t = time.perf_counter()
        for i in range(n_new):
            tok = ours_greedy(ours.decode_step(tok, slots[i]))
            out.append(tok)
        out[-1].asnumpy()
        return time.perf_counter() - t, [int(x.asnumpy()[0]) for x in out]

    def run_peer():
        with torch.no_grad():
            out = peer(torch.tensor(prompt, dtype=torch.long), use_cache=True, logits_to_keep=1)
            tok = out.logits[:, -1].argmax(-1)
            past, toks = out.past_key_values, [tok]
            t = time.perf_counter()
            for _ in range(n_new):
                out = peer(tok[:, None], past_key_values=past, use_cache=True)
                tok, past = out.logits[:, -1].argmax(-1), out.past_key_values
                toks.append(tok)
            return time.perf_counter() - t, [int(x[0]) for x in toks]

    results = {}

    def keep(name, run):
        seconds, toks = run()
        results[name] = toks
        return seconds

    run_ours()  # compile
    t_ours, t_peer = alternate(lambda: keep("ours", run_ours), lambda: keep("peer", run_peer), 3)
    tokens_ours, tokens_peer = results["ours"], results["peer"]
    agree = sum(a == b for a, b in zip(tokens_ours, tokens_peer))
    print(f"  greedy tokens agree: {agree}/{len(tokens_ours)}", flush=True)
    meta["greedy_tokens_agree"] = f"{agree}/{len(tokens_ours)}"
    row(f"greedy decode after 64-token prompt ({n_new} tokens)", n_new / t_ours, n_new / t_peer, "tokens/s")
    # every weight but the embedding table is read once per token
    weight_bytes = (cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size) * 4
    row(f"weights read per token / time (bandwidth {bandwidth:.0f} GB/s)",
        weight_bytes * n_new / t_ours / 1e9, weight_bytes * n_new / t_peer / 1e9, "GB/s")

    # ---- per-token latency at long contexts ------------------------------------------------
    kv_shape = (1, cfg.num_key_value_heads, 0, cfg.head_dim)
    steps, rounds = 6, 3
    for ctx in (int(c) for c in args.contexts.split(",")):
        capacity = ctx + 2 + steps * rounds
        ours.setup_cache(1, capacity)
        cache = ours.cache
        valid = np.zeros(cache.valid.shape, np.int32)
        valid[:ctx] = 1
        cache.valid.set_data(ms.Tensor(valid))
        for i in range(cfg.num_hidden_layers):  # slot s of head h is row h*S + s
            kv = rng.standard_normal((cfg.num_key_value_heads, capacity, cfg.head_dim), dtype=np.float32)
            cache.k[i].set_data(ms.Tensor(kv.reshape(-1, cfg.head_dim)))
            cache.v[i].set_data(ms.Tensor(kv[::-1].reshape(-1, cfg.head_dim).copy()))
        past = transformers.DynamicCache(config=peer.config)
        for i in range(cfg.num_hidden_layers):
            k = torch.randn(kv_shape[:2] + (ctx,) + kv_shape[3:])
            past.update(k, k.flip(2), i)
        state = {"ours": ms.Tensor(np.array([7], np.int32)), "peer": torch.tensor([[7]]), "past": past,
                 "i": 0}

        def ours_steps(n=steps):
            times = []
            for _ in range(n):
                slot = ms.Tensor(ctx + state["i"], ms.int32)
                t = time.perf_counter()
                state["ours"] = ours_greedy(ours.decode_step(state["ours"], slot))
                state["ours"].asnumpy()
                times.append(time.perf_counter() - t)
                state["i"] += 1
            return float(np.median(times))

        def peer_steps(n=steps):
            times = []
            with torch.no_grad():
                for _ in range(n):
                    pos = state["past"].get_seq_length()
                    t = time.perf_counter()
                    out = peer(state["peer"], position_ids=torch.tensor([[pos]]),
                               past_key_values=state["past"], use_cache=True)
                    state["peer"], state["past"] = out.logits[:, -1:].argmax(-1), out.past_key_values
                    times.append(time.perf_counter() - t)
            return float(np.median(times))

        ours_steps(2), peer_steps(2)  # compile / warm up
        lat_ours, lat_peer = alternate(ours_steps, peer_steps, rounds)
        ours.setup_cache(1, 1)  # free the big caches
        state.clear()  # drop the peer's cache
        del past
        row(f"decode latency at context {ctx}", lat_ours * 1e3, lat_peer * 1e3, "ms/token",
            higher_is_better=False)

    bandwidth_end = big.numel() * 4 / min(timed(big.sum) for _ in range(6)) / 1e9
    del big
    meta["read_bandwidth_GBps"] = f"{bandwidth:.1f} at start, {bandwidth_end:.1f} at end"
    print(f"  large-array read bandwidth at the end: {bandwidth_end:.1f} GB/s", flush=True)

    # ---- memory of loading a sharded bf16 checkpoint -----------------------------------------
    if not args.skip_memory:
        with tempfile.TemporaryDirectory(prefix="bench_lm_") as tmp:
            ours.save_pretrained(tmp, layout="original", dtype="bf16", max_shard_bytes=512 * 1024 * 1024)
            disk = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors")) / 2**20
            del ours, peer
            m_ours = load_memory(_OURS_LOAD, tmp)
            m_peer = load_memory(_PEER_LOAD, tmp, json.dumps(text_config))
        for name, m in (("ours", m_ours), ("peer", m_peer)):
            print(f"  load {name}: rss before {m['base']:.0f} MiB, peak {m['peak']:.0f}, "
                  f"after {m['final']:.0f}; checkpoint {disk:.0f} MiB", flush=True)
        row(f"peak RSS loading bf16 shards / size on disk ({disk:.0f} MiB)",
            (m_ours["peak"] - m_ours["base"]) / disk, (m_peer["peak"] - m_peer["base"]) / disk, "x disk",
            higher_is_better=False)

    print()
    print(rows_table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
