"""Gaussian probability paths, their kinetic energy, and the kinetic-optimal (KO) path.

A Gaussian path is any :class:`~companion.schedules.Schedule`: x_t = alpha_t x_0 + sigma_t eps, t = 0 data,
t = 1 noise (the package's convention; Shaul et al. 2023 run time the other way). Its marginal velocity is

    u_t(x) = alpha'_t xhat + sigma'_t (x - alpha_t xhat) / sigma_t,      xhat = E[x_0 | x_t = x],

and its kinetic energy is KE = int_0^1 E||u_t(x_t)||^2 dt. For data normalised to E||x_0||^2 = d, write
the path in polar coordinates, r = sqrt(alpha^2 + sigma^2), theta = atan2(alpha, sigma) (so the SNR ratio is
s = alpha / sigma = tan theta). Then, per dimension,

    KE / d = int_0^1 r'^2 + r^2 w(theta) theta'^2 dt,      w = 1 - (1 + s^2) (1 - Lambda(s)),

where Lambda(s) = E||xhat||^2 / E||x_0||^2 is the *data separation function* (Shaul et al. 2023, Sec. 3):
the data enter only through it. ``1 - Lambda`` is the MMSE of the denoiser as a fraction of E||x_0||^2, so
Lambda >= s^2 / (1 + s^2) (the linear estimator's value) and 0 <= w <= 1. With phi(theta) = int_0^theta
sqrt(w), (r, phi) are polar coordinates of a flat plane; the KO path is the straight chord from the noise end
(r, phi) = (1, 0) to the data end (1, Phi), Phi = phi(pi/2), traversed at constant speed, and its energy is
2 - 2 cos Phi. The book's chapter 04 derives all of this.

Everything here is float64. ``import companion`` does not import scipy; :func:`minimize_kinetic_energy`
imports it when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .schedules import RectifiedFlow, Schedule, _as_tensor
from .targets import GaussianMixture

__all__ = [
    "CondOT",
    "KineticOptimal",
    "Profile",
    "TabulatedSeparation",
    "gaussian_separation",
    "separation",
    "estimate_separation",
    "normalize",
    "profile",
    "kinetic_optimal",
    "kinetic_energy",
    "kinetic_energy_mc",
    "minimize_kinetic_energy",
    "velocity_terms",
    "DirectMinimum",
]

Separation = Callable[[Tensor], Tensor]
HALF_PI = math.pi / 2


class CondOT(RectifiedFlow):
    """The conditional optimal-transport path (Lipman et al. 2023): alpha = 1 - t, sigma = t.

    The same process as :class:`~companion.schedules.RectifiedFlow`, under the name flow matching gives it.
    Its kinetic energy per dimension is 2 - int_0^inf (1 - Lambda(s)) ds: 2 - pi/2 for N(0, I) data, 2 for
    perfectly separated data (Lambda = 1), where it is the KO path.
    """


# --- separation functions ---------------------------------------------------------------------------------


def gaussian_separation(s: float | Tensor) -> Tensor:
    """Lambda(s) = s^2 / (1 + s^2): the separation function of N(0, I) data (xhat = s y / (1 + s^2))."""
    s = _as_tensor(s)
    return s * s / (1.0 + s * s)


def _check_points(points) -> Tensor:
    if not isinstance(points, Tensor):
        raise TypeError(f"points must be a torch.Tensor of shape (n, d); got {type(points).__name__}")
    if points.ndim != 2 or points.shape[0] < 1 or points.shape[1] < 1:
        raise ValueError(f"points must have shape (n, d) with n, d >= 1; got {tuple(points.shape)}")
    x = points.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("points must be finite")
    if float((x * x).sum()) == 0.0:
        raise ValueError("points must not all be zero")
    return x


def _check_s(s) -> Tensor:
    st = _as_tensor(s).to("cpu", torch.float64)
    if not bool(torch.isfinite(st).all()) or bool((st < 0).any()):
        raise ValueError(f"s must be finite and >= 0; got {s!r}")
    return st


def _check_int(value, name: str, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}; got {value}")
    return value


def _check_generator(generator) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    return generator


def normalize(points: Tensor, center: bool = True) -> Tensor:
    """``points`` (n, d), optionally centred, scaled so that the mean squared norm is d (E||x_0||^2 = d).

    This is the normalisation under which :func:`kinetic_energy` gives the energy per dimension.
    """
    x = _check_points(points)
    if not isinstance(center, bool):
        raise TypeError(f"center must be True or False; got {center!r}")
    if center:
        x = x - x.mean(0)
        if float((x * x).sum()) == 0.0:
            raise ValueError("points must not all be equal when center=True")
    return x * math.sqrt(x.shape[1] / float((x * x).sum(1).mean()))


def _posterior_mean_points(x: Tensor, y: Tensor, s: Tensor) -> Tensor:
    """E[x_0 | y] for y = s x_0 + eps, x_0 uniform on the rows of ``x``: softmax_j(s <x_j, y> - s^2 |x_j|^2 / 2).

    ``y`` (M, d), ``s`` (M, 1). The log-weights go through logsumexp (softmax), exact up to rounding."""
    logits = s * (y @ x.T) - 0.5 * s * s * (x * x).sum(1)
    return torch.softmax(logits, dim=1) @ x


class _Affine:
    """The best affine estimator of x_0 from y = s x_0 + eps, built from the data's mean mu and covariance
    U diag(c) U^T: xhat_aff = mu + U g, g = diag(s c / (1 + s^2 c)) U^T (y - s mu). Its error
    E||x_0 - xhat_aff||^2 = sum_k c_k / (1 + s^2 c_k) is known in closed form, which makes it the control
    variate of :func:`separation` (it is the MMSE of Gaussian data with the same two moments)."""

    def __init__(self, mean: Tensor, U: Tensor, c: Tensor):
        self.mean, self.U, self.c = mean, U, c.clamp_min(0.0)

    @classmethod
    def from_points(cls, x: Tensor) -> _Affine:
        n, d = x.shape
        mu = x.mean(0)
        xc = x - mu
        if d <= n:
            c, U = torch.linalg.eigh(xc.T @ xc / n)
        else:  # the nonzero spectrum through the n x n Gram matrix
            c, V = torch.linalg.eigh(xc @ xc.T / n)
            keep = c > 1e-12 * max(float(c.max()), 1e-300)
            c, V = c[keep], V[:, keep]
            U = xc.T @ V / torch.sqrt(n * c)
        return cls(mu, U, c)

    @classmethod
    def from_mixture(cls, gmm: GaussianMixture) -> _Affine:
        c, U = torch.linalg.eigh(gmm.cov())
        return cls(gmm.mean(), U, c)

    def coordinates(self, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(U^T (x_0 - mu), U^T eps, the part of |x_0 - mu|^2 outside span U) per sample."""
        a = (x0 - self.mean) @ self.U
        rest = ((x0 - self.mean) ** 2).sum(1) - (a * a).sum(1)
        return a, eps @ self.U, rest

    def sq_error(self, coords: tuple[Tensor, Tensor, Tensor], s: float) -> Tensor:
        a, b, rest = coords
        g = (s * self.c / (1.0 + s * s * self.c)) * (s * a + b)
        return ((a - g) ** 2).sum(1) + rest

    def mmse(self, s: float) -> float:
        return float((self.c / (1.0 + s * s * self.c)).sum())


