"""Gaussian-mixture targets: exact scores vs autograd, Tweedie consistency, moments, flow map, bad input."""

import math

import pytest
import torch

from companion.reference import solve_pf_ode
from companion.schedules import VE, SubVP, VPCosine, VPDiscrete, VPLinear
from companion.targets import ClassConditionalMixture, Gaussian, GaussianMixture

SCHEDULES = [VPLinear(), SubVP(), VE(), VPCosine(), VPDiscrete.linear()]
F64 = torch.float64


def full_mixture(d=2, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(K, d, generator=g, dtype=F64)
    A = torch.randn(K, d, d, generator=g, dtype=F64)
    covs = 0.3 * A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=F64)
    return GaussianMixture(means, covs, torch.softmax(torch.randn(K, generator=g, dtype=F64), 0))


MIXTURES = {
    "full": full_mixture(),
    "diag": GaussianMixture([[0.0, 1.0], [2.0, -1.0]], [[0.5, 0.2], [0.1, 0.3]], [0.4, 0.6]),
    "iso": GaussianMixture([[0.0, 0.0, 1.0]], 0.7),
}


def times(s, n, seed):
    g = torch.Generator().manual_seed(seed)
    return s.t_min + 0.02 + (s.t_max - s.t_min - 0.02) * torch.rand(n, generator=g, dtype=F64)


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", MIXTURES)
def test_score_is_grad_log_prob_and_tweedie(name, s):
    gm = MIXTURES[name]
    n = 6
    t = times(s, n, 1)
    x = 1.5 * torch.randn(n, gm.dim, generator=torch.Generator().manual_seed(2), dtype=F64)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(gm.log_prob(xg, t, s).sum(), xg)
    score = gm.score(x, t, s)
    assert torch.allclose(score, auto, rtol=1e-10, atol=1e-12)
    a, sig = s.alpha(t)[:, None], s.sigma(t)[:, None]
    # Tweedie: E[x0 | x] = (x + sigma^2 score) / alpha; eps = -sigma score = (x - alpha x0) / sigma.
    assert torch.allclose(gm.x0(x, t, s), (x + sig**2 * score) / a, rtol=1e-9, atol=1e-10)
    assert torch.allclose(gm.eps(x, t, s), (x - a * gm.x0(x, t, s)) / sig, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("name", MIXTURES)
def test_laplacian_and_hvp_against_autograd(name):
    gm, s = MIXTURES[name], VPLinear()
    x = torch.randn(4, gm.dim, generator=torch.Generator().manual_seed(3), dtype=F64)
    t = torch.tensor([0.05, 0.2, 0.5, 0.9], dtype=F64)
    H = torch.stack(
        [
            torch.autograd.functional.hessian(lambda z, i=i: gm.log_prob(z[None], t[i : i + 1], s)[0], x[i])
            for i in range(4)
        ]
    )
    assert torch.allclose(gm.laplacian(x, t, s), H.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-10, atol=1e-10)
    v = torch.randn(4, gm.dim, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert torch.allclose(gm.hvp(x, t, s, v), torch.einsum("bij,bj->bi", H, v), rtol=1e-10, atol=1e-10)


def test_log_prob_p0_matches_scipy():
    from scipy.stats import multivariate_normal

    gm = MIXTURES["full"]
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = sum(
        float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
        for w, m, c in zip(gm.weights, gm.means, gm.covariances(), strict=True)
    )
    assert torch.allclose(gm.log_prob(x), torch.log(torch.as_tensor(ref)), rtol=1e-12, atol=1e-12)


def test_float32_close_to_float64():
    gm, s = MIXTURES["full"], VPLinear()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    t = torch.full((16,), 0.3, dtype=F64)
    for f in (gm.eps, gm.x0):
        y32 = f(x.float(), t.float(), s)
        assert y32.dtype == torch.float32
        assert torch.allclose(y32.double(), f(x, t, s), rtol=1e-4, atol=1e-5)


def test_model_any_rank_and_predictions():
    gm, s = (
        GaussianMixture(torch.randn(2, 12, generator=torch.Generator().manual_seed(7), dtype=F64), 0.5),
        VE(),
    )
    x = torch.randn(3, 3, 2, 2, dtype=F64)
    t = torch.tensor(0.4, dtype=F64)
    for pred, f in [("eps", gm.eps), ("x0", gm.x0), ("score", gm.score)]:
        out = gm.model(s, pred)(x, t)
        assert out.shape == x.shape
        assert torch.allclose(out.reshape(3, 12), f(x.reshape(3, 12), t, s))


def test_sample_moments_within_standard_errors():
    gm, n = MIXTURES["full"], 40000
    x = gm.sample(n, generator=torch.Generator().manual_seed(8))
    se = torch.sqrt(torch.diagonal(gm.cov()) / n)
    assert bool(((x.mean(0) - gm.mean()).abs() < 4 * se).all())
    s, t = VPLinear(), 0.4
    xt = gm.sample_t(n, t, s, generator=torch.Generator().manual_seed(9))
    se_t = torch.sqrt(torch.diagonal(gm.cov_t(t, s)) / n)
    assert bool(((xt.mean(0) - gm.mean_t(t, s)).abs() < 4 * se_t).all())
    assert torch.allclose(torch.cov(xt.T), gm.cov_t(t, s), rtol=0.05, atol=0.05)


def test_samples_reproducible():
    gm = MIXTURES["diag"]
    a = gm.sample(10, generator=torch.Generator().manual_seed(1))
    b = gm.sample(10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: type(s).__name__)
def test_flow_map_matches_reference_integrator(s):
    g = Gaussian([1.0, -0.5, 2.0], [[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]])
    x = g.sample_t(4, s.t_max, s, generator=torch.Generator().manual_seed(10))
    exact = g.flow_map(x, s.t_max, 1e-3, s)
    assert (solve_pf_ode(g, x, s, s.t_max, 1e-3) - exact).abs().max() < 1e-8
    # the map is a flow: composition and inverse
    mid = g.flow_map(x, s.t_max, 0.3, s)
    assert torch.allclose(g.flow_map(mid, 0.3, 1e-3, s), exact, rtol=1e-12, atol=1e-12)
    assert torch.allclose(g.flow_map(exact, 1e-3, s.t_max, s), x, rtol=1e-10, atol=1e-10)


def test_flow_map_pushes_marginals():
    g, s = Gaussian([0.5, 0.0], [0.3, 2.0]), VPLinear()
    x = g.sample_t(50000, 1.0, s, generator=torch.Generator().manual_seed(11))
    y = g.flow_map(x, 1.0, 0.2, s)
    assert torch.allclose(torch.cov(y.T), g.cov_t(0.2, s), rtol=0.03, atol=0.02)


def test_point_masses():
    pm, s = GaussianMixture.point_masses([[1.0, -1.0], [-2.0, 0.5]], [0.3, 0.7]), VPLinear()
    x = torch.randn(5, 2, dtype=F64)
    t = torch.full((5,), 0.5, dtype=F64)
    # E[x0 | x] is a responsibility-weighted average of atoms
    x0 = pm.x0(x, t, s)
    a, sig = s.alpha(0.5), s.sigma(0.5)
    logits = -((x[:, None] - a * pm.means[None]) ** 2).sum(-1) / (2 * sig**2) + torch.log(pm.weights)
    assert torch.allclose(x0, torch.softmax(logits, -1) @ pm.means, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="point-mass"):
        pm.log_prob(x)
    with pytest.raises(ValueError, match="sigma"):
        pm.score(x, 0.0, s)
    one = GaussianMixture.point_masses([[1.0, -1.0]])
    y = one.flow_map(x, 0.8, 0.1, s)
    assert torch.allclose(
        y - s.alpha(0.1) * one.means, (s.sigma(0.1) / s.sigma(0.8)) * (x - s.alpha(0.8) * one.means)
    )


def test_class_conditional():
    c0 = GaussianMixture([[-2.0, 0.0]], 0.3)
    c1 = GaussianMixture([[2.0, 0.0], [2.0, 2.0]], [0.2, 0.4], [0.5, 0.5])
    cc, s = ClassConditionalMixture([c0, c1], [0.25, 0.75]), VPLinear()
    x = torch.randn(6, 2, dtype=F64)
    t = torch.full((6,), 0.4, dtype=F64)
    post = cc.class_log_posterior(x, t, s).exp()
    assert torch.allclose(post.sum(-1), torch.ones(6, dtype=F64))
    # p_t(x) = sum_c pi_c p_t(x | c)
    mix = torch.logsumexp(
        torch.stack([c0.log_prob(x, t, s), c1.log_prob(x, t, s)], -1) + cc.class_weights.log(), -1
    )
    assert torch.allclose(cc.unconditional.log_prob(x, t, s), mix)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    cond = cc.model(s, labels, "score")(x, t)
    assert torch.allclose(cond[0], c0.score(x[:1], t[:1], s)[0]) and torch.allclose(
        cond[1], c1.score(x[1:2], t[:1], s)[0]
    )
    # guidance scale s: eps_u + s (eps_c - eps_u); the score of the guided model adds s grad log p(c | x)
    guided = cc.model(s, labels, "score", guidance_scale=3.0)(x, t)
    xg = x.clone().requires_grad_(True)
    logpc = cc.class_log_posterior(xg, t, s).gather(1, labels[:, None]).sum()
    (grad_c,) = torch.autograd.grad(logpc, xg)
    assert torch.allclose(guided, cc.unconditional.score(x, t, s) + 3.0 * grad_c, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(means=[[0.0, 0.0]], covs=-1.0), "covs"),
        (dict(means=[[0.0, 0.0]], covs=0.0), "covs"),
        (dict(means=[[0.0, 0.0], [1.0, 1.0]], covs=1.0, weights=[0.5, 0.6]), "weights"),
        (dict(means=[[0.0, 0.0], [1.0, 1.0]], covs=1.0, weights=[1.5, -0.5]), "weights"),
        (dict(means=[[0.0, 0.0], [1.0, 1.0]], covs=1.0, weights=[1.0]), "weights"),
        (dict(means=[[0.0, 0.0]], covs=[[1.0, 1.0, 1.0]]), "covs"),
        (dict(means=[[0.0, 0.0]], covs=[[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
        (dict(means=[0.0, 0.0], covs=1.0), "means"),
        (dict(means=[[float("nan"), 0.0]], covs=1.0), "means"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_bad_calls():
    gm, s = MIXTURES["diag"], VPLinear()
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="t must lie"):
        gm.score(x, 1.5, s)
    with pytest.raises(ValueError, match="t must"):
        gm.score(x, torch.zeros(4, dtype=F64) + 0.5, s)
    with pytest.raises(ValueError, match="x must have shape"):
        gm.score(torch.zeros(3, 3, dtype=F64), 0.5, s)
    with pytest.raises(TypeError, match="schedule"):
        gm.score(x, 0.5, "vp_linear")
    with pytest.raises(ValueError, match="prediction"):
        gm.model(s, "velocity")
    with pytest.raises(ValueError, match="K=2"):
        gm.flow_map(x, 1.0, 0.5, s)
    with pytest.raises(ValueError, match="schedule is required"):
        gm.log_prob(x, 0.5)
    with pytest.raises(ValueError, match="n must"):
        gm.sample(0)
    assert math.isfinite(float(gm.log_prob(x).sum()))
