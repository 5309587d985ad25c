"""`emu3 train ...`: preparing fine-tuning data, fine-tuning, and training a vision tokenizer.

  emu3 train prepare-t2i --captions FILE.jsonl --vq VQ_DIR --out DIR
  emu3 train prepare-vqa --conversations FILE.json --image-root DIR --vq VQ_DIR --out DIR
  emu3 train prepare-video --videos FILE.jsonl --vq VQ_DIR --out DIR [--frames N]
  emu3 train sft --data SPEC [--data SPEC ...] --model LM_DIR [--task t2i|vqa|video] --out OUT
                 --steps N --batch-size B --max-length L [--nproc N] ...
  emu3 train vq --images DIR [--videos DIR] --out OUT [--config PRESET|config.json|DIR] ...

SPEC is DIR/list/train.json, optionally followed by ,task=t2i|vqa|video, ,weight=W and
,loss_weight=X: several --data train on a mixture, each sample drawn from data set k with
probability proportional to its weight (default 1); each supervised token of data set k counts
X times in the step's loss (a weighted mean; default 1). The task is the spec's, else the one
the list file records, else --task.

The prepare commands write DIR/feature/<name>.ckpt (one sample each: VQ codes and text) and,
last, DIR/list/train.json, the file training reads: the format of BAAI's and mindone's
scripts. `sft` writes OUT/metrics.jsonl, OUT/checkpoint-STEP/ and OUT/final/; so does `vq`,
whose checkpoints are vision tokenizers (`--vq` of the other commands, `emu3 vq`).
MindSpore is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from emu3_vq.cli import UserError, add_runtime_options, apply_runtime

from .prepare import T2I_IMAGE_AREA, VIDEO_IMAGE_AREA, VQA_IMAGE_AREA


def register(subparsers) -> None:
    """Add the `train` command group to the `emu3` parser."""
    train = subparsers.add_parser("train", help="fine-tuning: prepare data, supervised fine-tuning; train a "
                                                "vision tokenizer",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = train.add_subparsers(dest="train_command", metavar="COMMAND")
    sub.required = True

    t2i = sub.add_parser("prepare-t2i", help="images + captions (JSONL) -> text-to-image training data")
    t2i.add_argument("--captions", required=True, metavar="FILE.jsonl",
                     help='one {"image": path relative to this file, "text": caption} per line')
    _prepare_options(t2i, T2I_IMAGE_AREA)
    t2i.set_defaults(func=run_prepare_t2i)

    vqa = sub.add_parser("prepare-vqa", help="images + LLaVA-style conversations (JSON) -> VQA training data")
    vqa.add_argument("--conversations", required=True, metavar="FILE.json",
                     help='a JSON list of {"id", "image", "conversations": [{"from": "human", "value"}, '
                          '{"from": "gpt", "value"}]}')
    vqa.add_argument("--image-root", required=True, metavar="DIR", help="the directory the records' images are under")
    _prepare_options(vqa, VQA_IMAGE_AREA)
    vqa.set_defaults(func=run_prepare_vqa)

    video = sub.add_parser("prepare-video",
                           help="videos + captions (JSONL) -> video continuation training data")
    video.add_argument("--videos", required=True, metavar="FILE.jsonl",
                       help='one {"video": path relative to this file (a folder of frames, a GIF or an MP4), '
                            '"text": caption} per line')
    video.add_argument("--frames", type=int, default=None, metavar="N",
                       help="take the first N frames of each video (a multiple of 4; a shorter video is a bad "
                            "record); default: all, their number a multiple of 4")
    _prepare_options(video, VIDEO_IMAGE_AREA, what="frames")
    video.set_defaults(func=run_prepare_video)

    _add_sft(sub)
    _add_vq(sub)


def _prepare_options(p, default_area: int, what: str = "images") -> None:
    p.add_argument("--vq", metavar="VQ_DIR|ORG/NAME",
                   help="vision tokenizer checkpoint: a directory or a hub repo id (default: the default "
                        "model's, emu3-shapes)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory: DIR/feature/*.ckpt and DIR/list/train.json")
    p.add_argument("--image-area", type=int, default=default_area, metavar="N",
                   help=f"scale {what} to about N pixels before tokenising (default: {default_area}"
                        + (", the reference scripts')" if what == "images" else ")"))
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's DIR/list and DIR/feature (refused otherwise)")
    p.add_argument("--skip-bad", action="store_true",
                   help=f"skip records with a missing or unreadable {'image' if what == 'images' else 'video'}"
                        " or an empty text (reported and counted) instead of stopping")
    p.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                   help="compile the vision tokenizer (each new image size costs a compilation); "
                        "auto: as `emu3 vq` (default: auto)")
    add_runtime_options(p)


def _jit(value: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[value]


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _report(result) -> None:
    for line in result.problems:
        print(f"emu3: skipped: {line}", file=sys.stderr)
    skipped = f", {_count(result.skipped, 'bad record')} skipped" if result.skipped else ""
    print(f"wrote {_count(result.written, 'sample')} to {result.feature_dir}{skipped}")
    print(result.list_path)


def _vq(args):
    """--vq, or the default model's vision tokenizer (with a note)."""
    if args.vq is not None:
        return args.vq
    from emu3_vq.defaults import vq_dir

    return str(vq_dir(quiet=False))


