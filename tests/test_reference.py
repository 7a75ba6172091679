"""Reference PF-ODE integrator and the exact likelihood, against closed forms."""

import pytest
import torch

from companion.reference import pf_ode_divergence, pf_ode_log_likelihood, solve_pf_ode
from companion.schedules import VE, SubVP, VPLinear
from companion.targets import Gaussian, GaussianMixture

F64 = torch.float64
GMM = GaussianMixture(
    [[-1.5, 0.5], [1.5, -0.5]], [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]], [0.4, 0.6]
)


@pytest.mark.parametrize("prediction", ["eps", "x0", "score"])
def test_solver_accepts_each_prediction_and_any_rank(prediction):
    g, s = Gaussian(torch.linspace(-1, 1, 4, dtype=F64), 0.5), VPLinear()
    x = g.sample_t(3, 1.0, s, generator=torch.Generator().manual_seed(0))
    model = g.model(s, prediction)
    y = solve_pf_ode(model, x.reshape(3, 2, 2), s, 1.0, 0.01, prediction=prediction)
    assert y.shape == (3, 2, 2)
    assert (y.reshape(3, 4) - g.flow_map(x, 1.0, 0.01, s)).abs().max() < 1e-8


def test_forward_then_backward_is_identity():
    s = VE()
    x = GMM.sample(5, generator=torch.Generator().manual_seed(1))
    y = solve_pf_ode(GMM, x, s, 0.0, 1.0)
    assert torch.allclose(solve_pf_ode(GMM, y, s, 1.0, 0.0), x, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("s", [VPLinear(), SubVP(), VE()], ids=lambda s: type(s).__name__)
def test_likelihood_exact_prior(s):
    x = GMM.sample(8, generator=torch.Generator().manual_seed(2))
    r = pf_ode_log_likelihood(GMM, x, s)
    assert (r.log_prob - GMM.log_prob(x, 0.0, s)).abs().max() < 1e-7


def test_likelihood_with_model_callable_and_autograd_divergence():
    s = VPLinear()
    x = GMM.sample(3, generator=torch.Generator().manual_seed(3))
    r = pf_ode_log_likelihood(
        GMM.model(s, "eps"), x, s, t_eps=1e-2, prior="normal", prediction="eps", rtol=1e-8, atol=1e-8
    )
    r_exact = pf_ode_log_likelihood(GMM, x, s, t_eps=1e-2, prior="normal", rtol=1e-8, atol=1e-8)
    assert torch.allclose(r.log_prob, r_exact.log_prob, atol=1e-6)
    assert torch.allclose(r_exact.log_prob, GMM.log_prob(x, 1e-2, s), atol=0.05)


def test_hutchinson_divergence_unbiased():
    s = VPLinear()
    x = GMM.sample_t(4, 0.3, s, generator=torch.Generator().manual_seed(4))
    exact, none = pf_ode_divergence(GMM, x, 0.3, s)
    assert none is None
    for probe in ("rademacher", "gaussian"):
        est, se = pf_ode_divergence(
            GMM,
            x,
            0.3,
            s,
            method="hutchinson",
            n_probes=4000,
            probe=probe,
            generator=torch.Generator().manual_seed(5),
        )
        assert bool(((est - exact).abs() < 4.5 * se).all()), (probe, (est - exact) / se)
    auto, _ = pf_ode_divergence(GMM.model(s, "x0"), x, 0.3, s, prediction="x0")
    assert torch.allclose(auto, exact, rtol=1e-10, atol=1e-10)


def test_hutchinson_likelihood_reproducible_with_stderr():
    s = VPLinear()
    x = GMM.sample(2, generator=torch.Generator().manual_seed(6))
    kw = dict(divergence="hutchinson", n_probes=4, rtol=1e-7, atol=1e-7)
    a = pf_ode_log_likelihood(GMM, x, s, generator=torch.Generator().manual_seed(7), **kw)
    b = pf_ode_log_likelihood(GMM, x, s, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a.log_prob, b.log_prob) and a.stderr is not None and bool((a.stderr >= 0).all())


def test_bad_arguments():
    s, x = VPLinear(), torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="t_end"):
        solve_pf_ode(GMM, x, s, 1.0, 1.5)
    with pytest.raises(ValueError, match="t_end"):
        solve_pf_ode(GMM, x, s, 1.0, 0.0)  # sigma(0) = 0: lambda infinite
    with pytest.raises(ValueError, match="prediction"):
        solve_pf_ode(lambda x, t: x, x, s, 1.0, 0.5, prediction="v")
    with pytest.raises(ValueError, match="prior"):
        pf_ode_log_likelihood(GMM, x, s, prior="laplace")
    with pytest.raises(ValueError, match="prior='exact'"):
        pf_ode_log_likelihood(GMM.model(s, "score"), x, s)
    with pytest.raises(ValueError, match="divergence"):
        pf_ode_log_likelihood(GMM, x, s, divergence="trace")
    with pytest.raises(ValueError, match="n_probes"):
        pf_ode_divergence(GMM, x, 0.5, s, method="hutchinson", n_probes=1)
    with pytest.raises(TypeError, match="schedule"):
        solve_pf_ode(GMM, x, "ve", 1.0, 0.5)
