"""The whole recipe of the default model (emu3-shapes), from nothing, with this project's packages.

    python tools/shapes/recipe.py --out shapes-run            # under an hour on 2 CPU cores
    python tools/shapes/recipe.py --out shapes-run --export   # then copy it into packages/emu3-shapes

Stages, each a command a user could type, each skipped when its output is already complete
(so an interrupted run continues where it stopped; `--stop-after STAGE` ends a run early),
each timed into OUT/timings.json:

1. data        the shapes world (tools/shapes/data.py), 32x32 pixels, shapes 14-22 pixels across,
               from --seed: 3000 images for the tokenizer and the LM, 600 videos
2. vq          `emu3 train vq`: the vision tokenizer (8x8 codes of 512 an image; 8-frame clips,
               two latent frames), 550 steps
3. lm-init     a byte-level BPE trained with the tokenizers library on the data's texts and the
               VQA prompt, Emu3's special tokens and the 512 visual tokens (emu3.tiktoken, the
               original layout); an LM with random weights for that vocabulary
4. prepare     `emu3 train prepare-t2i`, `prepare-vqa`, `prepare-video` with the new tokenizer;
               prep/vqa-shape lists the VQA samples that ask for the shape
5. sft         `emu3 train sft` on the mixture t2i : vqa : video = 2 : 2 : 1, VQA's supervised
               tokens weighted 32 in the loss (`,loss_weight=32`), 1150 steps
   sft2        from sft/final, 850 steps more (lr back up to 5e-4), the shape question added as
               a data set of its own: t2i : vqa : vqa-shape : video = 2 : 2 : 2 : 2
6. export      (--export) the checkpoints, generation_config.json and training.json into
               packages/emu3-shapes/src/emu3_shapes/{lm,vq}

The scores (`tools/shapes/evaluate.py`) are measured on the exported model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXPORT = ROOT / "packages" / "emu3-shapes" / "src" / "emu3_shapes"

IMAGE_SIZE = 32
VIDEO_FRAMES = 8  # two latent frames: the continuation is given one and makes the other
VQA_TEMPLATE = ("You are a helpful assistant. USER: ", ". ASSISTANT:")

# what each stage runs with (recorded in training.json)
SETTINGS = {
    # shapes 14-22 px: at 10-18 px a circle and a square differ by ~20 corner pixels, which the
    # tokenizer's 4x4-pixel codes rounded away (the 0.1.0 tokenizer kept the shape 64.5% at 10-18 px,
    # 85.5% at 14-22, docs/shapes.md)
    "data": {"images": 3000, "videos": 600, "heldout": 200, "image_size": IMAGE_SIZE, "shape_sizes": [14, 22]},
    # clips of two latent frames (8 frames): a tokenizer trained on one-latent-frame clips decoded a
    # second latent frame as a smear, so a continued video made no picture (docs/shapes.md)
    "vq": {"steps": 550, "batch_size": 12, "clip_batch_size": 1, "clip_latent_frames": 2, "lr": 1e-3, "min_lr": 5e-5,
           "warmup_steps": 10},
    "tokenizer": {"vocab_size": 400},
    "lm": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 512},
    # sampling weights, and loss weights: a VQA answer is ~3 supervised tokens against an image's 72
    # visual tokens, so unweighted the answers were ~3% of the loss and the LM learnt only the background
    "sft": {"steps": 1150, "batch_size": 16, "max_length": 168, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 50,
            "weight_decay": 0.1, "clip_grad_norm": 1.0, "null_prompt_prob": 0.1,
            "weights": {"t2i": 2, "vqa": 2, "video": 1}, "loss_weights": {"t2i": 1, "vqa": 32, "video": 1}},
    # from sft/final, warmed back up, with the shape question as a data set of its own: the LM had
    # learnt colours, background and position but named the shape 41% of the time (1.3 shape
    # answers a step); the same 600 steps without it reached 46.5%, with it 56.5%. Video weighted 2:
    # at 1 (and 1,000 + 650 steps) the continuations moved the shape on 35% of the time, at 2 (and
    # 1,150 + 850 steps) 55%, a copy of the given frame 15%
    "sft2": {"steps": 850, "batch_size": 16, "max_length": 168, "lr": 5e-4, "min_lr": 5e-5, "warmup_steps": 20,
             "weight_decay": 0.1, "clip_grad_norm": 1.0, "null_prompt_prob": 0.1,
             "weights": {"t2i": 2, "vqa": 2, "vqa-shape": 2, "video": 2},
             "loss_weights": {"t2i": 1, "vqa": 32, "vqa-shape": 32, "video": 1}},
    # the pipeline's defaults for this model (generation_config.json)
    "generation": {"guidance_scale": 2.0, "top_k": 8, "top_p": 1.0, "temperature": 1.0, "negative_prompt": "",
                   "positive_prompt_suffix": "", "max_new_tokens": 16, "do_sample": False},
}


def emu3(*args: str, cwd: Path) -> None:
    """Run an `emu3` command of this environment; stop the recipe if it fails."""
    command = [str(Path(sys.executable).with_name("emu3")), *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def texts_for_tokenizer(data: Path) -> list[str]:
    return data.joinpath("corpus.txt").read_text(encoding="utf-8").splitlines() + list(VQA_TEMPLATE)


def build_initial_lm(data: Path, out: Path, seed: int) -> Path:
    """The tokenizer trained on the data's texts, and a random-weight LM for its vocabulary."""
    from emu3_decoding.demo import random_lm_state
    from emu3_lm.config import Emu3LMConfig, emu3_token_ids
    from emu3_lm.tiny_assets import build_tiktoken_tokenizer, train_bpe_ranks
    from emu3_vq.config import Emu3VQConfig
    from emu3_vq.weights import atomic_write, write_checkpoint

    codebook = Emu3VQConfig.from_json_file(out / "vq" / "final" / "config.json").codebook_size
    ranks = train_bpe_ranks(texts_for_tokenizer(data), SETTINGS["tokenizer"]["vocab_size"])
    target = out / "lm-init"
    tmp = out / ".lm-init.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiktoken_tokenizer(tmp, codebook, ranks=ranks)
    config = Emu3LMConfig.from_name("tiny", **SETTINGS["lm"], image_area=IMAGE_SIZE * IMAGE_SIZE,
                                    **emu3_token_ids(len(ranks), codebook))
    write_checkpoint(tmp, random_lm_state(config, seed))
    text = json.dumps({**config.to_dict("original"), "torch_dtype": "float32"}, indent=2) + "\n"
    atomic_write(tmp / "config.json", lambda f: f.write(text.encode("utf-8")))
    tmp.rename(target)
    return target


