"""The small networks the project trains: an MLP for 2-D data, a UNet for 8x8 digits, and a classifier.

Every diffusion network has the signature ``net(x, t, y=None)``: ``x`` of shape (B, ...), ``t`` the
continuous time in [0, 1] as a 0-d tensor, a float or shape (B,), and ``y`` class labels (B,) or None.
Label ``num_classes`` is the "no label" token that classifier-free guidance trains with dropout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "TimeEmbedding",
    "MLPScore",
    "PotentialMLP",
    "DigitsUNet",
    "DigitsClassifier",
    "MRRestorer",
    "ARCHITECTURES",
]


def _batch_t(t: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a 0-d or (B,) time to shape (B,) in the sample dtype."""
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(x.shape[0])


class TimeEmbedding(nn.Module):
    """Sinusoidal features of 1000 t (as DDPM's timestep embedding) followed by a 2-layer MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
        arg = 1000.0 * t[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))


class MLPScore(nn.Module):
    """Residual MLP on R^dim with a time embedding added to every hidden layer."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, num_classes: int = 0):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.t_emb = TimeEmbedding(hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.y_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        emb = self.t_emb(_batch_t(t, x))
        if self.y_emb is not None:
            emb = emb + self.y_emb(_labels(y, x, self.num_classes))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(F.silu(h + emb))
        return self.out(F.silu(h))


