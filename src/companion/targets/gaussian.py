"""Gaussian mixtures with exact marginals, scores, denoisers and (for one Gaussian) the exact flow map.

Under a Gaussian forward process  x_t = alpha_t x_0 + sigma_t eps  a mixture  p_0 = sum_k w_k N(mu_k, C_k)
stays a mixture:  p_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 C_k + sigma_t^2 I)  (Song et al. 2021, eq. 29
and Appendix B give the moments; convolution of Gaussians does the rest). Each covariance is stored by
its eigendecomposition  C_k = U_k diag(c_k) U_k^T,  computed once in float64, so that every marginal
covariance  U_k diag(alpha^2 c_k + sigma^2) U_k^T  is inverted and log-determined exactly for any t,
including point masses (c_k = 0) at t > 0. Log-densities combine components with logsumexp.

All parameters are kept in float64 and cast to the dtype of ``x``; schedule coefficients are computed
in float64 from ``t`` and cast. Public methods validate their arguments; the callables returned by
:meth:`GaussianMixture.model` do not (they sit inside sampling loops, where a check would cost a
host-device sync per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..schedules import Schedule

__all__ = ["GaussianMixture", "Gaussian", "ClassConditionalMixture", "PREDICTIONS", "random_mixture"]

#: What :meth:`GaussianMixture.model` can predict.
PREDICTIONS = ("eps", "x0", "score")

TimeLike = float | Tensor


def _float64(value, name: str) -> Tensor:
    try:
        out = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"{name} must be a number or an array of numbers; got {type(value).__name__}"
        ) from exc
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be finite")
    return out.detach().cpu()


def _probabilities(value, name: str, n: int) -> Tensor:
    """Positive weights of shape (n,) summing to one within 1e-6 (renormalised exactly); uniform if None."""
    if value is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = _float64(value, name)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the components; got {tuple(w.shape)}")
    if not bool((w > 0).all()):
        raise ValueError(f"{name} must be positive; got {w.tolist()}")
    if abs(float(w.sum()) - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1 (within 1e-6); they sum to {float(w.sum())!r}")
    return w / w.sum()


def _check_schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a companion.schedules.Schedule; got {type(schedule).__name__}")
    return schedule


class GaussianMixture:
    """``p_0 = sum_k w_k N(mu_k, C_k)`` in R^d, with exact quantities under any Gaussian forward process.

    Args:
        means: (K, d) component means.
        covs: component covariances, one of: a number (the same isotropic variance for every component),
            (K,) isotropic variances, (K, d) diagonal variances, or (K, d, d) symmetric PSD matrices.
            Variances, not standard deviations.
        weights: (K,) positive mixture weights summing to one (within 1e-6); uniform when omitted.
        allow_singular: accept zero variances (point masses, or data on a subspace). Then p_0 has no
            density and :meth:`log_prob` at t = 0 raises, while scores and denoisers at sigma_t > 0 are exact.
    """

    def __init__(
        self,
        means,
        covs,
        weights=None,
        *,
        allow_singular: bool = False,
    ):
        mu = _float64(means, "means")
        if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1; got {tuple(mu.shape)}")
        K, d = mu.shape
        w = _probabilities(weights, "weights", K)
        c, U = self._eigen(_float64(covs, "covs"), K, d)
        tol = 0.0 if U is None else 1e-12 * max(float(c.abs().max()), 1e-300)
        if bool((c < -tol).any()):
            raise ValueError("covs must be positive semi-definite (variances >= 0); got a negative variance")
        c = c.clamp_min(0.0)
        if not allow_singular and bool((c <= 0).any()):
            raise ValueError(
                "covs must be positive definite (variances > 0); pass allow_singular=True for point masses "
                "or degenerate components"
            )
        self.means, self.weights, self.log_weights = mu, w, torch.log(w)
        #: eigenvalues (K, d) and eigenvectors (K, d, d) of the covariances; ``None`` when all are diagonal
        self.eigvals, self.eigvecs = c, U
        self.singular = bool((c <= 0).any())

    @staticmethod
    def _eigen(cov: Tensor, K: int, d: int) -> tuple[Tensor, Tensor | None]:
        if cov.ndim == 0:
            return cov.expand(K, d).clone(), None
        if cov.shape == (K,):
            return cov[:, None].expand(K, d).clone(), None
        if cov.shape == (K, d):
            return cov.clone(), None
        if cov.shape == (K, d, d):
            if not torch.allclose(cov, cov.transpose(1, 2), rtol=1e-10, atol=1e-12):
                raise ValueError("covs given as (K, d, d) matrices must be symmetric")
            c, U = torch.linalg.eigh(cov)
            return c, U
        raise ValueError(
            f"covs must be a number, or have shape ({K},), ({K}, {d}) or ({K}, {d}, {d}); got "
            f"{tuple(cov.shape)}"
        )

    @classmethod
    def point_masses(cls, atoms, weights=None) -> GaussianMixture:
        """Dirac atoms ``sum_k w_k delta(x - a_k)``: the target on which data-prediction solvers are exact."""
        a = _float64(atoms, "atoms")
        return cls(a, 0.0, weights, allow_singular=True)

    # --- shape helpers -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def covariances(self) -> Tensor:
        """(K, d, d) covariance matrices, float64."""
        if self.eigvecs is None:
            return torch.diag_embed(self.eigvals)
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)

    def _cov_arg(self) -> Tensor:
        return self.eigvals if self.eigvecs is None else self.covariances()

    def _flat(self, x: Tensor, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {x.dtype}")
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(
                f"{name} must have shape (B, ...) with prod(...) = d = {self.dim}; got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.dim)

    @staticmethod
    def _times(t: TimeLike, B: int, device) -> Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64, device=device)
        return tt.expand(B) if tt.ndim == 0 else tt

    def _check_t(self, t: TimeLike, B: int, schedule: Schedule) -> None:
        _check_schedule(schedule)
        tt = torch.as_tensor(t, dtype=torch.float64)
        if tt.ndim > 1 or (tt.ndim == 1 and tt.shape[0] != B):
            raise ValueError(f"t must be a number, a 0-d tensor or have shape ({B},); got {tuple(tt.shape)}")
        schedule.check_t(tt, "t")
        if self.singular and bool((schedule.sigma(tt) <= 0).any()):
            raise ValueError("t must have sigma(t) > 0 for a mixture with singular (point-mass) components")

    # --- the core: per-component statistics of p_t at x --------------------------------------
    def _stats(self, x: Tensor, a: Tensor, s: Tensor) -> dict[str, Tensor]:
        """x (B, d); a, s (B,) float64. Returns log p, responsibilities and whitened residuals."""
        dt = x.dtype
        a_, s_ = a.to(x.device, dt)[:, None, None], s.to(x.device, dt)[:, None, None]
        mu = self.means.to(x.device, dt)
        c = self.eigvals.to(x.device, dt)
        diff = x[:, None, :] - a_ * mu[None]  # (B, K, d)
        U = None if self.eigvecs is None else self.eigvecs.to(x.device, dt)
        y = diff if U is None else torch.einsum("kji,bkj->bki", U, diff)  # U_k^T (x - a mu_k)
        v = a_**2 * c[None] + s_**2  # eigenvalues of alpha^2 C_k + sigma^2 I
        log_comp = (
            -0.5 * (y * y / v).sum(-1)
            - 0.5 * torch.log(v).sum(-1)
            - 0.5 * self.dim * math.log(2 * math.pi)
            + self.log_weights.to(x.device, dt)
        )
        log_p = torch.logsumexp(log_comp, dim=-1)
        r = torch.exp(log_comp - log_p[:, None])
        return {"log_p": log_p, "r": r, "y": y, "v": v, "U": U, "a": a_, "c": c, "mu": mu}

    @staticmethod
    def _rotate(U: Tensor | None, z: Tensor) -> Tensor:
        """U_k z_k for z of shape (B, K, d)."""
        return z if U is None else torch.einsum("kij,bkj->bki", U, z)

    def _coeffs(self, t: TimeLike, B: int, schedule: Schedule, device) -> tuple[Tensor, Tensor]:
        tt = self._times(t, B, device)
        return schedule.alpha(tt), schedule.sigma(tt)

    def _score(self, st: dict[str, Tensor]) -> Tensor:
        comp = self._rotate(st["U"], st["y"] / st["v"])  # Sigma_k^{-1} (x - a mu_k)
        return -(st["r"][..., None] * comp).sum(1)

    def _x0(self, st: dict[str, Tensor]) -> Tensor:
        # E[x_0 | x_t, k] = mu_k + a C_k Sigma_k^{-1} (x - a mu_k)
        post = st["mu"][None] + self._rotate(st["U"], st["a"] * st["c"][None] * st["y"] / st["v"])
        return (st["r"][..., None] * post).sum(1)

    # --- public quantities -------------------------------------------------------------------
    def log_prob(self, x: Tensor, t: TimeLike | None = None, schedule: Schedule | None = None) -> Tensor:
        """log p_t(x) of shape (B,); ``t=None`` gives the data density log p_0."""
        xf = self._flat(x)
        B = xf.shape[0]
        if t is None:
            if self.singular:
                raise ValueError("log_prob at t=None is undefined: p_0 has singular (point-mass) components")
            one = torch.ones(B, dtype=torch.float64, device=xf.device)
            return self._stats(xf, one, 0.0 * one)["log_p"]
        if schedule is None:
            raise ValueError("schedule is required when t is given")
        self._check_t(t, B, schedule)
        return self._stats(xf, *self._coeffs(t, B, schedule, xf.device))["log_p"]

    def _public(self, x: Tensor, t: TimeLike, schedule: Schedule, what: str) -> Tensor:
        xf = self._flat(x)
        self._check_t(t, xf.shape[0], schedule)
        return self._predict(xf, t, schedule, what).reshape(x.shape)

    def _predict(self, xf: Tensor, t: TimeLike, schedule: Schedule, what: str) -> Tensor:
        a, s = self._coeffs(t, xf.shape[0], schedule, xf.device)
        st = self._stats(xf, a, s)
        if what == "x0":
            return self._x0(st)
        score = self._score(st)
        if what == "score":
            return score
        return -s.to(xf.device, xf.dtype)[:, None] * score  # eps = -sigma * score

    def score(self, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
        """grad_x log p_t(x), shape of x."""
        return self._public(x, t, schedule, "score")

    def eps(self, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
        """The exact noise prediction E[eps | x_t = x] = -sigma_t grad log p_t(x)."""
        return self._public(x, t, schedule, "eps")

    def x0(self, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
        """The exact denoiser E[x_0 | x_t = x] (posterior mean, mixture of per-component Wiener filters)."""
        return self._public(x, t, schedule, "x0")

    def laplacian(self, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
        """tr grad^2 log p_t(x), shape (B,), in closed form.

        With s_k = -Sigma_k^{-1}(x - a mu_k) and responsibilities r_k, the Hessian of a log-mixture is
        sum_k r_k (-Sigma_k^{-1} + s_k s_k^T) - s s^T with s = sum_k r_k s_k; its trace follows.
        """
        xf = self._flat(x)
        self._check_t(t, xf.shape[0], schedule)
        st = self._stats(xf, *self._coeffs(t, xf.shape[0], schedule, xf.device))
        return self._laplacian(st)

    def _laplacian(self, st: dict[str, Tensor]) -> Tensor:
        q = st["y"] / st["v"]
        per = -(1.0 / st["v"]).sum(-1) + (q * q).sum(-1)  # (B, K)
        s = self._score(st)
        return (st["r"] * per).sum(-1) - (s * s).sum(-1)

    def hvp(self, x: Tensor, t: TimeLike, schedule: Schedule, vec: Tensor) -> Tensor:
        """The Hessian-vector product grad^2 log p_t(x) vec in closed form (see :meth:`laplacian`)."""
        xf, vf = self._flat(x), self._flat(vec, "vec")
        if vf.shape != xf.shape:
            raise ValueError(f"vec must have the shape of x {tuple(x.shape)}; got {tuple(vec.shape)}")
        self._check_t(t, xf.shape[0], schedule)
        st = self._stats(xf, *self._coeffs(t, xf.shape[0], schedule, xf.device))
        return self._hvp(st, vf).reshape(x.shape)

    def _hvp(self, st: dict[str, Tensor], vf: Tensor) -> Tensor:
        U = st["U"]
        vk = vf[:, None, :].expand_as(st["y"])
        vrot = vk if U is None else torch.einsum("kji,bkj->bki", U, vk)  # U_k^T v
        q = st["y"] / st["v"]
        sk = -self._rotate(U, q)  # per-component scores (B, K, d)
        sk_dot_v = -(q * vrot).sum(-1)  # (B, K)
        s = (st["r"][..., None] * sk).sum(1)
        out = (st["r"][..., None] * (-self._rotate(U, vrot / st["v"]) + sk * sk_dot_v[..., None])).sum(1)
        return out - s * (s * vf).sum(-1, keepdim=True)

    # --- moments and sampling ----------------------------------------------------------------
    def mean(self) -> Tensor:
        return self.weights @ self.means

    def cov(self) -> Tensor:
        """Covariance of p_0: sum_k w_k (C_k + mu_k mu_k^T) - m m^T."""
        m = self.mean()
        second = (
            self.weights[:, None, None] * (self.covariances() + self.means[:, :, None] * self.means[:, None])
        ).sum(0)
        return second - torch.outer(m, m)

    def mean_t(self, t: float, schedule: Schedule) -> Tensor:
        """Mean of p_t: alpha_t m."""
        schedule.check_t(t)
        return schedule.alpha(t) * self.mean()

    def cov_t(self, t: float, schedule: Schedule) -> Tensor:
        """Covariance of p_t: alpha_t^2 Cov(p_0) + sigma_t^2 I."""
        schedule.check_t(t)
        return schedule.alpha(t) ** 2 * self.cov() + schedule.sigma(t) ** 2 * torch.eye(
            self.dim, dtype=torch.float64
        )

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device=None,
    ) -> Tensor:
        """n exact samples of p_0, shape (n, d)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int; got {n!r}")
        dev = torch.device("cpu") if device is None else torch.device(device)
        gdev = generator.device if generator is not None else dev
        k = torch.multinomial(self.weights.to(gdev), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=gdev)
        k, z = k.cpu(), z.cpu()
        z = torch.sqrt(self.eigvals[k]) * z
        if self.eigvecs is not None:
            z = torch.einsum("nij,nj->ni", self.eigvecs[k], z)
        return (self.means[k] + z).to(dev, dtype)

    def sample_t(
        self,
        n: int,
        t: float,
        schedule: Schedule,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device=None,
    ) -> Tensor:
        """n exact samples of p_t = law of alpha_t x_0 + sigma_t eps, shape (n, d)."""
        _check_schedule(schedule).check_t(t)
        x0 = self.sample(n, generator=generator, dtype=torch.float64)
        gdev = generator.device if generator is not None else torch.device("cpu")
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=gdev).cpu()
        tt = torch.as_tensor(t, dtype=torch.float64)
        x = schedule.alpha(tt) * x0 + schedule.sigma(tt) * eps
        return x.to(torch.device("cpu") if device is None else device, dtype)

    # --- the exact model and flow map --------------------------------------------------------
    def model(self, schedule: Schedule, prediction: str = "eps") -> Callable[[Tensor, Tensor], Tensor]:
        """``(x, t) -> prediction`` (``eps``, ``x0`` or ``score``): the exact, perfectly trained network.

        ``x`` has shape (B, ...) with prod(...) = d; ``t`` is 0-d or (B,). The callable does not validate
        ``t`` (no host sync inside sampling loops); check times at the solver's entry point.
        """
        _check_schedule(schedule)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")

        def f(x: Tensor, t: Tensor) -> Tensor:
            xf = self._flat(x)
            return self._predict(xf, t, schedule, prediction).reshape(x.shape)

        return f

    def flow_map(self, x: Tensor, t_from: float, t_to: float, schedule: Schedule) -> Tensor:
        """The exact probability-flow ODE map x_{t_from} -> x_{t_to}, for a single Gaussian (K = 1).

        In the eigenbasis of C, z = U^T (x - alpha mu) obeys dz/dt = (f + g^2 / (2 v)) z = (v'/(2v)) z with
        v = alpha^2 c + sigma^2 (use f = alpha'/alpha and g^2 = (sigma^2)' - 2 f sigma^2), hence
        z_t = sqrt(v_t / v_s) z_s componentwise.
        Point masses (c = 0) give the DDIM map z_t = (sigma_t / sigma_s) z_s.
        """
        if self.n_components != 1:
            raise ValueError(
                f"flow_map is closed-form only for one Gaussian; this mixture has K={self.n_components}"
            )
        xf = self._flat(x)
        for name, tt in (("t_from", t_from), ("t_to", t_to)):
            if torch.as_tensor(tt).ndim != 0:
                raise ValueError(f"{name} must be a number or a 0-d tensor")
            self._check_t(tt, xf.shape[0], schedule)
        dt = xf.dtype
        ts, tt = torch.as_tensor(t_from, dtype=torch.float64), torch.as_tensor(t_to, dtype=torch.float64)
        a_s, s_s, a_t, s_t = schedule.alpha(ts), schedule.sigma(ts), schedule.alpha(tt), schedule.sigma(tt)
        c = self.eigvals[0]
        ratio = torch.sqrt((a_t**2 * c + s_t**2) / (a_s**2 * c + s_s**2)).to(xf.device, dt)
        mu = self.means[0].to(xf.device, dt)
        U = None if self.eigvecs is None else self.eigvecs[0].to(xf.device, dt)
        z = xf - a_s.to(dt) * mu
        z = z * ratio if U is None else (z @ U) * ratio @ U.T
        return (a_t.to(dt) * mu + z).reshape(x.shape)