def separation(
    data: Tensor | GaussianMixture,
    s: float | Tensor,
    generator: torch.Generator | None = None,
    *,
    samples: int = 1024,
    control_variate: bool = True,
    return_error: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Monte Carlo estimate of the data separation function Lambda(s) = E||xhat||^2 / E||x_0||^2.

    ``data``: an (n, d) tensor of points (x_0 uniform over its rows; the posterior over the points is exact,
    by logsumexp) or a :class:`~companion.targets.GaussianMixture` (its exact denoiser). ``s`` = alpha / sigma,
    any shape, >= 0. Normalisation: divided by the data's own E||x_0||^2, so Lambda lies in [0, 1] whatever the
    scale; the scale still matters (Lambda at s of data c x_0 is Lambda at c s of x_0), and
    :func:`kinetic_energy` assumes E||x_0||^2 = d (see :func:`normalize`).

    Since E||xhat||^2 = E||x_0||^2 - E||x_0 - xhat||^2, the estimate is 1 - mean ||x_0 - xhat||^2 / E||x_0||^2:
    the per-sample error shrinks with the noise, so 1 - Lambda keeps its relative accuracy at high SNR, where
    the kinetic energy needs (1 + s^2)(1 - Lambda). Monte Carlo over x_t only: ``samples`` draws of
    (x_0, eps), the same for every s (common random numbers: a smooth function of s). ``control_variate``:
    subtract the error of the best affine estimator (the data's mean and covariance), known in closed form;
    it removes most of the variance where the posterior is broad. ``return_error``: also return the standard
    error.
    """
    st = _check_s(s)
    _check_int(samples, "samples", 2)
    _check_generator(generator)
    if not isinstance(control_variate, bool):
        raise TypeError(f"control_variate must be True or False; got {control_variate!r}")
    if isinstance(data, GaussianMixture):
        x0 = data.sample(samples, generator=generator).to(torch.float64).reshape(samples, -1)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        m2 = float((data.mean() ** 2).sum() + torch.diagonal(data.cov()).sum())
        aff = _Affine.from_mixture(data) if control_variate else None
        path = CondOT()

        def sq_error(sv: float) -> Tensor:
            # Lambda depends on alpha / sigma only: the exact denoiser on Cond-OT at t = 1 / (1 + s), where
            # alpha = s t and sigma = t, so x_t = t y.
            if sv == 0.0:
                return ((x0 - data.mean()) ** 2).sum(1)
            t = torch.full((samples,), 1.0 / (1.0 + sv), dtype=torch.float64)
            return ((x0 - data.x0((sv * x0 + eps) * t[:, None], t, path)) ** 2).sum(1)

    elif isinstance(data, Tensor):
        x = _check_points(data)
        n = x.shape[0]
        m2 = float((x * x).sum(1).mean())
        # Every point as often as possible (stratified), the remainder at random.
        idx = torch.cat(
            [torch.arange(n).repeat(samples // n), torch.randperm(n, generator=generator)[: samples % n]]
        )
        x0 = x[idx]
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        aff = _Affine.from_points(x) if control_variate else None
        # In the span of the points: logits s^2 (<x_j, x_i> - |x_j|^2 / 2) + s <x_j, eps>, and for n <= d the
        # squared error (e_i - p)^T G (e_i - p) through the Gram matrix G, so the cost per s is free of d.
        gram = x @ x.T
        base, noise = gram[idx] - 0.5 * torch.diagonal(gram), eps @ x.T
        onehot = torch.nn.functional.one_hot(idx, n).to(torch.float64)

        def sq_error(sv: float) -> Tensor:
            p = torch.softmax(sv * sv * base + sv * noise, dim=1)
            if n <= x.shape[1]:
                diff = onehot - p
                return ((diff @ gram) * diff).sum(1).clamp_min(0.0)
            return ((x0 - p @ x) ** 2).sum(1)

    else:
        raise TypeError(
            f"data must be an (n, d) tensor of points or a GaussianMixture; got {type(data).__name__}"
        )
    coords = aff.coordinates(x0, eps) if aff is not None else None
    values, errors = [], []
    for sv in st.reshape(-1).tolist():
        q = sq_error(sv)
        if aff is not None:
            q = q - aff.sq_error(coords, sv) + aff.mmse(sv)
        values.append(1.0 - float(q.mean()) / m2)
        errors.append(float(q.std()) / math.sqrt(q.numel()) / m2)
    lam = torch.tensor(values, dtype=torch.float64).reshape(st.shape)
    if return_error:
        return lam, torch.tensor(errors, dtype=torch.float64).reshape(st.shape)
    return lam


def _weight(lam: Separation, theta: Tensor) -> Tensor:
    """w(theta) = 1 - (1 - Lambda(tan theta)) / cos^2 theta, clipped to [0, 1] (Monte Carlo noise)."""
    c2 = torch.cos(theta) ** 2
    lam_v = torch.as_tensor(lam(torch.tan(theta)), dtype=torch.float64)
    if lam_v.shape != theta.shape:
        raise ValueError(
            f"lam must be vectorised: lam(s) of shape {tuple(theta.shape)} returned {tuple(lam_v.shape)}"
        )
    w = torch.where(c2 > 1e-300, 1.0 - (1.0 - lam_v) / c2.clamp_min(1e-300), torch.ones_like(theta))
    return w.clamp(0.0, 1.0)


def _check_lam(lam) -> Separation:
    if not callable(lam):
        raise TypeError(
            f"lam must be a callable s -> Lambda(s) (vectorised over a float64 tensor); got {lam!r}"
        )
    return lam


class TabulatedSeparation:
    """A separation function known at nodes: w(theta) interpolated linearly in sqrt(theta / (pi/2)).

    Calling it returns Lambda(s) = 1 - (1 - w(theta)) cos^2 theta at theta = atan s. Built by
    :func:`estimate_separation`; ``theta``, ``weight``, ``values`` and ``errors`` hold the nodes, w, Lambda
    and the Monte Carlo standard errors of Lambda there.
    """

    def __init__(self, theta: Tensor, weight: Tensor, values: Tensor, errors: Tensor):
        self.theta, self.weight, self.values, self.errors = theta, weight, values, errors
        self._x = torch.sqrt(theta / HALF_PI)

    def weight_at(self, theta: Tensor) -> Tensor:
        x = torch.sqrt(theta.clamp(0.0, HALF_PI) / HALF_PI)
        i = torch.clamp(torch.searchsorted(self._x, x.contiguous()) - 1, 0, self._x.numel() - 2)
        x0, x1 = self._x[i], self._x[i + 1]
        return self.weight[i] + (x - x0) * (self.weight[i + 1] - self.weight[i]) / (x1 - x0)

    def __call__(self, s: float | Tensor) -> Tensor:
        st = _as_tensor(s).to(torch.float64)
        theta = torch.atan(st)
        return 1.0 - (1.0 - self.weight_at(theta)) * torch.cos(theta) ** 2


def estimate_separation(
    data: Tensor | GaussianMixture,
    generator: torch.Generator | None = None,
    *,
    samples: int = 1024,
    nodes: int = 96,
    control_variate: bool = True,
) -> TabulatedSeparation:
    """Lambda of ``data`` by :func:`separation` at ``nodes`` angles theta = (pi/2) x^2, x uniform in (0, 1)
    (dense at low SNR, where Lambda changes fastest for many points in high dimension), as a callable.

    The ends are not sampled: at theta = 0 (s = 0) Lambda = |E x_0|^2 / E||x_0||^2 exactly; at theta = pi/2
    the weight is held at its last sampled value. Where the estimate falls below the separation function of
    the best affine estimator (a lower bound, since the posterior mean has the least error), it is raised to it.
    """
    _check_int(nodes, "nodes", 4)
    x = torch.linspace(0.0, 1.0, nodes + 2, dtype=torch.float64)[1:-1]
    theta = HALF_PI * x * x
    lam, err = separation(data, torch.tan(theta), generator, samples=samples, control_variate=control_variate,
                          return_error=True)  # fmt: skip
    if isinstance(data, GaussianMixture):
        aff, m2 = (
            _Affine.from_mixture(data),
            float((data.mean() ** 2).sum() + torch.diagonal(data.cov()).sum()),
        )
    else:
        pts = _check_points(data)
        aff, m2 = _Affine.from_points(pts), float((pts * pts).sum(1).mean())
    # The posterior mean is at least as good as the best affine estimator: hold Lambda at or above that bound
    # (Monte Carlo noise could cross it where the two nearly coincide, at low SNR).
    lam_aff = torch.tensor([1.0 - aff.mmse(v) / m2 for v in torch.tan(theta).tolist()], dtype=torch.float64)
    lam = torch.maximum(lam, lam_aff).clamp_max(1.0)
    lam0 = float((aff.mean * aff.mean).sum()) / m2
    w = (1.0 - (1.0 - lam) / torch.cos(theta) ** 2).clamp(0.0, 1.0)
    theta_all = torch.cat([theta.new_zeros(1), theta, theta.new_full((1,), HALF_PI)])
    w_all = torch.cat([theta.new_full((1,), lam0), w, w[-1:]])
    lam_all = torch.cat([theta.new_full((1,), lam0), lam, theta.new_ones(1)])
    err_all = torch.cat([theta.new_zeros(1), err, theta.new_zeros(1)])
    return TabulatedSeparation(theta_all, w_all, lam_all, err_all)


# --- the one-dimensional problem --------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The weight of a separation function on a uniform grid theta_k = k h of [0, pi/2], and its integrals.

    ``q`` = sqrt(w) at the nodes (at least ``floor``), linear in between; ``phi`` = int_0^theta q and
    ``G`` = int_0^theta (1 - q^2), both exact for that interpolant. ``Phi`` = phi(pi/2) is the angle the KO
    chord spans; ``ko_energy`` = 2 - 2 cos Phi; ``condot_energy`` = 2 - G(pi/2) = 2 - int_0^inf (1 - Lambda).
    """

    q: Tensor
    phi: Tensor
    G: Tensor
    h: float

    @property
    def K(self) -> int:
        return self.q.numel() - 1

    @property
    def Phi(self) -> float:
        return float(self.phi[-1])

    @property
    def ko_energy(self) -> float:
        return 2.0 - 2.0 * math.cos(self.Phi)

    @property
    def condot_energy(self) -> float:
        return 2.0 - float(self.G[-1])

    def _segment(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        k = torch.clamp(torch.floor(theta / self.h).long(), 0, self.K - 1)
        return k, theta - k.to(theta.dtype) * self.h

    def q_at(self, theta: Tensor) -> Tensor:
        k, dl = self._segment(theta)
        q, h = self.q.to(theta.device), self.h
        return q[k] + (q[k + 1] - q[k]) * dl / h

    def phi_at(self, theta: Tensor) -> Tensor:
        k, dl = self._segment(theta)
        q, phi, h = self.q.to(theta.device), self.phi.to(theta.device), self.h
        return phi[k] + q[k] * dl + (q[k + 1] - q[k]) * dl * dl / (2.0 * h)

    def G_at(self, theta: Tensor) -> Tensor:
        """int_0^theta (1 - q^2), differentiable in theta (for the direct minimisation)."""
        k, dl = self._segment(theta)
        q, G, h = self.q.to(theta.device), self.G.to(theta.device), self.h
        a, b = q[k], (q[k + 1] - q[k]) / h
        return G[k] + dl - (a * a * dl + a * b * dl * dl + b * b * dl**3 / 3.0)

    def theta_at(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        """The inverse of phi(theta): (theta, pi/2 - theta), the complement without cancellation near pi/2."""
        table = self.phi.to(phi.device)
        q, h = self.q.to(phi.device), self.h
        k = torch.clamp(torch.searchsorted(table, phi.detach().contiguous(), right=True) - 1, 0, self.K - 1)
        e = (phi - table[k]).clamp_min(0.0)
        a = q[k + 1] - q[k]
        disc = (q[k] * q[k] + 2.0 * a * e / h).clamp_min(0.0)
        dl = (2.0 * e / (q[k] + torch.sqrt(disc))).clamp(0.0, h)
        kf = k.to(phi.dtype)
        return kf * h + dl, (self.K - kf) * h - dl


def profile(lam: Separation, nodes: int = 2048, floor: float = 1e-6) -> Profile:
    """Tabulate w = 1 - (1 + s^2)(1 - Lambda(s)) at ``nodes`` + 1 angles and integrate phi and G.

    ``floor`` bounds sqrt(w) below: where w vanishes (N(0, I) data: w = 0 everywhere) every path of radius 1
    has zero energy and the KO path is not unique; the floor picks the member with constant angular speed and
    keeps lambda(t) strictly monotone. It changes the energies by O(floor).
    """
    _check_lam(lam)
    _check_int(nodes, "nodes", 8)
    if not isinstance(floor, (int, float)) or not 0.0 < floor < 1e-2:
        raise ValueError(f"floor must be a number in (0, 1e-2); got {floor!r}")
    h = HALF_PI / nodes
    theta = torch.arange(nodes, dtype=torch.float64) * h
    # The node at pi/2 itself is 0/0 (1 - Lambda and cos^2 both vanish): hold the last value.
    w = _weight(lam, theta)
    q = torch.sqrt(torch.cat([w, w[-1:]])).clamp_min(float(floor))
    qa, qb = q[:-1], q[1:]
    phi = torch.cat([q.new_zeros(1), torch.cumsum(h * (qa + qb) / 2.0, 0)])
    sq = h * (qa * qa + qa * qb + qb * qb) / 3.0
    G = torch.cat([q.new_zeros(1), torch.cumsum(h - sq, 0)])
    return Profile(q=q, phi=phi, G=G, h=h)


class KineticOptimal(Schedule):
    """The kinetic-optimal Gaussian path of a separation function, as a :class:`Schedule` (t = 0 data).

    In the plane with polar coordinates (r, phi), phi = int_0^theta sqrt(w), the path is the chord
    P(t) = (1 - t) (cos Phi, sin Phi) + t (1, 0) at constant speed; theta(t) inverts phi, and
    alpha = r sin theta, sigma = r cos theta. KE / d = |P'|^2 = 2 - 2 cos Phi. ``t_of_lambda`` is exact:
    t = sin(Phi - phi) / (sin phi + sin(Phi - phi)).
    """

    def __init__(self, prof: Profile):
        if not isinstance(prof, Profile):
            raise TypeError(f"prof must be a companion.paths.Profile; got {type(prof).__name__}")
        self.profile = prof
        self.Phi = prof.Phi
        self._c, self._s = math.cos(self.Phi), math.sin(self.Phi)

    def _params(self) -> dict:
        return {"Phi": round(self.Phi, 6)}

    @property
    def energy(self) -> float:
        """Kinetic energy per dimension, 2 - 2 cos Phi."""
        return self.profile.ko_energy

    def _polar(self, t):
        t = _as_tensor(t)
        X, Y = t + (1.0 - t) * self._c, (1.0 - t) * self._s
        r = torch.sqrt(X * X + Y * Y)
        theta, beta = self.profile.theta_at(torch.atan2(Y, X))
        return t, X, Y, r, theta, beta

    def log_alpha(self, t):
        _, _, _, r, _, beta = self._polar(t)
        return torch.log(r) + torch.log(torch.cos(beta))

    def sigma(self, t):
        _, _, _, r, _, beta = self._polar(t)
        return r * torch.sin(beta)

    def log_sigma(self, t):
        _, _, _, r, _, beta = self._polar(t)
        return torch.log(r) + torch.log(torch.sin(beta))

    def _rates(self, t):
        t, X, Y, r, theta, beta = self._polar(t)
        r_dot = (X * (1.0 - self._c) - Y * self._s) / r
        theta_dot = -self._s / (r * r) / self.profile.q_at(theta)
        return r, r_dot, beta, theta_dot

    def d_log_alpha(self, t):
        r, r_dot, beta, theta_dot = self._rates(t)
        return r_dot / r + torch.tan(beta) * theta_dot

    def d_log_sigma(self, t):
        r, r_dot, beta, theta_dot = self._rates(t)
        return r_dot / r - theta_dot / torch.tan(beta)

    def t_of_lambda(self, lam):
        lam = _as_tensor(lam)
        theta = torch.atan(torch.exp(lam))
        d = self.Phi - self.profile.phi_at(theta)  # Phi - phi, computed once
        phi = self.Phi - d
        return torch.sin(d) / (torch.sin(phi) + torch.sin(d))


def kinetic_optimal(lam: Separation, nodes: int = 2048, floor: float = 1e-6) -> KineticOptimal:
    """The KO path of the separation function ``lam`` (a vectorised callable of s = alpha / sigma)."""
    return KineticOptimal(profile(lam, nodes=nodes, floor=floor))


# --- kinetic energy ---------------------------------------------------------------------------------------


def _check_path(path) -> Schedule:
    if not isinstance(path, Schedule):
        raise TypeError(f"path must be a companion.schedules.Schedule; got {type(path).__name__}")
    return path


def _interval(path: Schedule, t_min, t_max) -> tuple[float, float]:
    a = path.t_min if t_min is None else t_min
    b = path.t_max if t_max is None else t_max
    for name, v in (("t_min", a), ("t_max", b)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise TypeError(f"{name} must be a finite number; got {v!r}")
    if not path.t_min <= a < b <= path.t_max:
        raise ValueError(f"need {path.t_min} <= t_min < t_max <= {path.t_max} for {path!r}; got {a}, {b}")
    return float(a), float(b)


def _nodes(a: float, b: float, panels: int, order: int) -> tuple[Tensor, Tensor]:
    """Composite Gauss-Legendre in u, t = a + (b - a)(1 - cos(pi u)) / 2: nodes cluster at both ends, where
    the integrands of diffusion paths have their (integrable) singularities; no node sits on an end."""
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(0.0, 1.0, panels + 1)
    u = ((edges[:-1, None] + edges[1:, None]) / 2 + (edges[1:, None] - edges[:-1, None]) / 2 * x).ravel()
    wu = ((edges[1:, None] - edges[:-1, None]) / 2 * w).ravel()
    t = a + (b - a) * (1.0 - np.cos(np.pi * u)) / 2
    wt = wu * (b - a) * np.pi / 2 * np.sin(np.pi * u)
    return torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(wt, dtype=torch.float64)


def velocity_terms(path: Schedule, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(r, r', theta, theta') of a path: r = sqrt(alpha^2 + sigma^2), theta = atan2(alpha, sigma), from the
    schedule's alpha, sigma and logarithmic derivatives."""
    _check_path(path)
    t = _as_tensor(t).to(torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    da, ds = path.d_log_alpha(t), path.d_log_sigma(t)
    r2 = a * a + s * s
    r = torch.sqrt(r2)
    r_dot = (a * a * da + s * s * ds) / r
    theta_dot = a * s * (da - ds) / r2
    return r, r_dot, torch.atan2(a, s), theta_dot


def kinetic_energy(
    path: Schedule,
    lam: Separation,
    t_min: float | None = None,
    t_max: float | None = None,
    *,
    panels: int = 64,
    order: int = 8,
) -> float:
    """KE / d = int r'^2 + r^2 w(theta) theta'^2 dt of ``path`` for data with separation function ``lam``,
    normalised to E||x_0||^2 = d; by quadrature in t (``panels`` x ``order`` Gauss-Legendre nodes, clustered at
    the ends) on [t_min, t_max] (default: the path's domain).

    On data made of points, diffusion paths with sigma ~ sqrt(t) at the data end (VP, cosine) have an energy
    that diverges like log(1 / t_min): integrate them from some t_min > 0.
    """
    _check_path(path)
    _check_lam(lam)
    _check_int(panels, "panels", 1)
    _check_int(order, "order", 1)
    a, b = _interval(path, t_min, t_max)
    t, wt = _nodes(a, b, panels, order)
    r, r_dot, theta, theta_dot = velocity_terms(path, t)
    e = r_dot**2 + r * r * _weight(lam, theta) * theta_dot**2
    return float((wt * e).sum())


def kinetic_energy_mc(
    path: Schedule,
    data: Tensor | GaussianMixture,
    generator: torch.Generator | None = None,
    *,
    samples: int = 256,
    t_min: float | None = None,
    t_max: float | None = None,
    panels: int = 16,
    order: int = 4,
) -> tuple[float, float]:
    """(KE / d, its standard error) by Monte Carlo: E||u_t(x_t)||^2 / d with the exact marginal velocity
    u = alpha' xhat + sigma' (x_t - alpha xhat) / sigma, ``samples`` draws of x_t at each quadrature node in t.

    It uses no separation function: it checks :func:`kinetic_energy` (pass normalised data). ``data`` as in
    :func:`separation`.
    """
    _check_path(path)
    _check_int(samples, "samples", 2)
    _check_generator(generator)
    a, b = _interval(path, t_min, t_max)
    t_nodes, wt = _nodes(a, b, _check_int(panels, "panels", 1), _check_int(order, "order", 1))
    if isinstance(data, GaussianMixture):
        d = data.dim
        draw = lambda: data.sample(samples, generator=generator).to(torch.float64)  # noqa: E731
    elif isinstance(data, Tensor):
        x = _check_points(data)
        d = x.shape[1]
        draw = lambda: x[torch.randint(x.shape[0], (samples,), generator=generator)]  # noqa: E731
    else:
        raise TypeError(
            f"data must be an (n, d) tensor of points or a GaussianMixture; got {type(data).__name__}"
        )
    means, variances = [], []
    for tk in t_nodes:
        x0 = draw()
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        al, sg = path.alpha(tk), path.sigma(tk)
        xt = al * x0 + sg * eps
        if isinstance(data, GaussianMixture):
            xh = data.x0(xt, tk, path)
        else:
            xh = _posterior_mean_points(x, xt / sg, (al / sg).expand(samples, 1))
        u = al * path.d_log_alpha(tk) * xh + sg * path.d_log_sigma(tk) * (xt - al * xh) / sg
        q = (u * u).sum(1) / d
        means.append(q.mean())
        variances.append(q.var() / samples)
    m, v = torch.stack(means), torch.stack(variances)
    return float((wt * m).sum()), float(torch.sqrt((wt * wt * v).sum()))


# --- the direct minimisation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectMinimum:
    """The minimiser of the discretised kinetic energy: knots ``t`` and the optimal ``alpha``, ``sigma``."""

    energy: float
    t: Tensor
    alpha: Tensor
    sigma: Tensor
    success: bool


def minimize_kinetic_energy(
    lam: Separation | Profile, knots: int = 50, *, tol: float = 1e-12
) -> DirectMinimum:
    """Minimise the kinetic energy over paths piecewise linear in (alpha, sigma) between ``knots`` + 1
    equally spaced times, from (alpha, sigma) = (1, 0) at t = 0 to (0, 1) at t = 1 (scipy's L-BFGS-B, the
    gradient by autograd); a check of the one-dimensional solution that does not use it.

    On a segment (alpha_i, sigma_i) -> (alpha_{i+1}, sigma_{i+1}) of duration h the energy is exact:
    (|Delta alpha|^2 + |Delta sigma|^2) / h - c_i (G(theta_i) - G(theta_{i+1})) / h, with
    c_i = alpha_i sigma_{i+1} - alpha_{i+1} sigma_i and G(theta) = int_0^theta (1 - w) = int_0^{tan theta} (1 - Lambda),
    because sigma^2 s' is constant on a segment (= -c_i / h) and int (1 - Lambda) / sigma^2 dt = int (1 - Lambda) ds / (sigma^2 s').
    """
    from scipy.optimize import minimize

    prof = lam if isinstance(lam, Profile) else profile(_check_lam(lam))
    _check_int(knots, "knots", 2)
    h = 1.0 / knots
    t = torch.linspace(0.0, 1.0, knots + 1, dtype=torch.float64)

    def full(z: Tensor) -> tuple[Tensor, Tensor]:
        one, zero = z.new_ones(1), z.new_zeros(1)
        return torch.cat([one, z[: knots - 1], zero]), torch.cat([zero, z[knots - 1 :], one])

    def energy(z: Tensor) -> Tensor:
        al, sg = full(z)
        G = prof.G_at(torch.atan2(al, sg))
        c = al[:-1] * sg[1:] - al[1:] * sg[:-1]
        return ((al.diff() ** 2 + sg.diff() ** 2) - c * (G[:-1] - G[1:])).sum() / h

    def fun(z):
        zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        e = energy(zt)
        (g,) = torch.autograd.grad(e, zt)
        return float(e.detach()), g.numpy()

    z0 = torch.cat([1.0 - t[1:-1], t[1:-1]]).numpy()  # start from Cond-OT
    res = minimize(
        fun, z0, jac=True, method="L-BFGS-B", options={"maxiter": 20000, "ftol": tol, "gtol": 1e-10}
    )
    al, sg = full(torch.tensor(res.x, dtype=torch.float64))
    return DirectMinimum(energy=float(res.fun), t=t, alpha=al, sigma=sg, success=bool(res.success))
