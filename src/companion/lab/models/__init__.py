"""Small networks the project trains and ships (package data, ``weights/`` here), and their loader.

A local ``models/`` folder (``make models``) overrides the shipped weights by name; see :mod:`.io`.

>>> import companion as cp
>>> m = cp.models.load("digits-unet-eps")          # checks the weights' SHA-256 against the card
>>> eps = m.cond(y=torch.arange(10), guidance=2.0)  # (x, t) -> guided eps for the solvers
"""

from .io import (
    Model,
    WeightsError,
    available,
    load,
    load_card,
    locate,
    models_dir,
    save,
    search_path,
    sha256,
    shipped_dir,
)
from .nets import ARCHITECTURES, DigitsClassifier, DigitsUNet, MLPScore, PotentialMLP, TimeEmbedding

__all__ = [
    "load",
    "load_card",
    "save",
    "available",
    "models_dir",
    "shipped_dir",
    "search_path",
    "locate",
    "sha256",
    "Model",
    "WeightsError",
    "MLPScore",
    "PotentialMLP",
    "DigitsUNet",
    "DigitsClassifier",
    "TimeEmbedding",
    "ARCHITECTURES",
]
