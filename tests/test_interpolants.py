"""companion.interpolants: exact velocity and score of the Gaussian-mixture interpolant against autograd of
its exact density, the Fokker-Planck identities, the quadratic losses, and the interpolant SDEs/ODE run
through companion.sample against the exact marginals (weak test)."""

from __future__ import annotations

import math

import pytest
import torch

import companion as cp
from companion.interpolants import (
    GaussianMixtureInterpolant,
    StochasticInterpolant,
    euler_log_density,
    score_loss,
    velocity_loss,
)

F64 = torch.float64
CHOICES = [
    ("linear", "brownian", 1.0),
    ("trig", "brownian", 2.0),
    ("linear", "bsquared", 1.0),
    ("trig", "sinesquared", 0.5),
]


def endpoints():
    rho0 = cp.targets.GaussianMixture(
        torch.tensor([[-2.0, 0.0], [2.0, 0.5]]), torch.tensor([0.3, 0.5]), torch.tensor([0.4, 0.6])
    )
    C = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.4, -0.2], [-0.2, 0.3]], [[0.1, 0.0], [0.0, 0.15]]])
    rho1 = cp.targets.GaussianMixture(
        torch.tensor([[0.0, 2.0], [0.0, -2.0], [1.5, 1.0]]), C, torch.tensor([0.5, 0.3, 0.2])
    )
    return rho0, rho1


def gmi(path="linear", gamma="brownian", a=1.0):
    return GaussianMixtureInterpolant(StochasticInterpolant(path, gamma, a), *endpoints())


def points(n=64, seed=0):
    return 2.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


TIMES = [0.0, 0.05, 0.3, 0.5, 0.77, 1.0]


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("t", TIMES)
def test_score_is_grad_log_density(choice, t):
    g = gmi(*choice)
    x = points().requires_grad_(True)
    (grad,) = torch.autograd.grad(g.log_prob(x, t).sum(), x)
    s = g.score(x.detach(), t)
    assert float((s - grad).abs().max()) <= 1e-8 * max(1.0, float(grad.abs().max()))


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("t", [0.05, 0.3, 0.5, 0.77, 0.95])
def test_velocity_from_autograd_of_the_moments(choice, t):
    """Per pair, b_k = mu_k' + S_k' S_k^{-1} (x - mu_k) / 2 (the velocity of a Gaussian path whose covariance
    moves as S(t)); mu' and S' by autograd of the moments in t, the posterior from the exact density."""
    g = gmi(*choice)
    x = points()
    tt = torch.tensor(t, dtype=F64)
    dmu, dS = torch.autograd.functional.jacobian(lambda u: g._moments(u), tt)
    mu, S = g._moments(tt)
    logp, comp_score, _ = g._per_component(x, tt)
    r = torch.softmax(logp, -1)[..., None]
    bk = dmu + 0.5 * torch.einsum("kij,kjl,bkl->bki", dS, torch.linalg.inv(S), x[:, None, :] - mu)
    b_ref = (r * bk).sum(1)
    b = g.velocity(x, t)
    assert float((b - b_ref).abs().max()) <= 1e-8 * max(1.0, float(b_ref.abs().max()))


@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_fokker_planck_identities(eps, direction, t):
    g = gmi("trig", "brownian", 1.0)
    lhs, rhs = g.fokker_planck(points(128, 1), t, eps, direction)
    assert float((lhs - rhs).abs().max()) <= 1e-8 * float(lhs.abs().max())


def test_fokker_planck_fails_for_a_wrong_drift():
    """Control: transporting rho with the forward drift b + eps s and no diffusion term is not an identity,
    by eps |lap rho|, so the check can fail."""
    g = gmi()
    x = points(128, 1)
    lhs, rhs = g.fokker_planck(x, 0.5, 1.0, "forward")
    _, transport = g.fokker_planck(x, 0.5, 0.0, "transport")
    assert float((lhs - rhs).abs().max()) <= 1e-8 * float(lhs.abs().max())
    # the eps terms cancel: div(eps s rho) = eps lap rho for the true score
    assert float((rhs - transport).abs().max()) <= 1e-8 * float(lhs.abs().max())
    # drift b + eps s with the Laplacian dropped: -div((b + s) rho) = transport - lap rho
    xg = x.clone().requires_grad_(True)
    rho = g.log_prob(xg, 0.5).exp()
    (grad_rho,) = torch.autograd.grad(rho.sum(), xg, create_graph=True)
    lap_rho = sum(torch.autograd.grad(grad_rho[:, i].sum(), xg, retain_graph=True)[0][:, i] for i in range(2))
    assert float((lhs - (transport - lap_rho.detach())).abs().max()) > 1e-2 * float(lhs.abs().max())


