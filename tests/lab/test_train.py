"""Training is reproducible: the same recipe and seed give byte-identical safetensors (same SHA-256).

Runs tiny versions of the recipes (a few steps of small networks) so the file stays fast; the full
recipes differ only in sizes and step counts.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from companion.lab import models, train
from companion.schedules import MeanReverting

TINY_MLP = train.Recipe(
    "toy",
    "MLPScore",
    {"dim": 2, "hidden": 16, "depth": 1},
    data="moons",
    steps=20,
    batch=64,
    eval_samples=64,
    eval_steps=5,
)
TINY_POTENTIAL = train.Recipe(
    "potential",
    "PotentialMLP",
    {"dim": 2, "hidden": 16, "depth": 2},
    data="9gaussians",
    steps=10,
    batch=64,
    eval_samples=64,
    eval_steps=5,
    residual_weight=1.0,
    collocation=32,
)
TINY_UNET = train.Recipe(
    "digits", "DigitsUNet", {"ch": 8, "emb": 16, "num_classes": 10}, prediction="v", steps=3, batch=16
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("recipe", [TINY_MLP, TINY_POTENTIAL, TINY_UNET], ids=["mlp", "potential", "unet"])
def test_same_seed_same_weights_hash(tmp_path, recipe):
    # The UNet's quality figures need the shipped classifier, which is not the point here.
    evaluate = recipe.task in ("toy", "potential")
    a = train.train("tiny", recipe, tmp_path / "a", evaluate=evaluate)
    b = train.train("tiny", recipe, tmp_path / "b", evaluate=evaluate)
    c = train.train("tiny", replace(recipe, seed=1), tmp_path / "c", evaluate=evaluate)
    assert a["sha256"] == models.sha256(tmp_path / "a" / "tiny.safetensors")
    assert a["sha256"] == b["sha256"]
    assert a["sha256"] != c["sha256"]
    assert a["final_loss"] == b["final_loss"]
    if evaluate:
        assert a["quality"] == b["quality"]


def test_card_records_the_run_and_loads(tmp_path):
    card = train.train("tiny", TINY_MLP, tmp_path)
    for key in ("recipe", "seed", "steps", "final_loss", "train_seconds", "quality", "sha256", "schedule"):
        assert key in card
    assert card["recipe"]["steps"] == TINY_MLP.steps and card["seed"] == TINY_MLP.seed
    m = models.load("tiny", tmp_path)
    assert m.prediction == "eps" and m.schedule is not None
    x = torch.randn(5, 2)
    assert m(x, torch.tensor(0.5)).shape == (5, 2)
    torch.testing.assert_close(m(x, torch.full((5,), 0.5)), m(x, 0.5))


def test_recipes_are_well_formed():
    for name, r in train.RECIPES.items():
        assert r.arch in models.ARCHITECTURES, name
        models.ARCHITECTURES[r.arch](**r.config)
        allowed = {"classifier": (None,), "mr": ("x0",)}.get(r.task, ("eps", "v"))
        assert r.prediction in allowed, name


TINY_MR = train.Recipe(
    "mr",
    "MRRestorer",
    {"ch": 4, "depth": 2, "emb": 8},
    data="inpaint",
    prediction="x0",
    steps=3,
    batch=16,
)


def test_mr_recipe_is_deterministic_and_its_card_names_the_irsde_schedule(tmp_path):
    a = train.train("tiny-mr", TINY_MR, tmp_path / "a")
    b = train.train("tiny-mr", TINY_MR, tmp_path / "b")
    assert a["sha256"] == b["sha256"] and a["quality"] == b["quality"]
    assert set(a["quality"]) >= {"degraded", "restored", "n"}
    m = models.load("tiny-mr", tmp_path / "a")
    s = m.schedule
    assert isinstance(s, MeanReverting) and s.T == 100 and s.sigma_inf == 0.5
    x, mu = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    assert m(x, torch.full((3,), 0.5), mu).shape == x.shape
    with pytest.raises(ValueError, match="mu"):
        m(x, 0.5)


def test_the_gap_recipes_cover_every_set_and_weight():
    names = {train.fp_name(d, w) for d in train.FP_SETS for w in train.FP_WEIGHTS}
    assert names <= set(train.RECIPES) and len(names) == 12
    for n in names:
        r = train.RECIPES[n]
        assert r.task == "potential" and (r.collocation > 0) == (r.residual_weight > 0)


def test_the_paper_sized_recipes_and_the_full_retraining_path(tmp_path):
    """Chapter 07's FULL=True branch: fp_paper_recipe, train into a folder, load from it (here at tiny
    sizes; the paper's are 100k steps of 200k samples and 50k collocation points)."""
    r = train.fp_paper_recipe("rings", 1.0)
    assert (r.steps, r.batch, r.collocation) == (100_000, 200_000, 50_000)
    assert r.residual_weight == 1.0 and r.data == "rings"
    assert train.fp_paper_recipe("rings", 0.0).collocation == 0
    tiny = train.fp_paper_recipe("rings", 1.0, steps=3, batch=32, collocation=16)
    name = train.fp_name("rings", 1.0)
    train.train(name, replace(tiny, eval_samples=64, eval_steps=5), tmp_path)
    m = models.load(name, tmp_path)
    assert models.load_card(name, tmp_path)["recipe"]["collocation"] == 16
    x, t = torch.zeros(4, 2), torch.full((4,), 0.5)
    assert torch.isfinite(m.net.potential(x, t)).all()
    with pytest.raises(ValueError, match="data_set"):
        train.fp_paper_recipe("moons", 1.0)
    with pytest.raises(ValueError, match="steps"):
        train.fp_paper_recipe("rings", 1.0, steps=0)
    with pytest.raises(TypeError, match="sizes"):
        train.fp_paper_recipe("rings", 1.0, epochs=3)


