"""VQ benchmark: emu3_vq (MindSpore) against transformers' Emu3VQVAE (torch CPU), same weights.

    python tools/bench/bench_vq.py --out bench-results/vq.json [--sizes 256,512] [--threads N]

One process, the real architecture of docs/benchmarks.md (ch 256, ch_mult [1,2,2,4], 2 res
blocks, attention at level 3, codebook 32768) with the peer's random weights, saved by the
peer (`Emu3VQVAE.save_pretrained`, the -hf layout) and loaded with
`Emu3VQModel.from_pretrained`. For each size: seconds per image to encode one image and to
decode its codes, best of --repeat runs after a warm-up call (our first call compiles the
graphs; its time is reported as `ours_first_s`). torch gets as many threads as MindSpore
uses (`runtime_num_threads`), or --threads for both. Writes JSON rows
{"bench": "vq", "case", "ours_s", "peer_s", "ratio_peer_over_ours", "unit": "s/image", ...}
and prints a table. --profile adds a per-stage breakdown of our time.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def profile_ours(model, x: np.ndarray, codes: np.ndarray, repeat: int) -> list[dict]:
    """Time our compiled stages one by one (graphs already compiled by the main run)."""
    import mindspore as ms

    rows = []
    h = ms.Tensor(x)
    names = ["encoder conv_in"] + [f"encoder level {i}" for i in range(len(model.encoder.down))] + [
        "encoder mid + out"]
    for name, stage in zip(names, model._encoder_stages):
        t, out = best(lambda stage=stage, h=h: stage(h).asnumpy(), repeat)
        rows.append((name, t))
        h = ms.Tensor(out)
    t, _ = best(lambda: model._codes_from_images(h).asnumpy(), repeat)
    rows.append(("encoder temporal + quantize", t))
    ct = ms.Tensor(codes.astype(np.int32))
    t, (hs, zq) = best(lambda: tuple(o.asnumpy() for o in model._latents(ct.expand_dims(1))), repeat)
    rows.append(("decoder codebook + temporal", t))
    h, z = ms.Tensor(hs[:, 0]), ms.Tensor(zq[:, 0])
    levels = len(model.decoder.up)
    names = ["decoder conv_in + mid"] + [f"decoder level {i}" for i in reversed(range(levels))] + [
        "decoder norm_out + conv_out"]
    for name, stage in zip(names, model._decoder_stages):
        t, out = best(lambda stage=stage, h=h: stage(h, z).asnumpy(), repeat)
        rows.append((name, t))
        h = ms.Tensor(out)
    return [{"stage": name, "s": round(s, 4)} for name, s in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the JSON rows here")
    parser.add_argument("--sizes", default="256,512", help="comma-separated square image sides")
    parser.add_argument("--threads", type=int, help="threads for both (default: MindSpore's)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per case (best is kept)")
    parser.add_argument("--profile", action="store_true", help="also time our stages separately")
    args = parser.parse_args(argv)

    import mindspore as ms
    import torch
    from transformers import Emu3VQVAE, Emu3VQVAEConfig

    sys.path.insert(0, str(ROOT / "packages/emu3-vq/src"))
    from emu3_vq.checkpoint import hf_config_dict
    from emu3_vq.config import Emu3VQConfig
    from emu3_vq.model import Emu3VQModel

    if args.threads:
        ms.set_context(runtime_num_threads=args.threads)
    threads = args.threads or int(ms.get_context("runtime_num_threads"))
    torch.set_num_threads(threads)

    config = Emu3VQConfig.from_name("emu3-visiontokenizer")
    hf = {k: v for k, v in hf_config_dict(config).items() if k not in ("model_type", "architectures")}
    torch.manual_seed(0)
    peer = Emu3VQVAE(Emu3VQVAEConfig(**hf)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        peer.save_pretrained(tmp)
        ours = Emu3VQModel.from_pretrained(tmp)
    n_params = sum(p.numel() for p in peer.parameters())

    rows = []
    rng = np.random.default_rng(0)
    for side in [int(s) for s in args.sizes.split(",")]:
        x = rng.uniform(-1, 1, (1, 3, side, side)).astype(np.float32)
        xt = torch.tensor(x)
        sizes = torch.tensor([[side, side]])

        # the peer first: torch gives its memory back, MindSpore's CPU pool keeps what it took
        with torch.no_grad():
            enc_peer, peer_codes = best(
                lambda xt=xt, sizes=sizes: peer.encode(xt, sizes).image_tokens[0].numpy()[None], args.repeat)
            ct = torch.tensor(peer_codes.astype(np.int64))
            dec_peer, peer_img = best(lambda ct=ct: peer.decode(ct).numpy(), args.repeat)
        gc.collect()

        t0 = time.perf_counter()
        codes = ours.encode(x).asnumpy()
        enc_first = time.perf_counter() - t0
        enc_ours, codes = best(lambda x=x: ours.encode(x).asnumpy(), args.repeat)
        agree = float((codes == peer_codes).mean())
        t0 = time.perf_counter()
        img = ours.decode(peer_codes).asnumpy()
        dec_first = time.perf_counter() - t0
        dec_ours, img = best(lambda c=peer_codes: ours.decode(c).asnumpy(), args.repeat)
        diff = float(np.abs(img - peer_img).max())

        for case, o, p, first, extra in [
            (f"encode {side}x{side}", enc_ours, enc_peer, enc_first, {"codes_agree": agree}),
            (f"decode {side}x{side}", dec_ours, dec_peer, dec_first, {"max_abs_diff": diff}),
        ]:
            row = {"bench": "vq", "case": case, "ours_s": round(o, 4), "peer_s": round(p, 4),
                   "ratio_peer_over_ours": round(p / o, 3), "unit": "s/image",
                   "ours_first_s": round(first, 2), **extra}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.profile:
            for r in profile_ours(ours, x, peer_codes, args.repeat):
                print(f"  {side}x{side} {r['stage']:32s} {r['s']:8.3f} s", flush=True)

    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    meta = {"threads": threads, "params": n_params, "mindspore": ms.__version__, "torch": torch.__version__,
            "peak_rss_gb": round(peak, 1)}
    rows[0]["meta"] = meta
    print(f"\nVQ, real architecture ({n_params / 1e6:.0f} M parameters), random weights, fp32, "
          f"{threads} threads each")
    print(f"{'case':18s} {'ours s':>9s} {'peer s':>9s} {'peer/ours':>9s} {'ours 1st s':>10s}")
    for r in rows:
        print(f"{r['case']:18s} {r['ours_s']:9.3f} {r['peer_s']:9.3f} {r['ratio_peer_over_ours']:9.2f} "
              f"{r['ours_first_s']:10.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
