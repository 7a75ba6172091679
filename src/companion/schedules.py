"""Noise schedules of Gaussian forward processes  x_t = alpha(t) x_0 + sigma(t) eps.

Every schedule is a small class over the same vocabulary as the official DPM-Solver code:
``log_alpha`` (the marginal log-mean coefficient), ``sigma`` (the marginal std), ``lambda_``
(half the log signal-to-noise ratio, ``log alpha - log sigma``) and its inverse ``t_of_lambda``.
The drift and diffusion of the forward SDE  dx = f(t) x dt + g(t) dW  follow from (alpha, sigma)
alone (Kingma et al. 2021; Lu et al. 2022, eq. 2.2):

    f(t)   = d log alpha / dt,
    g^2(t) = d sigma^2 / dt - 2 f(t) sigma^2 = -2 sigma^2 d lambda / dt.

Methods accept a float or a tensor of any shape and keep the tensor's dtype; pass float64 times
for coefficients (the solvers do). They do not validate their input, because they sit inside
sampling loops: entry points call :meth:`Schedule.check_t` once instead.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "VPLinear",
    "VPCosine",
    "VPDiscrete",
    "SubVP",
    "VE",
    "EDM",
    "RectifiedFlow",
    "MeanReverting",
    "get_schedule",
]


def _as_tensor(t: float | Tensor) -> Tensor:
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule(ABC):
    """A Gaussian forward process on the time interval ``[t_min, t_max]``."""

    #: Time domain; solvers integrate from ``t_max`` (or less) down to ``t_min`` (or more).
    t_min: float = 0.0
    t_max: float = 1.0

    # --- what a subclass defines -------------------------------------------------------------
    @abstractmethod
    def log_alpha(self, t: float | Tensor) -> Tensor:
        """log alpha(t), the log of the marginal mean coefficient."""

    @abstractmethod
    def sigma(self, t: float | Tensor) -> Tensor:
        """sigma(t), the marginal standard deviation."""

    @abstractmethod
    def t_of_lambda(self, lam: float | Tensor) -> Tensor:
        """The inverse of :meth:`lambda_`."""

    @abstractmethod
    def d_log_alpha(self, t: float | Tensor) -> Tensor:
        """f(t) = d log alpha / dt, the drift coefficient of the forward SDE."""

    @abstractmethod
    def d_log_sigma(self, t: float | Tensor) -> Tensor:
        """d log sigma / dt."""

    # --- derived quantities ------------------------------------------------------------------
    def alpha(self, t: float | Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def log_sigma(self, t: float | Tensor) -> Tensor:
        return torch.log(self.sigma(t))

    def lambda_(self, t: float | Tensor) -> Tensor:
        """Half log-SNR, lambda(t) = log alpha(t) - log sigma(t); strictly decreasing in t."""
        return self.log_alpha(t) - self.log_sigma(t)

    def d_lambda(self, t: float | Tensor) -> Tensor:
        return self.d_log_alpha(t) - self.d_log_sigma(t)

    def f(self, t: float | Tensor) -> Tensor:
        """Drift coefficient f(t) of the forward SDE  dx = f x dt + g dW."""
        return self.d_log_alpha(t)

    def g2(self, t: float | Tensor) -> Tensor:
        """Squared diffusion coefficient g^2(t) = -2 sigma^2 d lambda / dt."""
        return -2.0 * self.sigma(t) ** 2 * self.d_lambda(t)

    def snr(self, t: float | Tensor) -> Tensor:
        return torch.exp(2.0 * self.lambda_(t))

    # --- validation at entry points ----------------------------------------------------------
    def check_t(self, t: float | Tensor, name: str = "t") -> None:
        """Raise ``ValueError`` unless every entry of ``t`` is finite and in ``[t_min, t_max]``."""
        tt = _as_tensor(t).detach()
        if not bool(torch.isfinite(tt).all()):
            raise ValueError(f"{name} must be finite; got {t!r}")
        lo, hi = float(tt.min()), float(tt.max())
        if lo < self.t_min or hi > self.t_max:
            raise ValueError(
                f"{name} must lie in [{self.t_min}, {self.t_max}] for {type(self).__name__}; "
                f"got values in [{lo:g}, {hi:g}]"
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict:
        return {}


def _positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite; got {value!r}")
    return float(value)


class VPLinear(Schedule):
    """Variance-preserving SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021).

    log alpha(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2, sigma = sqrt(1 - alpha^2).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = _positive("beta_min", beta_min)
        self.beta_max = _positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min; got beta_min={beta_min}, beta_max={beta_max}")

    def _params(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t: float | Tensor) -> Tensor:
        t = _as_tensor(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        t = _as_tensor(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def sigma(self, t):
        # sqrt(1 - alpha^2) without cancellation at small t.
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_log_alpha(self, t):
        return -0.5 * self.beta(t)

    def d_log_sigma(self, t):
        # d/dt 0.5 log(1 - alpha^2) = -alpha^2 f / (1 - alpha^2)
        la = self.log_alpha(t)
        return -self.d_log_alpha(t) / torch.expm1(-2.0 * la)

    def g2(self, t):
        # VP: sigma^2 = 1 - alpha^2 gives g^2 = -2 f exactly, finite at t = 0 where sigma = 0 and the generic
        # -2 sigma^2 d lambda/dt is 0 * inf.
        return -2.0 * self.d_log_alpha(t)

    def t_of_lambda(self, lam):
        lam = _as_tensor(lam)
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * lam)
        delta = self.beta_max - self.beta_min
        # Root of delta t^2 / 4 + beta_min t / 2 + log_alpha = 0, in the form that is stable as delta -> 0.
        return -4.0 * log_alpha / (self.beta_min + torch.sqrt(self.beta_min**2 - 4.0 * delta * log_alpha))


class SubVP(VPLinear):
    """The sub-VP SDE of Song et al. (2021, eq. 29): the VP mean with sigma(t) = 1 - alpha(t)^2.

    Its diffusion g^2 = beta(t) (1 - alpha^4) is strictly smaller than the VP one at every t.
    """

    def sigma(self, t):
        return -torch.expm1(2.0 * self.log_alpha(t))

    def log_sigma(self, t):
        return torch.log(self.sigma(t))

    def d_log_sigma(self, t):
        # d/dt log(1 - alpha^2) = -2 alpha^2 f / (1 - alpha^2)
        return 2.0 * super().d_log_sigma(t)

    def g2(self, t):
        # g^2 = -2 f (1 - alpha^4) (Song et al. 2021, eq. 29), finite at t = 0.
        return 2.0 * self.d_log_alpha(t) * torch.expm1(4.0 * self.log_alpha(t))

    def t_of_lambda(self, lam):
        # lambda = log a - log(1 - a^2)  =>  e^lambda a^2 + a - e^lambda = 0, a in (0, 1).
        lam = _as_tensor(lam)
        e = torch.exp(lam)
        a = 2.0 * e / (1.0 + torch.sqrt(1.0 + 4.0 * e * e))
        return VPLinear.t_of_lambda(self, torch.log(a) - 0.5 * torch.log1p(-a * a))


class VPCosine(Schedule):
    """The cosine schedule of Nichol & Dhariwal (2021) in continuous time.

    log alpha(t) = log cos(pi/2 (t + s)/(1 + s)) - log cos(pi/2 s/(1 + s)). alpha reaches 0 at t = 1, so
    the domain stops at ``t_max`` (the official DPM-Solver uses 0.9946, where lambda ~ -5.0).
    """

    def __init__(self, s: float = 0.008, t_max: float = 0.9946):
        self.s = _positive("s", s)
        if not 0.0 < t_max < 1.0:
            raise ValueError(f"t_max must lie in (0, 1) for VPCosine; got {t_max!r}")
        self.t_max = float(t_max)
        self._log_alpha_0 = math.log(math.cos(math.pi / 2 * self.s / (1.0 + self.s)))

    def _params(self) -> dict:
        return {"s": self.s, "t_max": self.t_max}

    def _angle(self, t):
        return (_as_tensor(t) + self.s) / (1.0 + self.s) * (math.pi / 2)

    def log_alpha(self, t):
        return torch.log(torch.cos(self._angle(t))) - self._log_alpha_0

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_log_alpha(self, t):
        return -torch.tan(self._angle(t)) * (math.pi / 2) / (1.0 + self.s)

    def d_log_sigma(self, t):
        return -self.d_log_alpha(t) / torch.expm1(-2.0 * self.log_alpha(t))

    def g2(self, t):
        # VP: sigma^2 = 1 - alpha^2 gives g^2 = -2 f exactly, finite at t = 0 where sigma = 0 and the generic
        # -2 sigma^2 d lambda/dt is 0 * inf.
        return -2.0 * self.d_log_alpha(t)

    def t_of_lambda(self, lam):
        lam = _as_tensor(lam)
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * lam)
        return (
            2.0 * (1.0 + self.s) / math.pi * torch.arccos(torch.exp(log_alpha + self._log_alpha_0)) - self.s
        )


class VPDiscrete(Schedule):
    """A discrete DDPM schedule (``betas`` or ``alphas_cumprod`` of length N) in continuous time.

    As in the official DPM-Solver, step n = 0..N-1 sits at t_n = (n + 1) / N and log alpha is linear
    between the knots, and from log alpha(0) = 0 to the first knot, so lambda is continuous and invertible.
    ``discrete_timestep(t)`` gives the model's integer-scale input, (t - 1/N) N.
    """

    def __init__(self, betas: Tensor | None = None, alphas_cumprod: Tensor | None = None):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("VPDiscrete needs exactly one of betas or alphas_cumprod")
        if betas is not None:
            b = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if b.numel() < 2 or not bool(((b > 0) & (b < 1)).all()):
                raise ValueError("betas must be a 1-D sequence of at least 2 values in (0, 1)")
            ac = torch.cumprod(1.0 - b, 0)
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()):
                raise ValueError("alphas_cumprod must be a 1-D sequence of at least 2 values in (0, 1)")
            if not bool((ac[1:] < ac[:-1]).all()):
                raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = ac
        self.N = ac.numel()
        self.t_min, self.t_max = 0.0, 1.0
        self._t = torch.linspace(1.0 / self.N, 1.0, self.N, dtype=torch.float64)
        self._log_alpha = 0.5 * torch.log(ac)
        # t = 0 is clean data (alpha = 1, sigma = 0); log alpha is linear from there to t_0 = 1/N.
        la0 = torch.zeros(1, dtype=torch.float64)
        self._knots_t = torch.cat([torch.zeros(1, dtype=torch.float64), self._t])
        self._knots_la = torch.cat([la0, self._log_alpha])

    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> VPDiscrete:
        """The DDPM linear-beta schedule (diffusers' ``beta_schedule="linear"``)."""
        return cls(betas=torch.linspace(beta_start, beta_end, n, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, n: int = 1000, beta_start: float = 8.5e-4, beta_end: float = 1.2e-2) -> VPDiscrete:
        """Stable Diffusion's schedule (diffusers' ``beta_schedule="scaled_linear"``)."""
        return cls(betas=torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2)

    def _params(self) -> dict:
        return {"N": self.N}

    @staticmethod
    def _segment(x: Tensor, xp: Tensor) -> Tensor:
        """Index i of the segment [xp[i], xp[i+1]] used for x (end segments extend outwards)."""
        return torch.clamp(torch.searchsorted(xp, x.detach().contiguous()) - 1, 0, xp.numel() - 2)

    @classmethod
    def _interp(cls, x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
        """Piecewise-linear interpolation, linear extrapolation outside [xp[0], xp[-1]]."""
        xp, fp = xp.to(x.device, x.dtype), fp.to(x.device, x.dtype)
        i = cls._segment(x, xp)
        return fp[i] + (x - xp[i]) * (fp[i + 1] - fp[i]) / (xp[i + 1] - xp[i])

    def _slope(self, t: Tensor) -> Tensor:
        xp, fp = self._knots_t.to(t.device, t.dtype), self._knots_la.to(t.device, t.dtype)
        i = self._segment(t, xp)
        return (fp[i + 1] - fp[i]) / (xp[i + 1] - xp[i])

    def log_alpha(self, t):
        t = _as_tensor(t)
        return self._interp(t, self._knots_t, self._knots_la)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_log_alpha(self, t):
        return self._slope(_as_tensor(t))

    def d_log_sigma(self, t):
        return -self.d_log_alpha(t) / torch.expm1(-2.0 * self.log_alpha(t))

    def g2(self, t):
        # VP: sigma^2 = 1 - alpha^2 gives g^2 = -2 f exactly, finite at t = 0 where sigma = 0 and the generic
        # -2 sigma^2 d lambda/dt is 0 * inf.
        return -2.0 * self.d_log_alpha(t)

    def t_of_lambda(self, lam):
        lam = _as_tensor(lam)
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * lam)
        # log alpha is decreasing in t: interpolate t against the reversed knots.
        return self._interp(log_alpha, self._knots_la.flip(0), self._knots_t.flip(0))

    def discrete_timestep(self, t: float | Tensor) -> Tensor:
        """The integer-scale model input for time t: t_n = (n + 1)/N maps to n."""
        return (_as_tensor(t) - 1.0 / self.N) * self.N


class VE(Schedule):
    """Variance-exploding SDE (Song et al. 2021): alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = _positive("sigma_min", sigma_min)
        self.sigma_max = _positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min; got {sigma_min}, {sigma_max}")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def log_alpha(self, t):
        return 0.0 * _as_tensor(t)

    def log_sigma(self, t):
        return math.log(self.sigma_min) + _as_tensor(t) * self._log_ratio

    def sigma(self, t):
        return torch.exp(self.log_sigma(t))

    def d_log_alpha(self, t):
        return 0.0 * _as_tensor(t)

    def d_log_sigma(self, t):
        return torch.full_like(_as_tensor(t), self._log_ratio)

    def t_of_lambda(self, lam):
        return (-_as_tensor(lam) - math.log(self.sigma_min)) / self._log_ratio


class EDM(Schedule):
    """The EDM / Karras et al. (2022) process: alpha = 1, sigma(t) = t, on [0, sigma_max].

    Time is the noise level itself, so lambda = -log t and t_of_lambda = exp(-lambda); t = 0 is clean data.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min = _positive("sigma_min", sigma_min)
        self.sigma_max = _positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min; got {sigma_min}, {sigma_max}")
        self.t_min, self.t_max = 0.0, self.sigma_max

    def _params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def log_alpha(self, t):
        return 0.0 * _as_tensor(t)

    def sigma(self, t):
        return _as_tensor(t) * 1.0

    def log_sigma(self, t):
        return torch.log(_as_tensor(t))

    def d_log_alpha(self, t):
        return 0.0 * _as_tensor(t)

    def d_log_sigma(self, t):
        return 1.0 / _as_tensor(t)

    def t_of_lambda(self, lam):
        return torch.exp(-_as_tensor(lam))


class RectifiedFlow(Schedule):
    """The rectified-flow / conditional-OT path (Liu et al. 2023; Lipman et al. 2023): alpha = 1 - t,
    sigma = t.

    lambda = log((1 - t) / t), so t_of_lambda = sigmoid(-lambda). The flow-matching velocity is
    dx/dt = eps - x0 (diffusers' ``flow_prediction``).
    """

    def log_alpha(self, t):
        return torch.log1p(-_as_tensor(t))

    def sigma(self, t):
        return _as_tensor(t) * 1.0

    def log_sigma(self, t):
        return torch.log(_as_tensor(t))

    def d_log_alpha(self, t):
        return -1.0 / (1.0 - _as_tensor(t))

    def d_log_sigma(self, t):
        return 1.0 / _as_tensor(t)

    def t_of_lambda(self, lam):
        return torch.sigmoid(-_as_tensor(lam))


class MeanReverting(Schedule):
    """Mean-reverting diffusion (IR-SDE, Luo et al. 2023): dx = theta_t (mu - x) dt + g_t dW with
    g_t^2 = 2 sigma_inf^2 theta_t, whose marginal is x_t | x_0 ~ N(alpha_t x_0 + (1 - alpha_t) mu, sigma_t^2 I),

        alpha_t = exp(-int_0^t theta),   sigma_t^2 = sigma_inf^2 (1 - alpha_t^2).

    On y = x - mu this is the Gaussian forward process y_t = alpha_t y_0 + sigma_t eps with f = -theta and
    g^2 = -2 sigma_inf^2 f, so every solver runs it through ``companion.sample(..., mu=mu)``, which shifts.
    lambda_t = log(alpha_t / sigma_t) is the VP log-SNR minus log sigma_inf, so its inverse is closed form.

    ``MeanReverting(sigma_inf)`` is continuous: theta_t = theta_min + t (theta_max - theta_min) on [0, 1]
    (alpha_1 = exp(-(theta_min + theta_max)/2) ~ 0.006 by default). :meth:`irsde` builds IR-SDE's discrete
    tables instead (``IRSDE._initialize`` of the IR-SDE / MR Sampler code: T, cosine | linear | constant
    theta, eps = alpha at the last step): knot n = 0..T sits at t = n / T, log alpha is linear in t between
    knots, and t = 0 is knot 0, where alpha_0 = exp(-theta_0 dt) < 1 as in the MR Sampler's tables.
    """

    def __init__(self, sigma_inf: float = 0.5, theta_min: float = 0.1, theta_max: float = 10.0):
        self.sigma_inf = _positive("sigma_inf", sigma_inf)
        self.theta_min = _positive("theta_min", theta_min)
        self.theta_max = _positive("theta_max", theta_max)
        if self.theta_max < self.theta_min:
            raise ValueError(
                f"theta_max must be >= theta_min; got theta_min={theta_min}, theta_max={theta_max}"
            )
        self._log_sinf = math.log(self.sigma_inf)
        self.T: int | None = None  # discrete tables only

    def _params(self) -> dict:
        if self.T is not None:
            return {"sigma_inf": self.sigma_inf, "T": self.T, "theta": self.theta_name, "eps": self.eps}
        return {"sigma_inf": self.sigma_inf, "theta_min": self.theta_min, "theta_max": self.theta_max}

    # --- IR-SDE's discrete tables ------------------------------------------------------------------
    @classmethod
    def irsde(
        cls, sigma_inf: float = 50 / 255, T: int = 100, theta: str = "cosine", eps: float = 0.005
    ) -> MeanReverting:
        """IR-SDE's tables, computed as its ``_initialize`` does (float32): ``thetas`` (T + 1 values),
        ``thetas_cumsum``, ``dt = -log(eps) / thetas_cumsum[-1]``, ``sigma_bars`` and the MR Sampler's
        ``alphas = exp(-thetas_cumsum dt)``. ``sigma_inf`` is IR-SDE's ``max_sigma`` (values >= 1 are read as
        x/255, as IR-SDE does). The schedule's log alpha knots are -thetas_cumsum dt in float64."""
        if not isinstance(T, int) or isinstance(T, bool) or T < 2:
            raise ValueError(f"T must be an int >= 2; got {T!r}")
        if theta not in ("cosine", "linear", "constant"):
            raise ValueError(f"theta must be 'cosine', 'linear' or 'constant'; got {theta!r}")
        sigma_inf = _positive("sigma_inf", sigma_inf)
        sigma_inf = sigma_inf / 255 if sigma_inf >= 1 else sigma_inf
        eps = _positive("eps", eps)
        if eps >= 1:
            raise ValueError(f"eps (alpha at the last step) must lie in (0, 1); got {eps!r}")
        f32 = torch.float32
        if theta == "cosine":
            n = T + 2
            s = 0.008
            grid = torch.linspace(0, n, n + 1, dtype=f32)
            ac = torch.cos(((grid / n) + s) / (1 + s) * math.pi * 0.5) ** 2
            ac = ac / ac[0]
            thetas = 1 - ac[1:-1]
        elif theta == "linear":
            scale = 1000 / (T + 1)
            thetas = torch.linspace(scale * 0.0001, scale * 0.02, T + 1, dtype=f32)
        else:
            thetas = torch.ones(T + 1, dtype=f32)
        cumsum = torch.cumsum(thetas, dim=0)
        dt = -1 / cumsum[-1] * math.log(eps)
        self = cls(sigma_inf=sigma_inf)
        self.T, self.theta_name, self.eps = T, theta, eps
        self.thetas, self.thetas_cumsum, self.dt = thetas, cumsum, dt
        self.sigma_bars = torch.sqrt(sigma_inf**2 * (1 - torch.exp(-2 * cumsum * dt)))
        self.alphas = torch.exp(-cumsum * dt)
        self._knots_t = torch.arange(T + 1, dtype=torch.float64) / T
        self._knots_la = -cumsum.double() * dt.double()
        return self

    def _slope(self, t: Tensor) -> Tensor:
        xp, fp = self._knots_t.to(t.device, t.dtype), self._knots_la.to(t.device, t.dtype)
        i = VPDiscrete._segment(t, xp)
        return (fp[i + 1] - fp[i]) / (xp[i + 1] - xp[i])

    def timestep(self, t: float | Tensor) -> Tensor:
        """IR-SDE's integer-scale time n = t T of the discrete tables (t itself when continuous)."""
        return _as_tensor(t) * (self.T if self.T is not None else 1)

    def theta(self, t: float | Tensor) -> Tensor:
        """theta_t = -d log alpha / dt (per unit of this schedule's time t)."""
        return -self.d_log_alpha(t)

    # --- the Schedule interface --------------------------------------------------------------------
    def log_alpha(self, t):
        t = _as_tensor(t)
        if self.T is not None:
            return VPDiscrete._interp(t, self._knots_t, self._knots_la)
        return -0.5 * t**2 * (self.theta_max - self.theta_min) - t * self.theta_min

    def d_log_alpha(self, t):
        t = _as_tensor(t)
        if self.T is not None:
            return self._slope(t)
        return -(self.theta_min + t * (self.theta_max - self.theta_min))

    def sigma(self, t):
        return self.sigma_inf * torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def log_sigma(self, t):
        return self._log_sinf + 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_log_sigma(self, t):
        return -self.d_log_alpha(t) / torch.expm1(-2.0 * self.log_alpha(t))

    def g2(self, t):
        # g^2 = 2 sigma_inf^2 theta (the IR-SDE constraint), finite at t = 0.
        return -2.0 * self.sigma_inf**2 * self.d_log_alpha(t)

    def t_of_lambda(self, lam):
        # alpha^2 / (sigma_inf^2 (1 - alpha^2)) = e^{2 lambda}: the VP relation at lambda + log sigma_inf.
        lam = _as_tensor(lam)
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * (lam + self._log_sinf))
        if self.T is not None:
            return VPDiscrete._interp(log_alpha, self._knots_la.flip(0), self._knots_t.flip(0))
        delta = self.theta_max - self.theta_min
        # Root of delta t^2 / 2 + theta_min t + log_alpha = 0, stable as delta -> 0.
        return -2.0 * log_alpha / (self.theta_min + torch.sqrt(self.theta_min**2 - 2.0 * delta * log_alpha))


_BY_NAME = {
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "sub_vp": SubVP,
    "ve": VE,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
    "mean_reverting": MeanReverting,
    "mean_reverting_irsde": MeanReverting.irsde,
}


def get_schedule(name: str, **kwargs) -> Schedule:
    """Build a schedule by name: one of ``vp_linear``, ``vp_cosine``, ``sub_vp``, ``ve``, ``edm``,
    ``rectified_flow``, ``mean_reverting`` and ``mean_reverting_irsde`` (:meth:`MeanReverting.irsde`)."""
    if not isinstance(name, str):
        raise TypeError(f"schedule name must be a str; got {type(name).__name__}")
    try:
        cls = _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; available: {sorted(_BY_NAME)}") from None
    return cls(**kwargs)
