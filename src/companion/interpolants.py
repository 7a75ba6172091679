"""Stochastic interpolants (Albergo, Boffi & Vanden-Eijnden 2023, arXiv 2303.08797): one family of ODEs
and SDEs between two arbitrary densities rho_0 and rho_1 with shared marginals.

The interpolant (paper, Def. 2.1; time runs from rho_0 at t = 0 to rho_1 at t = 1)

    x_t = alpha(t) x_0 + beta(t) x_1 + gamma(t) z,   z ~ N(0, I) independent of (x_0, x_1),

with alpha(0) = beta(1) = 1, alpha(1) = beta(0) = 0, gamma(0) = gamma(1) = 0 and gamma > 0 inside, has a
density rho_t whose velocity and score are conditional expectations (paper, Thm. 2.6):

    b(t, x) = E[alpha' x_0 + beta' x_1 + gamma' z | x_t = x],      s(t, x) = -E[z | x_t = x] / gamma(t).

rho_t solves the transport equation d_t rho + div(b rho) = 0, and, for every eps(t) >= 0, the forward and
backward Fokker-Planck equations with drifts b_F = b + eps s and b_B = b - eps s (Cor. 2.10). So the ODE
dX = b dt, the forward SDE dX = b_F dt + sqrt(2 eps) dW (from rho_0 towards rho_1) and the backward SDE
(from rho_1 towards rho_0) all carry the marginals rho_t. They run through :func:`companion.sample` with
``schedule=`` a :class:`StochasticInterpolant` and ``solver="interpolant"`` (see
:mod:`companion.solvers.interpolant`).

For Gaussian-mixture endpoints with the independent coupling, x_t is a Gaussian mixture with K_0 K_1
components and b, s, log rho_t are exact (:class:`GaussianMixtureInterpolant`). The quadratic losses
(paper, Thm. 2.8 and eq. 2.20/2.21) train b and s from samples; :func:`velocity_loss` and
:func:`score_loss` use the antithetic pair x_t^{+-} = alpha x_0 + beta x_1 +- gamma z.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .targets import GaussianMixture

__all__ = [
    "PATHS",
    "GAMMAS",
    "StochasticInterpolant",
    "GaussianMixtureInterpolant",
    "velocity_loss",
    "score_loss",
    "euler_log_density",
]

#: alpha(t), beta(t) choices: (alpha, beta, alpha', beta') as functions of float64 t
PATHS: dict[str, tuple[Callable[[Tensor], Tensor], ...]] = {
    "linear": (lambda t: 1 - t, lambda t: t, lambda t: -torch.ones_like(t), lambda t: torch.ones_like(t)),
    "trig": (
        lambda t: torch.cos(math.pi * t / 2),
        lambda t: torch.sin(math.pi * t / 2),
        lambda t: -math.pi / 2 * torch.sin(math.pi * t / 2),
        lambda t: math.pi / 2 * torch.cos(math.pi * t / 2),
    ),
}

#: gamma choices of the paper's code (interflow, ``make_gamma``), with parameter a > 0:
#: (gamma, gamma', gamma gamma') as functions of (t, a); gamma gamma' stays finite where gamma' does not
GAMMAS: dict[str, tuple[Callable[[Tensor, float], Tensor], ...]] = {
    "brownian": (  # sqrt(a t (1 - t)): the Brownian-bridge noise
        lambda t, a: torch.sqrt(a * t * (1 - t)),
        lambda t, a: a * (1 - 2 * t) / (2 * torch.sqrt(a * t * (1 - t))),
        lambda t, a: a * (1 - 2 * t) / 2,
    ),
    "bsquared": (  # a t (1 - t)
        lambda t, a: a * t * (1 - t),
        lambda t, a: a * (1 - 2 * t),
        lambda t, a: a**2 * t * (1 - t) * (1 - 2 * t),
    ),
    "sinesquared": (  # a sin^2(pi t)
        lambda t, a: a * torch.sin(math.pi * t) ** 2,
        lambda t, a: a * math.pi * torch.sin(2 * math.pi * t),
        lambda t, a: a**2 * math.pi * torch.sin(math.pi * t) ** 2 * torch.sin(2 * math.pi * t),
    ),
    "zero": (  # the deterministic interpolant: no latent noise (b exists, s need not)
        lambda t, a: torch.zeros_like(t),
        lambda t, a: torch.zeros_like(t),
        lambda t, a: torch.zeros_like(t),
    ),
}


def _times(t: float | Tensor) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class StochasticInterpolant:
    """x_t = alpha(t) x_0 + beta(t) x_1 + gamma(t) z on t in [0, 1] (float64 coefficients).

    ``path``: ``"linear"`` (alpha = 1 - t, beta = t) or ``"trig"`` (cos, sin of pi t / 2); ``gamma``: one of
    :data:`GAMMAS` (``"brownian"``: sqrt(a t (1 - t)), the paper's default), with its parameter ``a > 0``.
    """

    t_min: float = 0.0
    t_max: float = 1.0

    def __init__(self, path: str = "linear", gamma: str = "brownian", a: float = 1.0):
        if path not in PATHS:
            raise ValueError(f"path must be one of {list(PATHS)}; got {path!r}")
        if gamma not in GAMMAS:
            raise ValueError(f"gamma must be one of {list(GAMMAS)}; got {gamma!r}")
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not (0 < a < math.inf):
            raise ValueError(f"a must be a finite number > 0; got {a!r}")
        self.path, self.gamma_name, self.a = path, gamma, float(a)
        self._alpha, self._beta, self._dalpha, self._dbeta = PATHS[path]
        self._gamma, self._dgamma, self._ggdot = GAMMAS[gamma]

    def __repr__(self) -> str:
        return f"StochasticInterpolant(path={self.path!r}, gamma={self.gamma_name!r}, a={self.a!r})"

    def alpha(self, t: float | Tensor) -> Tensor:
        return self._alpha(_times(t))

    def beta(self, t: float | Tensor) -> Tensor:
        return self._beta(_times(t))

    def d_alpha(self, t: float | Tensor) -> Tensor:
        return self._dalpha(_times(t))

    def d_beta(self, t: float | Tensor) -> Tensor:
        return self._dbeta(_times(t))

    def gamma(self, t: float | Tensor) -> Tensor:
        return self._gamma(_times(t), self.a)

    def d_gamma(self, t: float | Tensor) -> Tensor:
        """gamma'(t); infinite at t = 0, 1 for ``"brownian"`` (use :meth:`gamma_d_gamma` there)."""
        return self._dgamma(_times(t), self.a)

    def gamma_d_gamma(self, t: float | Tensor) -> Tensor:
        """gamma(t) gamma'(t), finite on [0, 1] for every choice."""
        return self._ggdot(_times(t), self.a)

    def check_t(self, t: float | Tensor, name: str = "t") -> None:
        tt = _times(t).detach()
        if not bool(torch.isfinite(tt).all()) or float(tt.min()) < 0.0 or float(tt.max()) > 1.0:
            raise ValueError(f"{name} must lie in [0, 1] for a StochasticInterpolant; got {t!r}")

    def interpolate(self, x0: Tensor, x1: Tensor, z: Tensor, t: float | Tensor) -> Tensor:
        """x_t = alpha x_0 + beta x_1 + gamma z; ``t`` 0-d or of shape (B,)."""
        a, b, g = (_bcast(c(t), x0) for c in (self.alpha, self.beta, self.gamma))
        return a * x0 + b * x1 + g * z


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    c = c.to(x.device, x.dtype)
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim())) if c.dim() else c


