"""Small networks the project trains and ships (``models/`` at the repository root), and their loader.

>>> import companion as cp
>>> m = cp.models.load("digits-unet-eps")          # checks the weights' SHA-256 against the card
>>> eps = m.cond(y=torch.arange(10), guidance=2.0)  # (x, t) -> guided eps for the solvers
"""

from .io import Model, WeightsError, available, load, load_card, models_dir, save, sha256
from .nets import ARCHITECTURES, DigitsClassifier, DigitsUNet, MLPScore, TimeEmbedding

__all__ = [
    "load",
    "load_card",
    "save",
    "available",
    "models_dir",
    "sha256",
    "Model",
    "WeightsError",
    "MLPScore",
    "DigitsUNet",
    "DigitsClassifier",
    "TimeEmbedding",
    "ARCHITECTURES",
]
