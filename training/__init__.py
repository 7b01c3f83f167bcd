"""Training of the SAR autoencoder codec: `python -m training` (train), `export`, `experiments`.

Modules: config (typed configuration), data (files, scene split, scaling on the training split,
patch datasets), quant (quantisation-aware latent noise), train (loop, DDP, checkpoints), evaluate
(validation metrics), checkpoint, export (model bundles), experiments (variant x latent matrix), plots.
"""

from .config import DataConfig, OptimConfig, RunConfig, TrainConfig

__all__ = ["TrainConfig", "DataConfig", "OptimConfig", "RunConfig"]