def random_mixture(
    d: int, spread: float, var_lo: float, var_hi: float, seed: int = 0, weights=(0.5, 0.3, 0.2)
) -> GaussianMixture:
    """A float64 mixture of ``len(weights)`` diagonal Gaussians in ``d`` dimensions, drawn from ``seed``: means
    N(0, spread^2 I), variances uniform in [var_lo, var_hi]. The test and benchmark suites fit convergence
    orders on these (a smooth, curved PF-ODE with exact eps)."""
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"d must be a positive int; got {d!r}")
    if not 0 < var_lo <= var_hi:
        raise ValueError(f"need 0 < var_lo <= var_hi; got var_lo={var_lo!r}, var_hi={var_hi!r}")
    g = torch.Generator().manual_seed(seed)
    k = len(weights)
    mu = torch.randn(k, d, generator=g, dtype=torch.float64) * spread
    var = var_lo + (var_hi - var_lo) * torch.rand(k, d, generator=g, dtype=torch.float64)
    return GaussianMixture(mu, var, torch.tensor(weights, dtype=torch.float64))


def Gaussian(mean, cov, *, allow_singular: bool = False) -> GaussianMixture:
    """One Gaussian N(mean, cov) (cov: a number, (d,) diagonal or (d, d)), as a K = 1 mixture."""
    m = _float64(mean, "mean")
    if m.ndim != 1:
        raise ValueError(f"mean must have shape (d,); got {tuple(m.shape)}")
    c = _float64(cov, "cov")
    if c.ndim == 0:
        c = c.reshape(1)
    elif c.ndim in (1, 2):
        c = c[None]
    else:
        raise ValueError(f"cov must be a number, (d,) or (d, d); got {tuple(c.shape)}")
    return GaussianMixture(m[None], c, None, allow_singular=allow_singular)


