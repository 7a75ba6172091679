"""companion.dc: the cascade polynomial regression (CPR) against a transcription of the official
``cascade_polynomial_regression`` (wl-zhao/DC-Solver, diffusers/src/diffusers/schedulers/
scheduling_dcsolver_multistep.py), its fit/predict round trip, the reference trajectory and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import companion as cp
from companion.dc import CPR, reference_states, search_ratios


def _official_cpr(test_CFG, test_NFE, cpr_coeffs):
    """The official function, with its ``np.load`` replaced by the coefficient array."""

    def f1(x, a, b, c):
        return a * x**2 + b * x + c

    def f2(x, a, b, c):
        return a * x**2 + b * x + c

    def predict(xs, *coeffs):
        CFG, NFE, x = xs[0], xs[1], xs[2]
        CFG = CFG / 12
        x = x / NFE
        NFE = NFE / 50
        NFE = NFE.reshape(-1, 1, 1)
        CFG = CFG.reshape(-1, 1)
        coeffs = np.array(coeffs).reshape(-1, 3, 3)
        coeffs1 = f2(NFE, coeffs[..., 0], coeffs[..., 1], coeffs[..., 2])
        coeffs2 = f1(CFG, coeffs1[..., 0], coeffs1[..., 1], coeffs1[..., 2])
        x_pow = 1
        result = 0
        for i in range(coeffs2.shape[-1]):
            result = result + coeffs2[:, i] * x_pow
            x_pow = x_pow * x
        return result

    ratios = []
    for step in range(1, test_NFE + 1):
        if step < 3:
            ratio = 1
        else:
            infer_x = np.array([test_CFG, test_NFE, step]).reshape(3, -1)
            ratio = predict(infer_x, *cpr_coeffs).item()
        ratios.append(ratio)
    return ratios


def test_cpr_matches_official_formula():
    coef = np.random.default_rng(0).normal(size=36)
    cpr = CPR(tuple(coef))
    for nfe, w in [(5, 7.5), (10, 3.0), (7, 6.0), (20, 1.5)]:
        assert np.allclose(cpr.predict(nfe, w), _official_cpr(w, nfe, coef), rtol=0, atol=1e-12)


def test_cpr_fit_predict_round_trip():
    truth = CPR(tuple(np.random.default_rng(1).normal(size=36) * 0.3))
    table = {(n, w): truth.predict(n, w) for n in (5, 6, 8, 10) for w in (1.5, 3.0, 5.0, 7.5, 9.0)}
    fitted = CPR.fit(table)
    for n, w in [(7, 6.0), (5, 7.5), (9, 2.0)]:  # unseen (NFE, guidance) too: the model class is exact
        assert np.allclose(fitted.predict(n, w), truth.predict(n, w), rtol=0, atol=1e-8)
    again = CPR.from_dict(fitted.to_dict())
    assert again == fitted
    # control: a fit to perturbed ratios does not reproduce the truth
    noisy = {k: [r + 0.05 * ((i * 7919) % 3 - 1) for i, r in enumerate(v)] for k, v in table.items()}
    assert not np.allclose(CPR.fit(noisy).predict(7, 6.0), truth.predict(7, 6.0), atol=1e-3)


def test_cpr_bad_input():
    with pytest.raises(ValueError, match="36"):
        CPR((1.0,) * 35)
    with pytest.raises(ValueError, match="36"):
        CPR((1.0,) * 35 + (float("nan"),))
    with pytest.raises(ValueError, match="must hold 5 ratios"):
        CPR.fit({(5, 1.0): [1.0] * 4})
    with pytest.raises(ValueError, match="empty"):
        CPR.fit({})
    with pytest.raises(ValueError, match="nfe"):
        CPR((0.0,) * 36).predict(0, 1.0)
    with pytest.raises(ValueError, match="guidance"):
        CPR((0.0,) * 36).predict(5, float("nan"))


def test_reference_states_and_search_input_checks():
    vp = cp.schedules.VPLinear()
    gm = cp.targets.Gaussian(
        torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([0.2, 0.4], dtype=torch.float64)
    )
    eps = gm.model(vp, "eps")
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = torch.linspace(1.0, 1e-3, 5, dtype=torch.float64)
    ref = reference_states(eps, x, schedule=vp, timesteps=ts)
    fine = reference_states(eps, x, schedule=vp, timesteps=ts, method="fine", fine=200)
    assert ref.shape == (5, 4, 2) and torch.equal(ref[0], x)
    exact = gm.flow_map(x, 1.0, 1e-3, vp)
    assert (ref[-1] - exact).abs().max() < 1e-7
    assert (fine[-1] - exact).abs().max() < 1e-4
    with pytest.raises(ValueError, match="method"):
        reference_states(eps, x, schedule=vp, timesteps=ts, method="rk4")
    with pytest.raises(ValueError, match="timesteps"):
        reference_states(eps, x, schedule=vp, timesteps=ts.flip(0))
    with pytest.raises(ValueError, match="reference"):
        search_ratios(eps, x, ref[:-1], schedule=vp, timesteps=ts, progress=False)
    with pytest.raises(ValueError, match="iters"):
        search_ratios(eps, x, ref, schedule=vp, timesteps=ts, iters=0, progress=False)
