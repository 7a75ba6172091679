"""sklearn's 8x8 handwritten digits (1,797 images, bundled with scikit-learn: no download).

Pixels are integers 0..16; we map them affinely to [-1, 1] (x / 8 - 1), the range the diffusion
models are trained on. The train/test split is a fixed, stratified permutation, so the held-out
digits the quality metric compares against never enter training.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["digits", "digits_split"]

_SPLITS = ("train", "test", "all")


def _load() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # scikit-learn is a `book` extra, not a core dependency
        raise ImportError(
            "companion.lab.data.digits needs scikit-learn: pip install 'companion[data]'"
        ) from e
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.as_tensor(d.target, dtype=torch.int64)
    return x, y


def digits_split(n: int, labels: Tensor, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices (train, test) of a stratified split: ``test_fraction`` of every class is held out."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        k = round(test_fraction * idx.numel())
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


def digits(split: str = "train") -> tuple[Tensor, Tensor]:
    """Images (N, 1, 8, 8) in [-1, 1] (float32) and labels (N,) (int64) of ``split``.

    ``split`` is ``"train"`` (1,438 images), ``"test"`` (359, held out) or ``"all"``.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}; got {split!r}")
    x, y = _load()
    if split == "all":
        return x, y
    train, test = digits_split(x.shape[0], y)
    idx = train if split == "train" else test
    return x[idx], y[idx]
