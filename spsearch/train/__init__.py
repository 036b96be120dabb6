"""Training: ``TrainConfig`` -> ``train()`` -> ``TrainResult``, shared by ``train.py`` and the search."""
from .checkpoint import export_weights, load_checkpoint, load_weights
from .config import TrainConfig
from .loop import EpochCallback, TrainResult, build_model, evaluate, make_accelerator, train

__all__ = [
    'EpochCallback', 'TrainConfig', 'TrainResult', 'build_model', 'evaluate', 'export_weights', 'load_checkpoint',
    'load_weights', 'make_accelerator', 'train',
]
