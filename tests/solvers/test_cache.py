"""The coefficient-table cache (companion.solvers.cache) and the in-place state updates of the multistep loop.

A cache hit must return bit-for-bit the result of a fresh computation; keys are by value (a mutated
schedule never gets stale tables, an equal schedule object shares them); the cache is bounded.
"""

from __future__ import annotations

import pytest
import torch

import companion as cp
from companion.solvers import cache

CONFIGS = [
    dict(solver="dpmsolver++", order=2),
    dict(solver="dpmsolver++", order=3),
    dict(solver="dpmsolver", order=2),
    dict(solver="unipc", order=2),
    dict(solver="unipc", order=3, variant="bh1"),
    dict(solver="deis", order=3),
    dict(solver="ddim"),
]


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    cache.set_maxsize(32)
    yield
    cache.clear()
    cache.set_maxsize(32)


def _setup(dtype=torch.float64):
    gm = cp.targets.random_mixture(3, 1.0, 0.2, 0.5)
    sched = cp.schedules.VPDiscrete.linear()
    x = torch.randn(6, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
    return gm, sched, x


def _uncached(fn):
    size = cache.info()["maxsize"]
    cache.set_maxsize(0)
    try:
        return fn()
    finally:
        cache.set_maxsize(size)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_a_hit_returns_the_fresh_result_bit_for_bit(cfg):
    gm, sched, x = _setup()
    model = gm.model(sched, "eps")
    run = lambda: cp.sample(model, x, schedule=sched, steps=8, t_end=1e-3, **cfg)  # noqa: E731
    fresh = _uncached(run)
    first = run()
    assert cache.info()["misses"] == 1 and cache.info()["hits"] == 0
    second = run()
    assert cache.info()["hits"] == 1
    assert torch.equal(first, fresh) and torch.equal(second, fresh)


def test_equal_schedules_share_an_entry_and_a_mutated_schedule_is_never_stale():
    gm, sched, x = _setup()
    kw = dict(steps=8, t_end=1e-3, solver="dpmsolver++", order=2)
    a = cp.sample(gm.model(sched, "eps"), x, schedule=sched, **kw)
    twin = cp.schedules.VPDiscrete.linear()  # another object, equal parameters: a hit
    b = cp.sample(gm.model(twin, "eps"), x, schedule=twin, **kw)
    assert torch.equal(a, b) and cache.info()["hits"] == 1 and cache.info()["size"] == 1
    # Mutate the first schedule in place into a different one: the key changes with the values.
    other = cp.schedules.VPDiscrete.linear(beta_end=0.03)
    vars(sched).update({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(other).items()})
    c = cp.sample(gm.model(other, "eps"), x, schedule=sched, **kw)
    expected = _uncached(lambda: cp.sample(gm.model(other, "eps"), x, schedule=other, **kw))
    assert torch.equal(c, expected) and not torch.equal(c, a)
    # An in-place change to one tensor of the schedule is a new key too.
    misses = cache.info()["misses"]
    sched._knots_la[1:].mul_(1.01)  # log alpha between the knots, which alpha(t) interpolates
    d = cp.sample(gm.model(other, "eps"), x, schedule=sched, **kw)
    assert cache.info()["misses"] == misses + 1
    assert torch.equal(d, _uncached(lambda: cp.sample(gm.model(other, "eps"), x, schedule=sched, **kw)))
    assert not torch.equal(d, c)


@pytest.mark.parametrize(
    "change",
    [
        dict(steps=13),
        dict(t_end=2e-3),
        dict(grid="time_quadratic"),
        dict(order=3),
        dict(variant="heun"),
        dict(prediction="x0"),
        dict(lower_order_final=False),
        dict(compat="dpm-solver"),  # acts through the final-order threshold (15 -> 10 at 12 steps)
        dict(dtype=torch.float32),
        dict(batch=4),
        dict(x0_fn=lambda m: m.clamp(-3, 3)),
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_input_of_the_tables_is_in_the_key(change):
    gm, sched, x = _setup()
    base = dict(steps=12, t_end=1e-3, solver="dpmsolver++", order=2, prediction="eps")
    kw = dict(base)
    kw.update({k: v for k, v in change.items() if k not in ("dtype", "batch")})
    y = x.to(change.get("dtype", x.dtype))[: change.get("batch", x.shape[0])]
    if kw.get("grid") == "time_quadratic" and "time_quadratic" not in cp.grids.GRIDS:
        pytest.skip("no time_quadratic grid")
    cp.sample(gm.model(sched, base["prediction"]), x, schedule=sched, **base)
    model = gm.model(sched, kw["prediction"])
    got = cp.sample(model, y, schedule=sched, **kw)
    assert cache.info()["hits"] == 0, "a changed input must not reuse the first run's tables"
    assert torch.equal(got, _uncached(lambda: cp.sample(model, y, schedule=sched, **kw)))


def test_the_cache_is_bounded_and_least_recently_used_goes_first():
    gm, sched, x = _setup()
    model = gm.model(sched, "eps")
    cache.set_maxsize(3)
    for n in (5, 6, 7, 8, 9):
        cp.sample(model, x, schedule=sched, steps=n, t_end=1e-3)
    assert cache.info()["size"] == 3
    cp.sample(model, x, schedule=sched, steps=9, t_end=1e-3)
    assert cache.info()["hits"] == 1
    cp.sample(model, x, schedule=sched, steps=5, t_end=1e-3)  # evicted earlier: a miss
    assert cache.info()["hits"] == 1 and cache.info()["size"] == 3
    with pytest.raises(ValueError, match="n must"):
        cache.set_maxsize(-1)


def test_a_schedule_without_a_value_key_is_not_cached():
    class Custom(cp.schedules.VPLinear):
        def __init__(self):
            super().__init__()
            self.hook = lambda t: t  # a callable has no value key

    gm, _, x = _setup()
    sched = Custom()
    out = cp.sample(gm.model(sched, "eps"), x, schedule=sched, steps=6, t_end=1e-3)
    assert cache.info()["uncacheable"] >= 1 and cache.info()["size"] == 0
    assert torch.isfinite(out).all()
    assert cache.value_key(sched) is None
    assert cache.value_key(cp.schedules.VPLinear()) == cache.value_key(cp.schedules.VPLinear())


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_in_place_steps_leave_inputs_and_callback_states_untouched(cfg):
    gm, sched, x = _setup()
    model = gm.model(sched, "eps")
    x0 = x.clone()
    kw = dict(schedule=sched, steps=8, t_end=1e-3, **cfg)
    plain = cp.sample(model, x, **kw)
    assert torch.equal(x, x0), "x_T must never be overwritten"
    states, copies = [], []

    def keep(i, t, xi, denoised):
        states.append(xi)
        copies.append(xi.clone())

    with_cb = cp.sample(model, x, callback=keep, **kw)
    assert torch.equal(with_cb, plain)
    assert all(torch.equal(s, c) for s, c in zip(states, copies, strict=True))


def test_a_model_returning_its_input_is_not_overwritten_under_it():
    sched = cp.schedules.VPLinear()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def same(x, t):  # returns the very tensor it was given (eps = x)
        return x

    def copy(x, t):
        return x.clone()

    for cfg in CONFIGS:
        kw = dict(schedule=sched, steps=6, t_end=1e-3, **cfg)
        assert torch.equal(cp.sample(same, x, **kw), cp.sample(copy, x, **kw)), cfg


def test_grad_mode_runs_keep_the_graph():
    sched = cp.schedules.VPLinear()
    w = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = cp.sample(lambda x, t: w * x, x, schedule=sched, steps=6, t_end=1e-3, solver="dpmsolver++")
    out.sum().backward()  # an in-place update of a tensor autograd saved would raise here
    assert w.grad is not None and torch.isfinite(w.grad)


def test_schedules_with_0_dim_tensor_attributes_are_keyed_by_value():
    """IR-SDE's tables keep dt as a 0-dim tensor: the key must take it (it once raised inside sample())."""
    a = cp.schedules.MeanReverting.irsde(0.5, T=100, theta="cosine", eps=0.005)
    b = cp.schedules.MeanReverting.irsde(0.5, T=100, theta="cosine", eps=0.005)
    c = cp.schedules.MeanReverting.irsde(0.5, T=100, theta="cosine", eps=0.01)
    assert isinstance(a.dt, torch.Tensor) and a.dt.dim() == 0
    assert cache.value_key(a) is not None and cache.value_key(a) == cache.value_key(b)
    assert cache.value_key(a) != cache.value_key(c)
    assert cache._value(torch.tensor(1.0)) != cache._value(torch.tensor(2.0))
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gm = cp.targets.random_mixture(3, 1.0, 0.2, 0.5)
    first = cp.sample(gm.model(a, "x0"), x, schedule=a, prediction="x0", solver="dpmsolver++", steps=5)
    hit = cp.sample(gm.model(b, "x0"), x, schedule=b, prediction="x0", solver="dpmsolver++", steps=5)
    assert cache.info()["size"] >= 1 and torch.equal(first, hit)
