"""emu3-train: fine-tuning Emu3 on MindSpore, with numbers equal to transformers + torch.

    from emu3_train import prepare_t2i, SftConfig, train
    prepare_t2i("captions.jsonl", "VQ_DIR", "prepared")
    train(SftConfig(data="prepared/list/train.json", model="LM_DIR", task="t2i", out="run",
                    steps=1000, batch_size=8, max_length=4200))

Modules: `prepare` and `dataset` (data on disk), `sequences` (layouts and labels), `trainer`
(the loop, `emu3 train sft`), `vq_train` and `vq_loss` (training the vision tokenizer,
`emu3 train vq`), `engine` (the train step in every parallel mode), `parallel`,
`collectives`, `sequence_parallel`, `zero` (the distributed pieces), `optim` (AdamW, schedule,
clipping), `checkpoints`, `launch` (msrun), `commands` (the `emu3 train` CLI).
"""

__version__ = "0.1.0"

# Exported lazily: importing the package does not load MindSpore.
_EXPORTS = {
    "AdamW": "emu3_train.optim",
    "clip_by_global_norm": "emu3_train.optim",
    "cosine_with_min_lr": "emu3_train.optim",
    "param_groups": "emu3_train.optim",
    "prepare_t2i": "emu3_train.prepare",
    "prepare_vqa": "emu3_train.prepare",
    "prepare_video": "emu3_train.prepare",
    "SftDataset": "emu3_train.sequences",
    "SftConfig": "emu3_train.trainer",
    "train": "emu3_train.trainer",
    "EngineConfig": "emu3_train.engine",
    "TrainEngine": "emu3_train.engine",
    "VQTrainConfig": "emu3_train.vq_train",
    "train_vq": "emu3_train.vq_train",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
