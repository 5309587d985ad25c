"""Decoding benchmark: emu3_decoding (MindSpore) against transformers' `generate` (torch CPU).

    python tools/bench/bench_decoding.py --out bench-results/decoding.json [--size 32] [--threads N]

One process, the LM preset 'bench-1b' of docs/benchmarks.md (real vocabulary, 468 M parameters)
with the peer's random weights (transformers' Emu3ForCausalLM, saved by `save_pretrained` and
loaded with our `Emu3ForCausalLM.from_pretrained`), and the real VQ architecture, likewise.

- Text-to-image, 32x32 tokens (ratio 1:1, image_area 256*256: 1059 generated tokens), the
  original recipe: CFG 3.0 with the original negative prompt, top-k 2048 sampling, the prefix
  constraint, VQ decode of the codes included. The peer runs it as image_generation.py does:
  `UnbatchedClassifierFreeGuidanceLogitsProcessor` then `PrefixConstrainedLogitsProcessor`
  (the original helper) in `generate`. Ours: `loop.generate` with the constraint table,
  batched guidance and the visual slice of lm_head. Our step graphs are compiled by a short
  warm-up run (one image row) first; that compile time is reported apart (`ours_compile_s`).
- Per-token cost against position: mean step time over the first and the last tenth of the
  image, both sides (from progress timestamps / a timing logits processor).
- VQA on one 256x256 image: VQ encode, prefill of the 1000-token understanding prompt, greedy
  decoding of --vqa-tokens tokens (eos suppressed on both sides so the lengths match).

Prompts are built as token ids with the Emu3 layout (bos + text + boi + "32*32" + img) from
random ordinary ids of the right lengths: no released tokenizer file is at hand, and tokenising
costs nothing next to decoding. Writes JSON rows {"bench": "decoding", "case", "ours", "peer",
"unit", "ratio", ...} (ratio above 1: ours faster) and prints a table.
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
for pkg in ("emu3-vq", "emu3-lm", "emu3-decoding"):
    sys.path.insert(0, str(ROOT / "packages" / pkg / "src"))

PROMPT_TOKENS = 12  # "a red circle. masterpiece, film grained, best quality." is about this long
NEGATIVE_TOKENS = 40  # the original negative prompt is about this long
SIZE_TOKENS = 5  # "32*32": digits one by one, as the original tokenizer splits them


def prompts(ids, rng, h: int, w: int):
    def text(n):
        return rng.integers(0, ids.pad, n).tolist()  # ordinary (non-special) ids

    prefix = [ids.boi, *text(SIZE_TOKENS), ids.img]
    return [ids.bos, *text(PROMPT_TOKENS), *prefix], [ids.bos, *text(NEGATIVE_TOKENS), *prefix]


def original_prefix_fn(ids, height, width, torch):
    """Emu3PrefixConstrainedLogitsHelper of the original code, for one image size."""
    visual = list(range(ids.visual_start, ids.visual_stop))

    def fn(batch_id, input_ids):
        pos = torch.nonzero(input_ids == ids.img, as_tuple=True)[0][0]
        offset = input_ids.shape[0] - pos
        if offset % (width + 1) == 0:
            return (ids.eol,)
        if offset == (width + 1) * height + 1:
            return (ids.eof,)
        if offset == (width + 1) * height + 2:
            return (ids.eoi,)
        if offset == (width + 1) * height + 3:
            return (ids.eos,)
        if offset > (width + 1) * height + 3:
            return (ids.pad,)
        return visual

    return fn


def early_late(stamps: list[float], start: float) -> tuple[float, float]:
    """Mean seconds per step over the first and the last tenth of the steps (the first
    interval, which holds the prefill, left out)."""
    t = np.diff(np.asarray([start] + stamps))[1:]
    k = max(1, len(t) // 10)
    return float(t[:k].mean()), float(t[-k:].mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the JSON rows here")
    parser.add_argument("--size", type=int, default=32, help="image side in tokens (default: 32)")
    parser.add_argument("--vqa-tokens", type=int, default=64, help="tokens to generate for VQA (default: 64)")
    parser.add_argument("--threads", type=int, help="threads for both (default: MindSpore's)")
    parser.add_argument("--preset", default="bench-1b", help="LM preset (default: bench-1b)")
    parser.add_argument("--no-peer", action="store_true", help="time ours only (quick checks)")
    args = parser.parse_args(argv)

    import mindspore as ms
    import torch
    import transformers
    from emu3_decoding.loop import generate
    from emu3_decoding.sampling import GREEDY, Sampling
    from emu3_lm.blocks import FREE, VisualIds, extract_codes, image_table
    from emu3_lm.config import Emu3LMConfig
    from emu3_lm.model import Emu3ForCausalLM
    from emu3_vq.checkpoint import hf_config_dict
    from emu3_vq.config import Emu3VQConfig
    from emu3_vq.model import Emu3VQModel
    from transformers.generation import (
        LogitsProcessor,
        LogitsProcessorList,
        PrefixConstrainedLogitsProcessor,
        UnbatchedClassifierFreeGuidanceLogitsProcessor,
    )

    if args.threads:
        ms.set_context(runtime_num_threads=args.threads)
    threads = args.threads or int(ms.get_context("runtime_num_threads"))
    torch.set_num_threads(threads)

    # ---- the same random weights on both sides ----
    cfg = Emu3LMConfig.from_name(args.preset)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    text_config = transformers.Emu3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
    peer = transformers.Emu3ForCausalLM(text_config).eval()
    vq_config = Emu3VQConfig.from_name("emu3-visiontokenizer")
    hf_vq = {k: v for k, v in hf_config_dict(vq_config).items() if k not in ("model_type", "architectures")}
    peer_vq = transformers.Emu3VQVAE(transformers.Emu3VQVAEConfig(**hf_vq)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        peer.save_pretrained(Path(tmp) / "lm")
        peer_vq.save_pretrained(Path(tmp) / "vq")
        model = Emu3ForCausalLM.from_pretrained(Path(tmp) / "lm", dtype=ms.float32)
        vq = Emu3VQModel.from_pretrained(Path(tmp) / "vq", jit=True)
    gc.collect()
    n_params = sum(p.numel() for p in peer.parameters())
    print(f"models ready in {time.perf_counter() - t0:.0f} s: LM {n_params / 1e6:.0f} M parameters, "
          f"{threads} threads each", flush=True)

    ids = VisualIds.from_config(cfg)
    rng = np.random.default_rng(0)
    h = w = args.size
    cond, neg = prompts(ids, rng, h, w)
    table = image_table(h, w, ids)
    n_new = len(table)
    sampling = Sampling(top_k=2048)
    rows = []

    # ---- ours: text-to-image ----
    warm = table.copy()
    warm[w + 1:] = np.where(warm[w + 1:] == FREE, ids.visual_start, warm[w + 1:])  # sample one row only
    t0 = time.perf_counter()
    generate(model, [cond], negative_prompts=[neg], cfg_scale=3.0, table=warm, sampling=sampling, seed=1)
    vq.decode(np.zeros((1, h, w), np.int32)).asnumpy()  # the VQ decoder graph for this size
    compile_s = time.perf_counter() - t0
    stamps: list[float] = []

    def on_step(p):  # one stamp per decoded position (not the forced tail reported at the end)
        if p.step == len(stamps) + 1:
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    tokens = generate(model, [cond], negative_prompts=[neg], cfg_scale=3.0, table=table, sampling=sampling,
                      seed=0, progress=on_step)[0]
    t_gen = time.perf_counter() - t0
    codes = extract_codes(tokens, 1, h, w, ids)
    t1 = time.perf_counter()
    image = vq.decode(codes.astype(np.int32)).asnumpy()
    t_vq = time.perf_counter() - t1
    ours_t2i = time.perf_counter() - t0
    ours_early, ours_late = early_late(stamps, t0)
    print(f"ours: text-to-image {ours_t2i:.1f} s (decode {t_gen:.1f} s, VQ {t_vq:.1f} s; "
          f"compile {compile_s:.1f} s before); per token {ours_early * 1e3:.1f} ms early, "
          f"{ours_late * 1e3:.1f} ms late", flush=True)
    assert image.shape == (1, 3, 8 * h, 8 * w)

    # ---- peer: text-to-image, the original recipe ----
    class Stamp(LogitsProcessor):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    peer_t2i = peer_early = peer_late = None
    if not args.no_peer:
        stamp = Stamp()
        processors = LogitsProcessorList([
            UnbatchedClassifierFreeGuidanceLogitsProcessor(3.0, peer, unconditional_ids=torch.tensor([neg])),
            PrefixConstrainedLogitsProcessor(original_prefix_fn(ids, h, w, torch), num_beams=1),
            stamp,
        ])
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.no_grad():
            mask = torch.ones(1, len(cond), dtype=torch.long)
            out = peer.generate(torch.tensor([cond]), attention_mask=mask, logits_processor=processors,
                                do_sample=True, top_k=2048, max_new_tokens=n_new, eos_token_id=ids.eos,
                                pad_token_id=ids.pad)
            peer_codes = extract_codes(out[0, len(cond):].numpy(), 1, h, w, ids)
            peer_image = peer_vq.decode(torch.tensor(peer_codes)).numpy()
        peer_t2i = time.perf_counter() - t0
        assert peer_image.shape == image.shape
        peer_early, peer_late = early_late(stamp.times, t0)
        print(f"peer: text-to-image {peer_t2i:.1f} s; per token {peer_early * 1e3:.1f} ms early, "
              f"{peer_late * 1e3:.1f} ms late", flush=True)

    case = f"text-to-image {h}x{w} tokens, CFG 3, top-k 2048, constraint, VQ decode"
    rows.append({"bench": "decoding", "case": case, "ours": round(ours_t2i, 2),
                 "peer": None if peer_t2i is None else round(peer_t2i, 2), "unit": "s",
                 "ratio": None if peer_t2i is None else round(peer_t2i / ours_t2i, 2),
                 "ours_compile_s": round(compile_s, 1),
                 "ratio_with_compile": None if peer_t2i is None
                 else round(peer_t2i / (ours_t2i + compile_s), 2),
                 "generated_tokens": n_new, "ours_vq_decode_s": round(t_vq, 2)})
    for label, o, p in [("first tenth", ours_early, peer_early), ("last tenth", ours_late, peer_late)]:
        rows.append({"bench": "decoding", "case": f"text-to-image per token, {label} of the image",
                     "ours": round(o * 1e3, 1), "peer": None if p is None else round(p * 1e3, 1),
                     "unit": "ms",
                     "ratio": None if p is None else round(p / o, 2)})

    # ---- VQA: one 256x256 image, greedy ----
    pixels = rng.uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32)
    question = rng.integers(0, ids.pad, 8).tolist()
    system = rng.integers(0, ids.pad, 10).tolist()

    def vqa_prompt(img_codes):
        hh = img_codes.shape[0]
        rows_ = np.concatenate([img_codes + ids.visual_start, np.full((hh, 1), ids.eol)], axis=1).reshape(-1)
        block = [ids.boi, *rng_size, ids.img, *rows_.tolist(), ids.eof, ids.eoi]
        return [ids.bos, *system, *block, *question]

    rng_size = rng.integers(0, ids.pad, SIZE_TOKENS).tolist()
    k = args.vqa_tokens
    # warm-up: compile the encoder graph, the prefill and our step graphs for this prompt length
    # and cache size (the cache is sized by prompt + max_new_tokens, so the warm-up asks for k)
    generate(model, [vqa_prompt(vq.encode(pixels).asnumpy()[0].astype(np.int64))], max_new_tokens=k,
             sampling=GREEDY, eos_id=-1)
    t0 = time.perf_counter()
    img_codes = vq.encode(pixels).asnumpy()[0].astype(np.int64)
    prompt = vqa_prompt(img_codes)
    stamps = []
    answer = generate(model, [prompt], max_new_tokens=k, sampling=GREEDY, eos_id=-1,
                      progress=lambda p: stamps.append(time.perf_counter()))[0]
    ours_vqa = time.perf_counter() - t0
    ours_decode_rate = (k - 1) / (stamps[-1] - stamps[0])
    print(f"ours: VQA {k} tokens after a {len(prompt)}-token prompt in {ours_vqa:.1f} s "
          f"({k / ours_vqa:.2f} tokens/s overall, {ours_decode_rate:.2f} tokens/s decoding)", flush=True)
    assert len(answer) == k

    peer_vqa = peer_decode_rate = None
    if not args.no_peer:
        stamp = Stamp()
        t0 = time.perf_counter()
        with torch.no_grad():
            pc = peer_vq.encode(torch.tensor(pixels), torch.tensor([[256, 256]])).image_tokens[0].numpy()
            pp = vqa_prompt(pc.astype(np.int64))
            peer.generate(torch.tensor([pp]), attention_mask=torch.ones(1, len(pp), dtype=torch.long),
                          logits_processor=LogitsProcessorList([stamp]), do_sample=False, max_new_tokens=k,
                          min_new_tokens=k, eos_token_id=ids.eos, pad_token_id=ids.pad)
        peer_vqa = time.perf_counter() - t0
        peer_decode_rate = (k - 1) / (stamp.times[-1] - stamp.times[0])
        print(f"peer: VQA in {peer_vqa:.1f} s ({k / peer_vqa:.2f} tokens/s overall, {peer_decode_rate:.2f} "
              f"tokens/s decoding)", flush=True)
    rows.append({"bench": "decoding", "case": f"VQA 256x256 image, {k} greedy tokens, overall",
                 "ours": round(k / ours_vqa, 2), "peer": None if peer_vqa is None else round(k / peer_vqa, 2),
                 "unit": "tokens/s", "ratio": None if peer_vqa is None else round(peer_vqa / ours_vqa, 2),
                 "prompt_tokens": len(prompt)})
    rows.append({"bench": "decoding", "case": "VQA decoding only", "ours": round(ours_decode_rate, 2),
                 "peer": None if peer_decode_rate is None else round(peer_decode_rate, 2), "unit": "tokens/s",
                 "ratio": None if peer_decode_rate is None
                 else round(ours_decode_rate / peer_decode_rate, 2)})

    rows[0]["meta"] = {"preset": args.preset, "params": n_params, "threads": threads,
                       "mindspore": ms.__version__, "torch": torch.__version__,
                       "transformers": transformers.__version__}
    print(f"\n{'case':70s} {'ours':>9s} {'peer':>9s} {'unit':>9s} {'ratio':>6s}")
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.4g}"
        print(f"{r['case']:70s} {fmt(r['ours']):>9s} {fmt(r['peer']):>9s} {r['unit']:>9s} "
              f"{fmt(r['ratio']):>6s}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
