"""The registry: every option is checked when a solver is built, with an error naming the solver, the option,
the value and what is allowed; cross-option rules too. (tests/solvers/test_conformance.py tries every
declared option's invalid values on every registered solver; this file pins the cases users hit.)"""

from __future__ import annotations

import pytest
import torch

import companion as cp

VP = cp.schedules.VPLinear()


def _sample(**kw):
    gm = cp.targets.random_mixture(2, 1.0, 0.2, 0.5)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return cp.sample(gm.model(VP, "eps"), x, schedule=VP, steps=4, t_end=1e-3, **kw)


@pytest.mark.parametrize(
    "options,error,match",
    [
        # wrong names, types and values
        (dict(solver="unipc", pred="v"), ValueError, r"solver 'unipc': option pred='v' is not allowed; allowed: one of \['x0', 'eps'\]"),
        (dict(solver="dpmsolver++", corrector="bogus"), ValueError, r"option corrector='bogus' is not allowed; allowed: one of \[None, 'bh1', 'bh2'\]"),
        (dict(solver="deis", corrector="bogus"), ValueError, r"solver 'deis': option corrector='bogus'"),
        (dict(solver="ddim", eta=5), ValueError, r"solver 'ddim': option eta=5 is not allowed; allowed: a finite number in \[0.0, 1.0\]"),
        (dict(solver="ddim", order=3), ValueError, r"solver 'ddim': option order=3 is not allowed; allowed: one of \[1\]"),
        (dict(solver="unipc", corrector="bh2"), TypeError, r"solver 'unipc': option corrector='bh2' has type str; allowed: True or False"),
        (dict(solver="unipc", method="multistep"), TypeError, r"unknown option\(s\) \['method'\] for solver 'unipc'"),
        (dict(solver="euler", variant="rho"), TypeError, r"unknown option\(s\) \['variant'\] for solver 'euler'; allowed: \['order', 'variable'\]"),
        (dict(solver="ancestral", variant="large"), TypeError, r"unknown option\(s\) \['variant'\] for solver 'ancestral'"),
        (dict(solver="dpmsolver++", variant=None), TypeError, r"option variant=None has type NoneType"),
        (dict(solver="dpmsolver++", variant="taylor"), ValueError, r"option variant='taylor' is not allowed"),
        (dict(solver="dpmsolver++", order=True), TypeError, r"option order=True has type bool"),
        (dict(solver="pc", snr=float("nan")), ValueError, r"option snr=nan is not allowed"),
        (dict(solver="pc", corrector_steps=1.0), TypeError, r"option corrector_steps=1.0 has type float; allowed: an int >= 0"),
        (dict(solver="euler-maruyama", final_noise=1), TypeError, r"option final_noise=1 has type int; allowed: True or False"),
        (dict(solver="interpolant", diffusion="1"), TypeError, r"option diffusion='1' has type str"),
        # cross-option rules
        (dict(solver="dpmsolver++", order=2, variant="legacy"), ValueError, r"variant 'legacy' .* needs order=3"),
        (dict(solver="dpmsolver++", order=3, method="singlestep", variant="legacy"), ValueError, r"method='multistep'"),
        (dict(solver="dpmsolver++", method="singlestep", corrector="bh2"), ValueError, r"corrector='bh2' needs method='multistep'"),
        (dict(solver="dpmsolver++", order=1, method="adaptive"), ValueError, r"order must be 2 or 3"),
        (dict(solver="dpmsolver++", method="adaptive", variant="heun"), ValueError, r"'adaptive' uses the midpoint stages"),
        (dict(solver="dpmsolver++", atol=0.01), ValueError, r"atol and rtol apply to method 'adaptive' only"),
        (dict(solver="dpmsolver++", method="adaptive", rtol=0.0), ValueError, r"option rtol=0.0 is not allowed; allowed: a finite number in \(0.0, inf\] or None"),
        (dict(solver="sde-dpmsolver++", order=2, variant="legacy"), ValueError, r"needs order=3"),
        (dict(solver="ancestral", variance="large", eta=0.5), ValueError, r"variance 'large' .* needs eta = 1"),
    ],
)  # fmt: skip
def test_bad_options_raise_naming_the_option(options, error, match):
    with pytest.raises(error, match=match):
        _sample(**options)
    name = options.pop("solver")
    with pytest.raises(error, match=match):  # the same error when the solver is built directly
        cp.solvers.build(name, **options)


def test_solver_classes_check_their_fields_when_constructed_directly():
    with pytest.raises(ValueError, match="option order=3"):
        cp.solvers.DDIM(order=3)
    with pytest.raises(ValueError, match="option eta=5"):
        cp.solvers.Ancestral(eta=5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        cp.solvers.UniPC(bogus=1)


def test_every_solver_declares_its_options_orders_and_doc():
    for name in cp.solvers.available():
        cls = cp.solvers.get(name)
        opts = cls.options()
        assert "order" in opts and cls.orders() and cls.doc and cls.name == name
        built = cls()  # the defaults are allowed values
        assert built.order in cls.orders()
        for opt_name, opt in opts.items():
            assert opt.allowed and opt.invalid, (name, opt_name)
        check = built.order_check()
        assert check.nominal is not None or check.reason, name


def test_registering_twice_or_without_order_is_refused():
    from companion.solvers.registry import _unregister, choice, register

    with pytest.raises(ValueError, match="already registered"):
        register("ddim", "again")(type("Again", (cp.solvers.Solver,), {"__annotations__": {"order": "int"},
                                                                       "order": choice(1, (1,))}))  # fmt: skip
    with pytest.raises(TypeError, match="must declare the option 'order'"):
        register("no-order-solver", "x")(type("NoOrder", (cp.solvers.Solver,), {}))
    _unregister("no-order-solver")
