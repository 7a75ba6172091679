"""Quality of generated 8x8 digits, measured with the classifier the project trains and ships.

Frechet distance (Heusel et al. 2017, eq. 6, the FID formula) between Gaussians fitted to the
classifier's 64-dimensional penultimate features ("digits-classifier", >= 95% held-out accuracy):

    FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}),

and the accuracy of class-conditional samples: the fraction the classifier assigns to the label
they were generated for. FD is only comparable between runs with the same classifier, sample size
and reference set; the card of each model records the floor (train vs held-out real digits) next to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .models import Model, load

__all__ = ["frechet_distance", "classifier", "features", "class_accuracy", "digits_fd"]

CLASSIFIER = "digits-classifier"


def frechet_distance(feat_a: Tensor, feat_b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets of shape (N, d), in float64."""
    if feat_a.ndim != 2 or feat_b.ndim != 2 or feat_a.shape[1] != feat_b.shape[1]:
        raise ValueError(
            f"features must be (N, d) with equal d; got {tuple(feat_a.shape)}, {tuple(feat_b.shape)}"
        )
    if min(feat_a.shape[0], feat_b.shape[0]) < 2:
        raise ValueError("each feature set needs at least 2 rows to estimate a covariance")
    a, b = feat_a.double(), feat_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))
    # tr((S_a^1/2 S_b S_a^1/2)^1/2) through symmetric eigendecompositions: stable for PSD inputs.
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def classifier(root=None) -> Model:
    """The shipped digits classifier (``models/digits-classifier``)."""
    return load(CLASSIFIER, root)


def _as_input(x: Tensor, clf: Model) -> Tensor:
    # The classifier's own dtype and device: it is built in the default dtype, which chapters set to float64.
    p = next(clf.net.parameters())
    return x.to(device=p.device, dtype=p.dtype).clamp(-1, 1)


@torch.no_grad()
def features(x: Tensor, clf: Model) -> Tensor:
    """Penultimate-layer features (N, 64) of images (N, 1, 8, 8) in [-1, 1], in the classifier's dtype."""
    return clf.net.features(_as_input(x, clf))


@torch.no_grad()
def class_accuracy(x: Tensor, y: Tensor, clf: Model) -> float:
    """Fraction of images ``x`` that the classifier labels ``y``."""
    return float((clf.net(_as_input(x, clf)).argmax(1) == y).double().mean())


def digits_fd(x: Tensor, reference: Tensor, clf: Model) -> float:
    """FD between generated digits ``x`` and ``reference`` digits in the classifier's features."""
    return frechet_distance(features(x, clf), features(reference, clf))