class ClassConditionalMixture:
    """Per-class Gaussian mixtures p(x | c) with class prior pi_c: exact conditional and unconditional scores.

    Under any Gaussian forward process, p_t(x | c) is the class's mixture pushed forward and
    p_t(x) = sum_c pi_c p_t(x | c) is itself the mixture of all components with weights pi_c w_{c,k}.
    Classifier-free guidance (Ho & Salimans 2022) with scale ``s`` uses
    eps_s = eps_uncond + s (eps_cond - eps_uncond): s = 0 is unconditional, s = 1 conditional.
    """

    def __init__(self, classes: Sequence[GaussianMixture], class_weights=None):
        classes = list(classes)
        if not classes or not all(isinstance(m, GaussianMixture) for m in classes):
            raise TypeError("classes must be a non-empty sequence of GaussianMixture")
        d = classes[0].dim
        if any(m.dim != d for m in classes):
            raise ValueError(f"classes must share one dimension; got {[m.dim for m in classes]}")
        C = len(classes)
        pi = _probabilities(class_weights, "class_weights", C)
        self.classes, self.class_weights = classes, pi
        full = any(m.eigvecs is not None for m in classes)
        covs = torch.cat([m.covariances() if full else m.eigvals for m in classes])
        self.unconditional = GaussianMixture(
            torch.cat([m.means for m in classes]),
            covs,
            torch.cat([pi[i] * m.weights for i, m in enumerate(classes)]),
            allow_singular=any(m.singular for m in classes),
        )

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def conditional(self, label: int) -> GaussianMixture:
        if not isinstance(label, int) or not 0 <= label < self.n_classes:
            raise ValueError(f"label must be an int in [0, {self.n_classes}); got {label!r}")
        return self.classes[label]

    def _labels(self, labels, B: int) -> Tensor:
        lab = torch.as_tensor(labels)
        if lab.dtype not in (torch.int32, torch.int64) or lab.shape != (B,):
            raise ValueError(
                f"labels must be an integer tensor of shape ({B},); got {lab.dtype} {tuple(lab.shape)}"
            )
        if bool(((lab < 0) | (lab >= self.n_classes)).any()):
            raise ValueError(f"labels must lie in [0, {self.n_classes})")
        return lab

    def class_log_posterior(self, x: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
        """log p_t(c | x), shape (B, C): the exact noisy classifier."""
        logs = torch.stack([m.log_prob(x, t, schedule) for m in self.classes], -1)
        logs = logs + torch.log(self.class_weights).to(logs)
        return logs - torch.logsumexp(logs, -1, keepdim=True)

    def model(
        self, schedule: Schedule, labels, prediction: str = "eps", guidance_scale: float = 1.0
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """``(x, t) -> prediction`` guided towards ``labels`` (B,) with classifier-free guidance scale."""
        uncond = self.unconditional.model(schedule, prediction)
        conds = [m.model(schedule, prediction) for m in self.classes]
        scale = float(guidance_scale)

        def f(x: Tensor, t: Tensor) -> Tensor:
            lab = self._labels(labels, x.shape[0]).to(x.device)
            per = torch.stack([m(x, t) for m in conds])  # (C, B, ...)
            cond = per.gather(0, lab.view(1, -1, *([1] * (x.ndim - 1))).expand(1, *x.shape))[0]
            if scale == 1.0:
                return cond
            u = uncond(x, t)
            return u + scale * (cond - u)

        return f