class PotentialMLP(nn.Module):
    """A score that is a gradient: u(x, t) = -|x|^2 / 2 + N(x, t) / sigma(t), score = grad_x u,
    eps = -sigma grad_x u = sigma x - grad_x N.

    N is a smooth MLP (SiLU, so that the Laplacian and the time derivative of the Fokker-Planck residual
    exist) of (x, t, log sigma(t)); sigma is that of ``VPLinear(beta_min, beta_max)``. Dividing by sigma
    lets N stay of order one where the score is of order 1 / sigma; the N(0, I) term is the exact
    log-density at t = 1 and keeps the tails, where no data are seen, pulled in (an MLP alone extrapolates
    linearly and lets the ODE's far samples run away). ``forward`` returns the eps prediction
    (so the solvers and :class:`~companion.lab.models.Model` use it as any eps network); :meth:`potential`
    returns u, the learned log-density up to a function of t.
    """

    def __init__(
        self, dim: int = 2, hidden: int = 64, depth: int = 2, beta_min: float = 0.1, beta_max: float = 20.0
    ):
        super().__init__()
        self.dim, self.num_classes = dim, 0
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        layers: list[nn.Module] = [nn.Linear(dim + 2, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden, 1))

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t) of VPLinear(beta_min, beta_max), in the dtype of t (differentiable)."""
        log_mean = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return torch.sqrt(-torch.expm1(2.0 * log_mean))

    def _n(self, x: Tensor, t: Tensor) -> Tensor:
        s = self.sigma(t)
        return self.mlp(torch.cat([x, t[:, None], torch.log(s)[:, None]], dim=1)).squeeze(1)

    def potential(self, x: Tensor, t: Tensor | float) -> Tensor:
        """u(x, t) of shape (B,) for x of shape (B, dim)."""
        tt = _batch_t(t, x)
        return self._n(x, tt) / self.sigma(tt) - 0.5 * x.square().sum(1)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        # The eps prediction -sigma grad u = -grad N needs autograd even under no_grad (sampling); the
        # graph is kept only while training or when x itself carries one, so sampling loops stay flat.
        keep = torch.is_grad_enabled() and (self.training or x.requires_grad)
        tt = _batch_t(t, x)
        with torch.enable_grad():
            xg = x if (keep and x.requires_grad) else x.detach().requires_grad_(True)
            (gn,) = torch.autograd.grad(self._n(xg, tt).sum(), xg, create_graph=keep)
        return self.sigma(tt)[:, None] * x - gn


def _labels(y: Tensor | None, x: Tensor, num_classes: int) -> Tensor:
    """Labels (B,), with None meaning "unconditional" (the null token ``num_classes``)."""
    if y is None:
        return torch.full((x.shape[0],), num_classes, device=x.device, dtype=torch.long)
    return torch.as_tensor(y, device=x.device, dtype=torch.long).expand(x.shape[0])


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding added between (DDPM's residual block)."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.e = nn.Linear(emb, c_out)
        self.n2, self.c2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.e(emb)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class DigitsUNet(nn.Module):
    """A two-level UNet for (B, 1, 8, 8) images: 8x8 with ``ch`` channels, 4x4 with ``2 ch``.

    Class-conditional through a label embedding added to the time embedding; label ``num_classes``
    is the null label used for classifier-free guidance.
    """

    def __init__(self, ch: int = 32, emb: int = 128, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.t_emb = TimeEmbedding(emb)
        self.y_emb = nn.Embedding(num_classes + 1, emb)
        self.inp = nn.Conv2d(1, ch, 3, padding=1)
        self.enc1 = _ResBlock(ch, ch, emb)
        self.down = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.enc2 = _ResBlock(2 * ch, 2 * ch, emb)
        self.mid = _ResBlock(2 * ch, 2 * ch, emb)
        self.dec2 = _ResBlock(4 * ch, 2 * ch, emb)
        self.up = nn.ConvTranspose2d(2 * ch, ch, 2, stride=2)
        self.dec1 = _ResBlock(2 * ch, ch, emb)
        self.norm = nn.GroupNorm(8, ch)
        self.out = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        emb = F.silu(self.t_emb(_batch_t(t, x)) + self.y_emb(_labels(y, x, self.num_classes)))
        h1 = self.enc1(self.inp(x), emb)
        h2 = self.enc2(self.down(h1), emb)
        h = self.dec2(torch.cat([self.mid(h2, emb), h2], dim=1), emb)
        h = self.dec1(torch.cat([self.up(h), h1], dim=1), emb)
        return self.out(F.silu(self.norm(h)))


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 digits; :meth:`features` is the penultimate layer the Frechet distance uses."""

    def __init__(self, ch: int = 32, feat: int = 64, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(ch, 2 * ch, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(2 * ch * 4, feat)
        self.head = nn.Linear(feat, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return F.silu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class MRRestorer(nn.Module):
    """A small conditional network for mean-reverting restoration of 8x8 digits: ``net(x, t, mu)``.

    ``mu`` (B, 1, 8, 8) is the degraded image the process reverts to; it enters as a second input
    channel, and t through a sinusoidal embedding added to every layer. ``depth`` 3x3 convolutions of
    ``ch`` channels (receptive field 2 depth + 3 pixels, the whole image from depth 3 on) with residual
    connections; the output is the data prediction x0 (about x, not x - mu).
    """

    def __init__(self, ch: int = 16, depth: int = 4, emb: int = 32):
        super().__init__()
        self.num_classes = 0
        self.emb_dim = emb
        self.t_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU())
        self.inp = nn.Conv2d(2, ch, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(depth))
        self.t_proj = nn.Linear(emb, ch * depth)
        self.out = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        if y is None or not isinstance(y, Tensor) or y.shape != x.shape:
            raise ValueError(f"MRRestorer needs the degraded image mu (shape {tuple(x.shape)}) as y")
        tb = _batch_t(t, x)
        half = self.emb_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=x.device, dtype=x.dtype) / half)
        arg = 100.0 * tb[:, None] * freqs[None]
        e = self.t_mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=1))
        bias = self.t_proj(e).reshape(x.shape[0], len(self.convs), -1, 1, 1)
        h = self.inp(torch.cat([x, y.to(x.dtype)], dim=1))
        for k, conv in enumerate(self.convs):
            h = h + conv(F.silu(h + bias[:, k]))
        return y.to(x.dtype) + self.out(F.silu(h))


#: Architectures a weights card may name; loading builds ``ARCHITECTURES[card["arch"]](**card["config"])``.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "MLPScore": MLPScore,
    "PotentialMLP": PotentialMLP,
    "DigitsUNet": DigitsUNet,
    "DigitsClassifier": DigitsClassifier,
    "MRRestorer": MRRestorer,
}
