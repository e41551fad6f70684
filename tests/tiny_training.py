"""The tiny training settings the training tests share (a few seconds on a CPU)."""

from __future__ import annotations

from perfnet.training.run import TrainConfig


def tiny_config(**kw) -> TrainConfig:
    """A tiny, fast training configuration; keyword arguments override its settings."""
    base = dict(
        model="unet",
        width=4,
        frames=24,
        epochs=6,
        pretrain_epochs=2,
        pretrain_size=32,
        crop=32,
        batch_size=4,
        lr=3e-3,
        lr_step_epochs=20,
        folds=2,
        fold=0,
        seed=3,
        accelerator="cpu",
        devices=1,
        progress=False,
    )
    return TrainConfig(**(base | kw))
