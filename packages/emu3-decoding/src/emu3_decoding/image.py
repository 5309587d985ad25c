"""Text-to-image: the original recipe (image_generation.py of baaivision/Emu3), fast.

Prompt: bos + text + " masterpiece, film grained, best quality." + boi + "{H}*{W}" + img;
the negative prompt (the original one by default) laid out the same way; top-k 2048 sampling;
classifier-free guidance 3.0; the image-block constraint as a table (emu3_lm.blocks); the codes
decoded by the vision tokenizer through the processor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from emu3_lm.blocks import VisualIds, extract_codes, image_table, num_generated_tokens

from .constraint import stack_tables
from .guidance import check_scale
from .loop import Progress, check_context, generate
from .sampling import Sampling, check_seeds

POSITIVE_PROMPT = " masterpiece, film grained, best quality."
NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)


def sampled_range(model, processor) -> tuple[VisualIds, tuple[int, int]]:
    """The tokenizer's ids and the visual token ids that may be sampled: the visual tokens the VQ
    codebook can decode, checked against the model's vocabulary."""
    tok = processor.tokenizer
    ids = VisualIds.from_tokenizer(tok)
    codebook = tok.num_visual_tokens
    vq = getattr(processor, "vq_model", None)
    if vq is not None:
        codebook = min(codebook, int(vq.config.codebook_size))
    stop = ids.visual_start + codebook
    if stop > model.config.vocab_size:
        raise ValueError(f"the tokenizer's visual tokens end at id {stop}, beyond the model's vocabulary of "
                         f"{model.config.vocab_size}: model and tokenizer do not belong together")
    return ids, (ids.visual_start, stop)


def image_prompts(config, processor, prompts: list[str], ratios: list[str], image_area, cfg_scale: float,
                  negative_prompt: str, positive_suffix: str = POSITIVE_PROMPT):
    """(sizes in tokens, prompt ids, negative prompt ids or None) of a batch of images, checked
    against the model's context (`config.max_position_embeddings`) before anything of the images'
    size is allocated: an image_area of 10^12 would otherwise ask numpy for a constraint table of
    10^10 entries. Needs the tokenizer and the spatial factor only, no weights, so the `emu3
    generate image` command runs it before loading the models."""
    area = config.image_area if image_area is None else image_area
    sizes = [processor.generation_size(r, area) for r in ratios]
    cond = [processor.generation_prompt_ids(p + positive_suffix, h, w) for p, (h, w) in zip(prompts, sizes)]
    neg = None
    if cfg_scale != 1.0:
        neg = [processor.generation_prompt_ids(negative_prompt, h, w) for h, w in sizes]
    h, w = max(sizes, key=lambda size: num_generated_tokens(*size))
    check_context(config, max(len(p) for p in cond + (neg or [])), num_generated_tokens(h, w),
                  hint=f"an image of {h}x{w} tokens is too large: use a smaller image_area (--area)")
    return sizes, cond, neg


def generate_image(model, processor, prompt, ratio="1:1", image_area: int | None = None,
                   cfg_scale: float = 3.0, negative_prompt: str = NEGATIVE_PROMPT, top_k: int = 2048,
                   seed: int | None = None, batched_cfg: bool = True,
                   progress: Callable[[Progress], None] | None = None, *, top_p: float = 1.0,
                   temperature: float = 1.0, positive_suffix: str = POSITIVE_PROMPT) -> list:
    """Generate one image per prompt; returns a list of PIL images.

    prompt: a string or a list of strings (a batch). ratio: "W:H", one string or one per prompt.
    image_area: pixel area of the image (default: the model config's image_area, 720x720 for
    Emu3-Gen). cfg_scale: classifier-free guidance (1.0 turns it off), with `negative_prompt` as
    the unconditional branch; batched_cfg runs both branches as one batch (default), otherwise
    as two forwards over two caches (the original). top_k / top_p / temperature: sampling
    (temperature 0 is greedy). seed: reproducible sampling; one int per prompt gives each image
    its own: image i is then the image of its prompt generated alone with seed[i]. progress:
    called after each step with a `loop.Progress` (image rows done, tokens/s).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    ratios = [ratio] * len(prompts) if isinstance(ratio, str) else list(ratio)
    if len(ratios) != len(prompts):
        raise ValueError(f"{len(ratios)} ratios given for {len(prompts)} prompts")
    cfg_scale = check_scale(cfg_scale)
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    seed = check_seeds(seed, len(prompts))
    ids, vocab_range = sampled_range(model, processor)
    sizes, cond, neg = image_prompts(model.config, processor, prompts, ratios, image_area, cfg_scale,
                                     negative_prompt, positive_suffix)
    table = stack_tables([image_table(h, w, ids) for h, w in sizes], ids.pad)
    tokens = generate(model, cond, negative_prompts=neg, cfg_scale=cfg_scale, batched_cfg=batched_cfg,
                      table=table, vocab_range=vocab_range, sampling=sampling, seed=seed, progress=progress,
                      eos_id=ids.eos, pad_id=ids.pad, eol_id=ids.eol)
    images = []
    for row, (h, w) in zip(tokens, sizes):
        codes = extract_codes(row, 1, h, w, ids)[0]
        images.append(processor.decode_codes(codes.astype(np.int32)))
    return images