def test_the_residual_penalty_is_the_residual_per_unit_of_log_snr():
    """fp_penalty = sigma^2 R / g^2 = R / (-2 d lambda / dt), R of the network's potential."""
    from companion.fokker_planck import residual

    net = models.PotentialMLP(hidden=8, depth=1).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    sched = train.VPLinear(**train.SCHEDULE["params"])
    want = sched.sigma(t) ** 2 / sched.g2(t) * residual(net.potential, sched, x, t)
    torch.testing.assert_close(train.fp_penalty(net, x, t), want)


def test_train_restores_the_determinism_flag(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    train.train("tiny", replace(TINY_MLP, steps=1), tmp_path, evaluate=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_unknown_recipe_is_named():
    with pytest.raises(ValueError, match="nope"):
        train.train("nope")
    with pytest.raises(SystemExit):
        train.main(["nope"])


def test_cli_lists_recipes(capsys):
    train.main(["--list"])
    out = capsys.readouterr().out
    assert all(name in out for name in train.RECIPES)


def test_train_interpolant_learns_and_is_deterministic():
    """A few hundred steps of the antithetic losses lower both; the same seed gives the same nets."""
    import companion as cp
    from companion.interpolants import GaussianMixtureInterpolant, StochasticInterpolant
    from companion.lab.train import train_interpolant

    rho0 = cp.targets.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.2, 0.2]))
    rho1 = cp.targets.GaussianMixture(torch.tensor([[0.0, 1.5]]), torch.tensor([0.1]))
    gm = GaussianMixtureInterpolant(StochasticInterpolant(), rho0, rho1)
    b1, s1, losses = train_interpolant(gm.si, gm.sample_endpoints, 150, batch=128, hidden=32, depth=2, seed=1)
    b2, _, _ = train_interpolant(gm.si, gm.sample_endpoints, 150, batch=128, hidden=32, depth=2, seed=1)
    first = torch.tensor(losses[:20]).mean(0)
    last = torch.tensor(losses[-20:]).mean(0)
    assert bool((last < first).all())
    x, t = torch.randn(8, 2), torch.full((8,), 0.5)
    assert torch.equal(b1(x, t), b2(x, t))
