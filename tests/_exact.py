"""Stand-in exact targets for the solver tests: a diagonal Gaussian mixture with closed-form eps, and a
float64 reference integrator of its probability-flow ODE (DOP853 in lambda on y = x / alpha)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp


class GMM:
    """p_0 = sum_k w_k N(mu_k, diag(var_k)); p_t = sum_k w_k N(alpha mu_k, alpha^2 var_k + sigma^2)."""

    def __init__(self, means, variances, weights):
        self.mu = torch.as_tensor(means, dtype=torch.float64)
        self.var = torch.as_tensor(variances, dtype=torch.float64)
        self.w = torch.as_tensor(weights, dtype=torch.float64)

    @classmethod
    def random(cls, d: int, k: int = 3, seed: int = 0) -> GMM:
        g = torch.Generator().manual_seed(seed)
        mu = torch.randn(k, d, generator=g, dtype=torch.float64) * 1.5
        var = 0.05 + 0.3 * torch.rand(k, d, generator=g, dtype=torch.float64)
        w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
        return cls(mu, var, w / w.sum())

    def eps(self, x, alpha, sigma):
        """Exact eps(x, t) = -sigma grad log p_t(x); alpha/sigma broadcastable to (B, 1)."""
        a, s = alpha.reshape(-1, 1, 1), sigma.reshape(-1, 1, 1)
        xx = x.reshape(x.shape[0], 1, -1).to(torch.float64)
        c = a**2 * self.var + s**2  # (B, K, d)
        diff = xx - a * self.mu
        logp = torch.log(self.w) - 0.5 * (diff**2 / c + torch.log(c)).sum(-1)
        g = torch.softmax(logp, dim=1).unsqueeze(-1)
        score = -(g * diff / c).sum(1)
        return (-s.reshape(-1, 1) * score).reshape(x.shape)

    def model(self, schedule, prediction="eps", out_dtype=None, calls=None):
        from companion import parameterization as P

        def f(x, t):
            if calls is not None:
                calls.append(t)
            t64 = t.to(torch.float64)
            if t64.dim() == 0:
                t64 = t64.expand(x.shape[0])
            a, s = schedule.alpha(t64), schedule.sigma(t64)
            e = self.eps(x, a, s)
            out = (
                P.convert(e, x.to(torch.float64), "eps", prediction, schedule, t64)
                if prediction != "eps"
                else e
            )
            return out.to(out_dtype or x.dtype)

        return f


def reference(gmm: GMM, schedule, x_T, t_start: float, t_end: float, rtol: float = 1e-12) -> torch.Tensor:
    """Float64 solution of the PF ODE: dy/dlambda = -e^{-lambda} eps(alpha y, t(lambda)), y = x / alpha."""
    t0, t1 = (
        torch.tensor(float(t_start), dtype=torch.float64),
        torch.tensor(float(t_end), dtype=torch.float64),
    )
    l0, l1 = float(schedule.lambda_(t0)), float(schedule.lambda_(t1))
    shape = x_T.shape
    y0 = (x_T.to(torch.float64) / schedule.alpha(t0)).reshape(-1).numpy()

    def rhs(lam, y):
        lt = torch.tensor(lam, dtype=torch.float64)
        t = schedule.t_of_lambda(lt)
        a, s = schedule.alpha(t), schedule.sigma(t)
        yt = torch.from_numpy(y).reshape(shape)
        e = gmm.eps(a * yt, a.expand(shape[0]), s.expand(shape[0]))
        return (-torch.exp(-lt) * e).reshape(-1).numpy()

    sol = solve_ivp(rhs, (l0, l1), y0, method="DOP853", rtol=rtol, atol=rtol * 1e-2)
    y1 = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    return y1 * schedule.alpha(t1)


def fitted_order(steps, errors) -> float:
    """Slope of -log(error) against log(steps), least squares."""
    return float(-np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)[0])