def shape_questions(out: Path) -> Path:
    """prep/vqa-shape: a list of the prepared VQA samples that ask "What shape is it?" (the
    same sample files), for sft2 to draw from as a data set of its own."""
    from emu3_train import dataset

    records = json.loads((out / "data" / "vqa.json").read_text(encoding="utf-8"))
    prepared = dataset.read_list(out / "prep" / "vqa" / "list" / "train.json")
    if len(prepared.files) != len(records):  # prepare-vqa keeps every record, in order
        raise RuntimeError(f"prep/vqa holds {len(prepared.files)} samples for {len(records)} records")
    files = [f for f, r in zip(prepared.files, records)
             if r["conversations"][0]["value"].endswith("What shape is it?")]
    return dataset.write_list(dataset.list_path(out / "prep" / "vqa-shape"), prepared.prefix, files, task="vqa")


STAGES = ("data", "vq", "lm-init", "prepare", "sft", "sft2")


def stages(out: Path, seed: int):
    data, vq = out / "data", out / "vq" / "final"
    s = SETTINGS

    def make_data():
        sys.path.insert(0, str(HERE.parent))
        from shapes.data import write_dataset

        write_dataset(data, seed=seed, images=s["data"]["images"], videos=s["data"]["videos"],
                      heldout=s["data"]["heldout"], image_size=IMAGE_SIZE,
                      shape_sizes=tuple(s["data"]["shape_sizes"]), overwrite=True)

    def train_vq():
        v = s["vq"]
        emu3("train", "vq", "--images", "data/images", "--videos", "data/videos", "--out", "vq",
             "--image-size", str(IMAGE_SIZE), "--steps", str(v["steps"]), "--batch-size", str(v["batch_size"]),
             "--clip-batch-size", str(v["clip_batch_size"]),
             "--clip-latent-frames", str(v["clip_latent_frames"]), "--lr", str(v["lr"]), "--min-lr", str(v["min_lr"]),
             "--warmup-steps", str(v["warmup_steps"]), "--seed", str(seed), "--save-every", "100", "--resume",
             cwd=out)

    def prepare():
        area = str(IMAGE_SIZE * IMAGE_SIZE)
        common = ["--vq", str(vq), "--image-area", area, "--overwrite", "--jit", "on"]  # one graph, one size
        emu3("train", "prepare-t2i", "--captions", "data/captions.jsonl", "--out", "prep/t2i", *common, cwd=out)
        emu3("train", "prepare-vqa", "--conversations", "data/vqa.json", "--image-root", "data", "--out", "prep/vqa",
             *common, cwd=out)
        emu3("train", "prepare-video", "--videos", "data/videos.jsonl", "--frames", str(VIDEO_FRAMES),
             "--out", "prep/video", *common, cwd=out)
        shape_questions(out)

    def sft(stage: str, start: str, seed: int = seed):
        f = s[stage]
        data_args = []
        for name, weight in f["weights"].items():  # each list records its task (prep/vqa-shape: vqa)
            data_args += ["--data", f"prep/{name}/list/train.json,weight={weight},"
                                    f"loss_weight={f['loss_weights'][name]}"]
        emu3("train", "sft", *data_args, "--model", start, "--out", stage, "--steps", str(f["steps"]),
             "--batch-size", str(f["batch_size"]), "--max-length", str(f["max_length"]), "--lr", str(f["lr"]),
             "--min-lr", str(f["min_lr"]), "--warmup-steps", str(f["warmup_steps"]),
             "--weight-decay", str(f["weight_decay"]), "--clip-grad-norm", str(f["clip_grad_norm"]),
             "--null-prompt-prob", str(f["null_prompt_prob"]), "--seed", str(seed), "--save-every", "300",
             "--resume", cwd=out)

    return [
        ("data", data / "manifest.json", make_data),
        ("vq", vq / "config.json", train_vq),
        ("lm-init", out / "lm-init" / "config.json", lambda: build_initial_lm(data, out, seed)),
        ("prepare", out / "prep" / "vqa-shape" / "list" / "train.json", prepare),
        ("sft", out / "sft" / "final" / "config.json", lambda: sft("sft", "lm-init")),
        ("sft2", out / "sft2" / "final" / "config.json", lambda: sft("sft2", "sft/final", seed=seed + 1)),
    ]