def run_prepare_t2i(args) -> None:
    from .prepare import prepare_t2i

    apply_runtime(args)
    _report(prepare_t2i(args.captions, _vq(args), args.out, image_area=args.image_area, skip_bad=args.skip_bad,
                        jit=_jit(args.jit), overwrite=args.overwrite, dtype=args.dtype))


def run_prepare_vqa(args) -> None:
    from .prepare import prepare_vqa

    apply_runtime(args)
    _report(prepare_vqa(args.conversations, args.image_root, _vq(args), args.out, image_area=args.image_area,
                        skip_bad=args.skip_bad, jit=_jit(args.jit), overwrite=args.overwrite, dtype=args.dtype))


def run_prepare_video(args) -> None:
    from .prepare import prepare_video

    apply_runtime(args)
    _report(prepare_video(args.videos, _vq(args), args.out, image_area=args.image_area, frames=args.frames,
                          skip_bad=args.skip_bad, jit=_jit(args.jit), overwrite=args.overwrite, dtype=args.dtype))


def _add_sft(sub) -> None:
    p = sub.add_parser(
        "sft", help="supervised fine-tuning (text-to-image, VQA, video continuation or a mixture) on "
                    "prepared data",
        description="Fine-tune an Emu3 LM on data made by prepare-t2i / prepare-vqa / prepare-video (or the "
                    "reference's scripts), one data set or a weighted mixture. Writes OUT/metrics.jsonl, "
                    "OUT/checkpoint-STEP/ every --save-every steps and OUT/final/ (loads with "
                    "Emu3ForCausalLM.from_pretrained and emu3 generate --model). "
                    "Several processes: --nproc N launches N with msrun, or run the same command under "
                    "msrun yourself on a cluster.")
    from .trainer import SftConfig as d  # its defaults; the module imports no MindSpore

    p.add_argument("--data", required=True, action="append", metavar="SPEC",
                   help="DIR/list/train.json of a prepared data set, optionally with ,task=t2i|vqa|video, "
                        ",weight=W (default 1) and ,loss_weight=X (default 1); repeat for a mixture, sampled "
                        "in proportion to the weights, each data set's supervised tokens counting X times in "
                        "the loss")
    p.add_argument("--model", metavar="DIR",
                   help="LM checkpoint directory to start from (default: the default model, emu3-shapes)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: --model)")
    p.add_argument("--task", choices=("t2i", "vqa", "video"), default=None,
                   help="task of data whose --data spec and list file name none (prepare-* record theirs)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--steps", required=True, type=int, help="optimiser steps")
    p.add_argument("--batch-size", required=True, type=int,
                   help="global batch per optimiser step (split over data-parallel processes and --accumulate)")
    p.add_argument("--max-length", required=True, type=int, metavar="L",
                   help="sequence length; every sample is padded to it, a longer one is an error")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help=f"final learning rate (default {d.min_lr})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help=f"linear warmup steps (default {d.warmup_steps})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW decay, not on norm weights and biases (default {d.weight_decay})")
    p.add_argument("--clip-grad-norm", type=float, default=d.clip_grad_norm,
                   help=f"clip the global gradient norm to this; 0: off (default {d.clip_grad_norm})")
    p.add_argument("--accumulate", type=int, default=d.accumulate, metavar="K",
                   help="micro-steps per optimiser step (default 1)")
    p.add_argument("--null-prompt-prob", type=float, default=d.null_prompt_prob,
                   help=f"t2i and video: probability of an empty caption (default {d.null_prompt_prob})")
    p.add_argument("--recompute", action="store_true", help="recompute each layer in the backward")
    p.add_argument("--freeze-layers", type=int, default=0, metavar="N", help="do not train the first N layers")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=d.dtype,
                   help="parameter dtype; fp16 uses dynamic loss scaling; bf16 needs an accelerator")
    p.add_argument("--dropout", type=float, default=None,
                   help="attention/residual dropout (default: the checkpoint's attention_dropout)")
    p.add_argument("--seed", type=int, default=d.seed, help="sample order, null prompts, dropout (default 0)")
    p.add_argument("--sequence-parallel", type=int, default=1, metavar="P",
                   help="split each sequence over P processes (Ulysses)")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=0,
                   help="shard optimiser state (1), + gradients (2), + parameters (3) over data-parallel "
                        "processes")
    p.add_argument("--save-every", type=int, default=0, metavar="N", help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue from the latest OUT/checkpoint-STEP")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="launch N processes on this machine with msrun (default 1)")
    add_runtime_options(p, dtype=False)  # --dtype above: the training dtype
    p.set_defaults(func=_run_sft)


def _run_sft(args) -> None:
    from . import launch, parallel, trainer

    if args.model is None:
        from emu3_vq.defaults import lm_dir

        args.model = str(lm_dir(quiet=parallel.launched_by_msrun()))
    config = trainer.SftConfig(
        data=args.data, model=args.model, tokenizer=args.tokenizer, task=args.task, out=args.out,
        steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
        min_lr=args.min_lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        clip_grad_norm=args.clip_grad_norm, accumulate=args.accumulate,
        null_prompt_prob=args.null_prompt_prob, recompute=args.recompute, freeze_layers=args.freeze_layers,
        dtype=args.dtype, dropout=args.dropout, seed=args.seed, sequence_parallel=args.sequence_parallel,
        zero_stage=args.zero_stage, save_every=args.save_every, resume=args.resume)
    config.validate()  # before any process starts
    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    if args.device_id is not None and (args.nproc > 1 or parallel.launched_by_msrun()):
        raise UserError("--device-id picks one chip; with several processes each takes the chip of its local "
                        "rank (msrun)")
    if args.nproc > 1 and not parallel.launched_by_msrun():
        runtime = [arg for flag in ("device", "threads") if getattr(args, flag) is not None
                   for arg in (f"--{flag}", str(getattr(args, flag)))]
        rc = launch.launch(args.nproc, [launch.emu3_script(), *_sft_argv(config), *runtime],
                           log_dir=str(Path(config.out) / "msrun_log"))
        if rc != 0:
            raise UserError(f"the {args.nproc} training processes failed (msrun exit status {rc}); "
                            f"their logs are in {Path(config.out) / 'msrun_log'}")
        return
    apply_runtime(args)
    summary = trainer.train(config)
    last = summary["last"]
    if last is not None:
        print(f"emu3: trained {summary['steps']} steps (last loss {last['loss']:.4f}); weights in {summary['final']}",
              file=sys.stderr)


def _sft_argv(config) -> list[str]:
    """`train sft` arguments that give `config` again: what each msrun worker runs."""
    argv = ["train", "sft"]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            argv += [arg for item in value for arg in (flag, str(item))]
        elif value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


def _add_vq(sub) -> None:
    p = sub.add_parser(
        "vq", help="train a vision tokenizer (VQ-VAE) from scratch on images and video clips",
        description="Train an Emu3 vision tokenizer from scratch: L1 + L2 reconstruction, codebook and "
                    "commitment losses (straight-through), the codebook initialised by k-means of the "
                    "untrained encoder's latents and its unused codes restarted on latents. Writes "
                    "OUT/metrics.jsonl, OUT/checkpoint-STEP/ every --save-every steps and OUT/final/, "
                    "each a vision tokenizer directory (Emu3VQModel.from_pretrained, emu3 vq, --vq). "
                    "fp32, one process. See docs/training.md.")
    from emu3_vq.config import PRESETS

    from .vq_train import VQTrainConfig as d  # its defaults; the module imports no MindSpore

    p.add_argument("--images", required=True, metavar="DIR",
                   help="a directory of images (png, jpg, jpeg, bmp, webp; searched recursively)")
    p.add_argument("--videos", metavar="DIR", default=None,
                   help="a directory of videos (folders of frames, GIF or MP4 files): each step adds "
                        "--clip-batch-size random clips of --clip-latent-frames x temporal_downsample_factor "
                        "(4) frames")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--config", default=d.config, metavar="PRESET|FILE|DIR",
                   help=f"the architecture: a preset ({', '.join(sorted(PRESETS))}), a config.json, or a "
                        f"checkpoint directory holding one (its weights are not used) (default: {d.config})")
    p.add_argument("--init", default=None, metavar="VQ_DIR",
                   help="start from this vision tokenizer's weights and architecture (--config is then not "
                        "used; no k-means initialisation): train an existing tokenizer further")
    p.add_argument("--image-size", type=int, default=d.image_size, metavar="N",
                   help="images and frames are resized to N x N; a multiple of the spatial factor "
                        f"(default {d.image_size})")
    p.add_argument("--steps", type=int, default=d.steps, metavar="N", help=f"optimiser steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help=f"images a step (default {d.batch_size})")
    p.add_argument("--clip-batch-size", type=int, default=d.clip_batch_size, metavar="N",
                   help=f"video clips a step, with --videos (default {d.clip_batch_size})")
    p.add_argument("--clip-latent-frames", type=int, default=d.clip_latent_frames, metavar="N",
                   help="latent frames a clip encodes to; 1 never trains the decoder on a second latent "
                        "frame, so a tokenizer meant for video continuation needs 2 or more "
                        f"(default {d.clip_latent_frames})")
    p.add_argument("--lr", type=float, default=d.lr, metavar="LR", help=f"peak learning rate (default {d.lr})")
    p.add_argument("--min-lr", type=float, default=d.min_lr, metavar="LR",
                   help=f"final learning rate of the cosine (default {d.min_lr})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, metavar="N",
                   help=f"linear warmup steps from 0 (default {d.warmup_steps})")
    p.add_argument("--beta", type=float, default=d.beta, metavar="B", help=f"commitment loss weight (default {d.beta})")
    p.add_argument("--restart-every", type=int, default=d.restart_every, metavar="N",
                   help="every N steps move each code not chosen in those steps onto a latent of the batch; "
                        f"0: never (default {d.restart_every})")
    p.add_argument("--kmeans-batches", type=int, default=d.kmeans_batches, metavar="N",
                   help="initialise the codebook with k-means of the latents of N batches; 0: random "
                        f"(default {d.kmeans_batches})")
    p.add_argument("--seed", type=int, default=d.seed, metavar="N",
                   help=f"initial weights, batches, k-means, restarts (default {d.seed})")
    p.add_argument("--save-every", type=int, default=d.save_every, metavar="N",
                   help="checkpoint every N steps (default 0: only OUT/final)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest OUT/checkpoint-STEP, with the same settings (none yet: start "
                        "afresh)")
    add_runtime_options(p, dtype=False)  # trained in fp32 only
    p.set_defaults(func=_run_vq)


def _run_vq(args) -> None:
    from .vq_train import VQTrainConfig, train_vq

    config = VQTrainConfig(
        images=args.images, out=args.out, videos=args.videos, config=args.config, init=args.init,
        image_size=args.image_size,
        steps=args.steps, batch_size=args.batch_size, clip_batch_size=args.clip_batch_size,
        clip_latent_frames=args.clip_latent_frames, lr=args.lr,
        min_lr=args.min_lr, warmup_steps=args.warmup_steps, beta=args.beta, restart_every=args.restart_every,
        kmeans_batches=args.kmeans_batches, seed=args.seed, save_every=args.save_every, resume=args.resume)
    config.validate()  # before MindSpore loads
    apply_runtime(args)
    try:
        result = train_vq(config)
    except FloatingPointError as exc:  # diverged: a message, not a traceback
        raise UserError(str(exc)) from None
    print(f"emu3: trained {config.steps} steps (last loss {result['loss']:.4f}, PSNR {result['psnr']:.2f} dB, "
          f"{result['codes_used']} of {result['codebook_size']} codes used in the last batch); "
          f"vision tokenizer in {result['final']}", file=sys.stderr)