def test_euler_log_density_is_the_change_of_variables():
    """For a linear velocity v = A x the Euler map is linear: the log-density shift is -N log|det(I + dt A)|."""
    A = torch.tensor([[0.3, -1.0], [0.5, -0.2]], dtype=F64)
    x = points(16)
    lp = torch.zeros(16, dtype=F64)
    ts = torch.linspace(0, 1, 11, dtype=F64)
    y, lq = euler_log_density(lambda x, t: x @ A.T, x, lp, ts)
    M = torch.linalg.matrix_power(torch.eye(2, dtype=F64) + 0.1 * A, 10)
    assert torch.allclose(y, x @ M.T, atol=1e-13)
    assert torch.allclose(lq, torch.full_like(lq, -float(torch.linalg.slogdet(M)[1])), atol=1e-12)


@pytest.mark.parametrize("which", ["velocity", "score"])
def test_loss_excess_is_half_the_squared_error(which):
    """L(f_hat) - L(f) = E|f_hat - f|^2 / 2 for the quadratic losses (antithetic estimators), by Monte Carlo
    within 4 standard errors of the difference."""
    g = gmi()
    si = g.si
    gen = torch.Generator().manual_seed(3)
    n = 40_000
    x0, x1 = g.sample_endpoints(n, gen)
    z = torch.randn(n, 2, generator=gen, dtype=F64)
    t = 0.02 + 0.96 * torch.rand(n, generator=gen, dtype=F64)
    exact = g.velocity if which == "velocity" else g.score
    loss = velocity_loss if which == "velocity" else score_loss

    def pert(x, tt):
        return 0.3 * torch.stack([torch.sin(x[:, 1] + tt), torch.cos(2 * x[:, 0])], 1)

    def hat(x, tt):
        return exact(x, tt) + pert(x, tt)

    chunks = 20  # batch means give the standard error
    diffs, target = [], []
    for c in range(chunks):
        sl = slice(c * n // chunks, (c + 1) * n // chunks)
        diffs.append(
            float(loss(hat, si, x0[sl], x1[sl], t[sl], z[sl]) - loss(exact, si, x0[sl], x1[sl], t[sl], z[sl]))
        )
        xt = si.interpolate(x0[sl], x1[sl], z[sl], t[sl])
        target.append(float(0.5 * pert(xt, t[sl]).pow(2).sum(1).mean()))
    d, tg = torch.tensor(diffs), torch.tensor(target)
    se = float(d.std() / math.sqrt(chunks))
    assert abs(float(d.mean()) - float(tg.mean())) <= 4 * se + 1e-3 * float(tg.mean())


def moments_ok(y, mix, n_se=5.0):
    """Mean within n_se standard errors; covariance within n_se standard errors + 0.03 (Euler's O(dt) bias)."""
    m, C = mix.mean(), mix.cov()
    n = y.shape[0]
    se_m = y.std(0) / math.sqrt(n)
    yc = y - y.mean(0)
    prods = yc[:, :, None] * yc[:, None, :]
    se_c = prods.std(0) / math.sqrt(n)
    return bool(((y.mean(0) - m).abs() <= n_se * se_m).all()), bool(
        ((torch.cov(y.T) - C).abs() <= n_se * se_c + 0.03).all()
    )


@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_sample_matches_the_exact_marginals(eps, direction):
    """Weak test: with exact b and s, every eps gives rho_1 (forward, from rho_0 samples) or rho_0 (backward,
    from rho_1 samples): mean and covariance within 5 standard errors (covariance: + 0.03 for Euler's bias
    at 100 steps), and at t = 0.5 when stopped there."""
    g = gmi()
    gen = torch.Generator().manual_seed(11)
    n = 6_000
    x0, x1 = g.sample_endpoints(n, gen)
    start, t_start, t_end = (x0, 0.0, 1.0) if direction == "forward" else (x1, 1.0, 0.0)
    y = cp.sample(
        g.model(),
        start,
        schedule=g.si,
        solver="interpolant",
        diffusion=eps,
        steps=100,
        t_start=t_start,
        t_end=t_end,
        generator=torch.Generator().manual_seed(5),
    )
    mean_ok, cov_ok = moments_ok(y, g.mixture(t_end))
    assert mean_ok and cov_ok
    half = cp.sample(
        g.model(),
        start,
        schedule=g.si,
        solver="interpolant",
        diffusion=eps,
        steps=50,
        t_start=t_start,
        t_end=0.5,
        generator=torch.Generator().manual_seed(6),
    )
    assert all(moments_ok(half, g.mixture(0.5)))


def test_sample_with_callable_diffusion_and_ode_is_euler():
    g = gmi()
    x0, _ = g.sample_endpoints(50, torch.Generator().manual_seed(0))
    ode = cp.sample(g.model(), x0, schedule=g.si, solver="interpolant", diffusion=0.0, steps=7)
    x, ts = x0.clone(), torch.linspace(0, 1, 8, dtype=F64)
    for i in range(7):
        x = x + (ts[i + 1] - ts[i]) * g.velocity(x, ts[i].expand(50))
    assert torch.equal(ode, x)
    eps = lambda t: 0.5 * torch.sin(math.pi * t)  # noqa: E731
    a = cp.sample(
        g.model(),
        x0,
        schedule=g.si,
        solver="interpolant",
        diffusion=eps,
        steps=7,
        generator=torch.Generator().manual_seed(1),
    )
    b = cp.sample(
        g.model(),
        x0,
        schedule=g.si,
        solver="interpolant",
        diffusion=eps,
        steps=7,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(a, b) and not torch.equal(a, ode)
    # only b is needed for the ODE
    only_b = cp.sample(
        lambda x, t: g.velocity(x, t), x0, schedule=g.si, solver="interpolant", diffusion=0.0, steps=7
    )
    assert torch.equal(only_b, ode)


def test_errors_name_the_argument():
    g = gmi()
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="solver='interpolant'"):
        cp.sample(g.model(), x, schedule=g.si, solver="ddim")
    with pytest.raises(ValueError, match="grid"):
        cp.sample(g.model(), x, schedule=g.si, solver="interpolant", grid="karras")
    with pytest.raises(ValueError, match="t_end"):
        cp.sample(g.model(), x, schedule=g.si, solver="interpolant", t_end=1.5)
    with pytest.raises(ValueError, match="prediction"):
        cp.sample(g.model(), x, schedule=g.si, solver="interpolant", prediction="x0")
    with pytest.raises(ValueError, match="timesteps"):
        cp.sample(g.model(), x, schedule=g.si, solver="interpolant", timesteps=torch.tensor([0.0, 0.5, 0.2]))
    with pytest.raises(ValueError, match="mu= takes a diffusion Schedule"):
        cp.sample(g.model(), x, schedule=g.si, solver="interpolant", mu=torch.zeros(2, dtype=F64))
    with pytest.raises(TypeError, match="callback must be callable"):
        cp.sample(g.model(), x, schedule=g.si, solver="interpolant", callback=3)
    with pytest.raises(TypeError, match="pair"):
        cp.sample(lambda x, t: x, x, schedule=g.si, solver="interpolant", diffusion=1.0, steps=2)
    with pytest.raises(ValueError, match="diffusion"):
        cp.sample(g.model(), x, schedule=g.si, solver="interpolant", diffusion=lambda t: -t, steps=2)
    with pytest.raises(ValueError, match="path"):
        StochasticInterpolant(path="cubic")
    with pytest.raises(ValueError, match="gamma"):
        StochasticInterpolant(gamma="nope")
    with pytest.raises(ValueError, match="a must"):
        StochasticInterpolant(a=0.0)
    with pytest.raises(ValueError, match="t must"):
        velocity_loss(g.velocity, g.si, x, x, torch.zeros(4, dtype=F64), x)
    with pytest.raises(TypeError, match="rho1"):
        GaussianMixtureInterpolant(g.si, g.rho0, "x")


def test_mixture_at_the_ends_is_the_endpoint():
    g = gmi()
    for t, rho in ((0.0, g.rho0), (1.0, g.rho1)):
        x = points()
        assert torch.allclose(g.mixture(t).log_prob(x), rho.log_prob(x), atol=1e-12)