class GaussianMixtureInterpolant:
    """The interpolant between two Gaussian mixtures rho_0 = sum_i w_i N(m_i, C_i) and
    rho_1 = sum_j w'_j N(m'_j, C'_j) under the independent coupling: rho_t is the mixture over pairs (i, j)
    with weights w_i w'_j, means alpha m_i + beta m'_j and covariances S = alpha^2 C_i + beta^2 C'_j + gamma^2 I.

    Per pair, (x_0, x_1, z, x_t) are jointly Gaussian, so with M = alpha alpha' C_i + beta beta' C'_j +
    gamma gamma' I = Cov(alpha' x_0 + beta' x_1 + gamma' z, x_t) the conditional velocity is
    alpha' m_i + beta' m'_j + M S^{-1} (x - mu), and the exact b and s are the posterior averages over pairs
    of it and of -S^{-1}(x - mu). Everything in float64; ``t`` 0-d or (B,) in [0, 1].
    """

    def __init__(self, interpolant: StochasticInterpolant, rho0: GaussianMixture, rho1: GaussianMixture):
        if not isinstance(interpolant, StochasticInterpolant):
            raise TypeError(f"interpolant must be a StochasticInterpolant; got {type(interpolant).__name__}")
        for name, rho in (("rho0", rho0), ("rho1", rho1)):
            if not isinstance(rho, GaussianMixture):
                raise TypeError(
                    f"{name} must be a companion.targets.GaussianMixture; got {type(rho).__name__}"
                )
        if rho0.dim != rho1.dim:
            raise ValueError(f"rho0 and rho1 must have the same dimension; got {rho0.dim} and {rho1.dim}")
        self.si, self.rho0, self.rho1 = interpolant, rho0, rho1
        self.dim = rho0.dim
        K0, K1 = rho0.n_components, rho1.n_components
        self._m0 = rho0.means[:, None, :].expand(K0, K1, self.dim).reshape(-1, self.dim)
        self._m1 = rho1.means[None, :, :].expand(K0, K1, self.dim).reshape(-1, self.dim)
        C0, C1 = rho0.covariances(), rho1.covariances()
        self._C0 = C0[:, None].expand(K0, K1, self.dim, self.dim).reshape(-1, self.dim, self.dim)
        self._C1 = C1[None, :].expand(K0, K1, self.dim, self.dim).reshape(-1, self.dim, self.dim)
        self._logw = (rho0.log_weights[:, None] + rho1.log_weights[None, :]).reshape(-1)

    # --- the mixture rho_t --------------------------------------------------------------------
    def _coeffs(self, t: float | Tensor):
        si, tt = self.si, _times(t)
        return si.alpha(tt), si.beta(tt), si.gamma(tt), si.d_alpha(tt), si.d_beta(tt), si.gamma_d_gamma(tt)

    def _moments(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Means (..., K, d) and covariances (..., K, d, d) of rho_t for t of any shape."""
        a, b, g, *_ = self._coeffs(t)
        a, b, g = a[..., None, None], b[..., None, None], g[..., None, None]
        eye = torch.eye(self.dim, dtype=torch.float64)
        mu = a * self._m0 + b * self._m1
        S = a[..., None] ** 2 * self._C0 + b[..., None] ** 2 * self._C1 + g[..., None] ** 2 * eye
        return mu, S

    def mixture(self, t: float) -> GaussianMixture:
        """rho_t as a :class:`GaussianMixture` (exact samples, log-density, moments)."""
        tt = _times(t)
        if tt.ndim:
            raise ValueError("t must be a number or a 0-d tensor")
        self.si.check_t(tt)
        mu, S = self._moments(tt)
        S = (S + S.transpose(-1, -2)) / 2
        return GaussianMixture(mu, S, torch.exp(self._logw))

    def _flat(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x must be a floating-point tensor of shape (B, d)")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}); got {tuple(x.shape)}")
        tt = _times(t).to(x.device)
        if tt.ndim > 1 or (tt.ndim == 1 and tt.shape[0] != x.shape[0]):
            raise ValueError(f"t must be 0-d or have shape ({x.shape[0]},); got {tuple(tt.shape)}")
        self.si.check_t(tt)
        if tt.ndim == 1 and tt.numel() > 1 and not tt.requires_grad and bool((tt == tt[0]).all()):
            tt = tt[0]  # one time for the batch (the samplers' case): factorise the covariances once
        return x.to(torch.float64), tt

    def _per_component(self, x: Tensor, tt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-weights + component log-densities (B, K), component scores (B, K, d), and the time(s)."""
        mu, S = self._moments(tt)
        L = torch.linalg.cholesky(S)  # (K, d, d), or (B, K, d, d) for one time per sample
        diff = x[:, None, :] - mu  # (B, K, d)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        if L.dim() == 3:  # one time: invert the K covariances once
            score = -torch.einsum("kij,bkj->bki", torch.cholesky_inverse(L), diff)
        else:
            y = torch.linalg.solve_triangular(L, diff[..., None], upper=False)
            score = -torch.linalg.solve_triangular(L.transpose(-1, -2), y, upper=True)[..., 0]
        quad = -(diff * score).sum(-1)
        logp = self._logw - 0.5 * quad - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)
        return logp, score, tt

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """log rho_t(x), shape (B,); differentiable in x and t (autograd)."""
        xf, tt = self._flat(x, t)
        return torch.logsumexp(self._per_component(xf, tt)[0], dim=-1)

    def _b_s(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        xf, tt = self._flat(x, t)
        logp, comp_score, tt = self._per_component(xf, tt)
        r = torch.softmax(logp, dim=-1)[..., None]  # posterior over pairs (B, K, 1)
        a, b, g, da, db, ggd = self._coeffs(tt)
        a, b, da, db, ggd = (c[..., None, None] for c in (a, b, da, db, ggd))
        eye = torch.eye(self.dim, dtype=torch.float64)
        M = (a * da)[..., None] * self._C0 + (b * db)[..., None] * self._C1 + ggd[..., None] * eye
        if M.dim() == 3:
            M = M.expand(xf.shape[0], *M.shape)
        cond_v = da * self._m0 + db * self._m1 - (M @ comp_score[..., None])[..., 0]
        return (r * cond_v).sum(1), (r * comp_score).sum(1)

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The exact b(t, x), shape (B, d), in x's dtype."""
        return self._b_s(x, t)[0].to(x.dtype)

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """The exact s(t, x) = grad log rho_t(x), shape (B, d), in x's dtype."""
        return self._b_s(x, t)[1].to(x.dtype)

    def model(self) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """``(x, t) -> (b, s)``: the exact pair the interpolant samplers integrate (``t`` 0-d or (B,))."""

        def f(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            b, s = self._b_s(x, t)
            return b.to(x.dtype), s.to(x.dtype)

        return f

    def fokker_planck(
        self, x: Tensor, t: float, eps: float, direction: str = "forward"
    ) -> tuple[Tensor, Tensor]:
        """The two sides of the Fokker-Planck equation at (x, t), by autograd of the exact density:
        (d_t rho, -(div(b_F rho) - eps lap rho)) for ``"forward"``, (d_t rho, -(div(b_B rho) + eps lap rho))
        for ``"backward"`` (Albergo et al. 2023, Cor. 2.10); ``"transport"`` is eps = 0. Equal when the
        identity holds. Float64, d small (one autograd pass per dimension)."""
        if direction not in ("forward", "backward", "transport"):
            raise ValueError(f"direction must be 'forward', 'backward' or 'transport'; got {direction!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0; got {eps!r}")
        sign = {"forward": 1.0, "backward": -1.0, "transport": 0.0}[direction]
        x = x.detach().to(torch.float64).clone().requires_grad_(True)
        tt = torch.full((x.shape[0],), float(t), dtype=torch.float64, requires_grad=True)
        rho = self.log_prob(x, tt).exp()
        (drho_dt,) = torch.autograd.grad(rho.sum(), tt, create_graph=True)
        b, s = self._b_s(x, tt)
        flux = (b + sign * eps * s) * rho[:, None]
        (grad_rho,) = torch.autograd.grad(rho.sum(), x, create_graph=True)
        div = sum(
            torch.autograd.grad(flux[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(self.dim)
        )
        lap = sum(
            torch.autograd.grad(grad_rho[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(self.dim)
        )
        return drho_dt.detach(), -(div - sign * eps * lap).detach()

    def sample_endpoints(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n independent pairs (x_0, x_1) ~ rho_0 x rho_1 (the independent coupling)."""
        return self.rho0.sample(n, generator=generator), self.rho1.sample(n, generator=generator)


# --- the quadratic losses ------------------------------------------------------------------------
def _loss_inputs(si: StochasticInterpolant, x0: Tensor, x1: Tensor, t: Tensor, z: Tensor):
    if not isinstance(si, StochasticInterpolant):
        raise TypeError(f"si must be a StochasticInterpolant; got {type(si).__name__}")
    if x0.shape != x1.shape or x0.shape != z.shape:
        raise ValueError(
            f"x0, x1 and z must have the same shape; got {tuple(x0.shape)}, {tuple(x1.shape)}, {tuple(z.shape)}"
        )
    tt = _times(t).to(x0.device)
    if tt.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape ({x0.shape[0]},); got {tuple(tt.shape)}")
    if not bool(((tt > 0) & (tt < 1)).all()):
        raise ValueError("t must lie in the open interval (0, 1): gamma' or 1/gamma is infinite at the ends")
    I = si.interpolate(x0, x1, torch.zeros_like(z), tt)
    gz = _bcast(si.gamma(tt), z) * z
    return tt.to(x0.dtype), I, gz


def velocity_loss(b: Callable[[Tensor, Tensor], Tensor], si: StochasticInterpolant, x0, x1, t, z) -> Tensor:
    """Antithetic estimate of L_b = E[ |b(x_t)|^2 / 2 - (alpha' x_0 + beta' x_1 + gamma' z) . b(x_t) ]
    (paper, eq. 2.20), averaged over x_t^{+-} = alpha x_0 + beta x_1 +- gamma z. Its population minimiser
    is the exact velocity, and L_b(b_hat) - L_b(b) = E|b_hat - b|^2 / 2. ``t`` in (0, 1), shape (B,)."""
    tt, I, gz = _loss_inputs(si, x0, x1, t, z)
    dI = _bcast(si.d_alpha(tt), x0) * x0 + _bcast(si.d_beta(tt), x1) * x1
    dgz = _bcast(si.d_gamma(tt), z) * z
    total = 0.0
    for sign in (1.0, -1.0):
        out = b(I + sign * gz, tt)
        total = total + (0.5 * out.pow(2) - (dI + sign * dgz) * out).flatten(1).sum(1)
    return (total / 2).mean()


def score_loss(s: Callable[[Tensor, Tensor], Tensor], si: StochasticInterpolant, x0, x1, t, z) -> Tensor:
    """Antithetic estimate of L_s = E[ |s(x_t)|^2 / 2 + z . s(x_t) / gamma ] (paper, eq. 2.21): minimised by
    the exact score, with L_s(s_hat) - L_s(s) = E|s_hat - s|^2 / 2. ``t`` in (0, 1), shape (B,)."""
    tt, I, gz = _loss_inputs(si, x0, x1, t, z)
    zg = z / _bcast(si.gamma(tt), z)
    total = 0.0
    for sign in (1.0, -1.0):
        out = s(I + sign * gz, tt)
        total = total + (0.5 * out.pow(2) + sign * zg * out).flatten(1).sum(1)
    return (total / 2).mean()


def euler_log_density(
    velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, log_p: Tensor, times: Tensor
) -> tuple[Tensor, Tensor]:
    """Push samples ``x`` with log-density ``log_p`` through Euler's method for dx/dt = velocity(x, t) on
    ``times``: x_{i+1} = x_i + dt v(x_i, t_i), and the exact log-density of the result under the discrete
    map, log p_{i+1}(x_{i+1}) = log p_i(x_i) - log|det(I + dt dv/dx(x_i))| (change of variables; the
    Jacobian by autograd, one pass per dimension, so for small d). This is the log-density of the samples
    ``companion.sample`` returns with ``diffusion=0`` on the same grid."""
    times = torch.as_tensor(times, dtype=torch.float64)
    x, log_p = x.detach().to(torch.float64), log_p.detach().to(torch.float64)
    B, d = x.shape
    eye = torch.eye(d, dtype=torch.float64)
    for i in range(times.shape[0] - 1):
        dt = float(times[i + 1] - times[i])
        xi = x.clone().requires_grad_(True)
        v = velocity(xi, times[i].expand(B))
        J = torch.stack(
            [torch.autograd.grad(v[:, k].sum(), xi, retain_graph=k < d - 1)[0] for k in range(d)], 1
        )
        log_p = log_p - torch.linalg.slogdet(eye + dt * J)[1]
        x = (xi + dt * v).detach()
    return x, log_p