def export(out: Path, timings: dict, seed: int) -> None:
    """Copy the trained checkpoints (original layout) into the emu3-shapes package, with the
    pipeline defaults and the record of the run."""
    lm, vq = EXPORT / "lm", EXPORT / "vq"
    for target in (lm, vq):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "emu3.tiktoken", "emu3_vision_tokens.txt",
                 "tokenizer_config.json"):
        shutil.copy2(out / "sft2" / "final" / name, lm / name)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy2(out / "vq" / "final" / name, vq / name)
    (lm / "generation_config.json").write_text(json.dumps(SETTINGS["generation"], indent=2) + "\n")

    def metrics(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    vq_metrics = metrics(out / "vq" / "metrics.jsonl")
    sft_metrics = [m for stage in ("sft", "sft2") for m in metrics(out / stage / "metrics.jsonl")]
    record = {
        "seed": seed,
        "settings": SETTINGS,
        "seconds": timings,
        "vq": {"steps": len(vq_metrics), "first": vq_metrics[0], "last": vq_metrics[-1],
               "loss": [m["loss"] for m in vq_metrics], "psnr": [m["psnr"] for m in vq_metrics]},
        "sft": {"steps": len(sft_metrics), "first": sft_metrics[0], "last": sft_metrics[-1],
                "loss": [m["loss"] for m in sft_metrics]},
    }
    (EXPORT / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"exported to {EXPORT}")


def record_eval(eval_json: Path) -> None:
    """Put the scores of `tools/shapes/evaluate.py` into the exported training.json."""
    report = json.loads(Path(eval_json).read_text())
    vqa = report["vqa"]
    record = json.loads((EXPORT / "training.json").read_text())
    record["vqa_accuracy"] = {"colour": vqa["What colour is the shape?"], "shape": vqa["What shape is it?"],
                              "background": vqa["What colour is the background?"],
                              "position": vqa["Where is the shape?"], "describe": vqa["Describe the image."],
                              "images": vqa["n_images"]}
    record["t2i_accuracy"] = {k.removesuffix("_accuracy"): v for k, v in report["t2i"].items()}
    record["video"] = report["video"]
    record["reconstruction"] = report["reconstruction"]
    (EXPORT / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="working directory of the run (needed but with --record-eval)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", action="store_true", help="copy the result into packages/emu3-shapes")
    parser.add_argument("--stop-after", choices=STAGES, default=None, help="end the run after this stage")
    parser.add_argument("--record-eval", type=Path, metavar="EVAL_JSON",
                        help="only put evaluate.py's scores into the exported training.json")
    args = parser.parse_args(argv)
    if args.record_eval:
        record_eval(args.record_eval)
        return 0
    if args.out is None:
        parser.error("--out is required")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for name, done, run in stages(out, args.seed):
        if done.is_file():
            print(f"{name}: done ({done})")
            if name == args.stop_after:
                break
            continue
        start = time.perf_counter()
        run()
        timings[name] = round(time.perf_counter() - start, 1)
        timings_path.write_text(json.dumps(timings, indent=2) + "\n")
        print(f"{name}: {timings[name]:.0f} s", flush=True)
        if name == args.stop_after:
            break
    print(f"total {sum(timings.values()):.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    if args.export:
        export(out, timings, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
