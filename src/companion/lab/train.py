"""Train the project's small models: ``python -m companion.lab.train <recipe> [--out models/]``.

Recipes (``python -m companion.lab.train --list``): MLP eps-models for 2-D toy sets, a class-conditional
UNet for sklearn's 8x8 digits in eps and v prediction (label dropout for classifier-free guidance),
and the digits classifier behind the quality metric (train it first: the UNet cards use it), and
potential score models u(x, t) (score = grad u) for three 2-D sets, each trained by denoising score matching
plus w_R times the mean squared Fokker-Planck residual (Deveney et al. 2025), w_R in {0, 0.1, 1, 10}, and
mean-reverting restoration nets for the digits (chapter 08), one per degradation of
:mod:`companion.lab.restoration`: x0-prediction on IR-SDE's cosine tables (``restoration.schedule()``).

Diffusion models learn the continuous-time VP SDE ``VPLinear(0.1, 20)`` (Song et al. 2021) with
t ~ U(1e-3, 1): any solver grid is then in-distribution, and the 1000-step DDPM linear schedule is
this SDE's discretisation (beta_n = beta(t_n) / 1000). Targets: eps for "eps", and
v = alpha eps - sigma x0 (Salimans & Ho 2022, eq. 9 with alpha^2 + sigma^2 = 1) for "v".
Weights are the EMA of the iterates. Runs are deterministic for a given seed, thread count and torch build.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..fokker_planck import residual as fp_residual
from ..sampling import sample as cp_sample
from ..schedules import VPLinear
from . import data
from .models import io, nets

__all__ = [
    "Recipe",
    "RECIPES",
    "FP_SETS",
    "FP_WEIGHTS",
    "fp_name",
    "fp_penalty",
    "train",
    "train_interpolant",
    "eval_sample",
    "main",
]

SCHEDULE = {"name": "vp_linear", "params": {"beta_min": 0.1, "beta_max": 20.0}}
#: the restoration nets' schedule (companion.lab.restoration.schedule())
MR_SCHEDULE = {
    "name": "mean_reverting_irsde",
    "params": {"sigma_inf": 0.5, "T": 100, "theta": "cosine", "eps": 0.005},
}
T_EPS = 1e-3


@dataclass(frozen=True)
class Recipe:
    """Everything a training run depends on; it is written into the model's card."""

    task: str  # "toy", "potential", "digits", "classifier" or "mr" (data: the degradation)
    arch: str
    config: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    prediction: str | None = "eps"
    steps: int = 2000
    batch: int = 64
    lr: float = 2e-3
    ema: float = 0.999
    p_uncond: float = 0.1
    seed: int = 0
    eval_samples: int = 1000
    eval_steps: int = 25
    # task "potential": the residual's weight w_R, collocation points per step, uniform on [-box, box]^d
    residual_weight: float = 0.0
    collocation: int = 0
    box: float = 4.0


_MLP = {"dim": 2, "hidden": 128, "depth": 3}
_UNET = {"ch": 32, "emb": 128, "num_classes": 10}
RECIPES: dict[str, Recipe] = {
    "digits-classifier": Recipe(
        "classifier", "DigitsClassifier", {"ch": 32, "feat": 64}, prediction=None, steps=1000, batch=128
    ),
    "digits-unet-eps": Recipe("digits", "DigitsUNet", _UNET, prediction="eps"),
    "digits-unet-v": Recipe("digits", "DigitsUNet", _UNET, prediction="v"),
    "moons-mlp-eps": Recipe("toy", "MLPScore", _MLP, data="moons", steps=4000, batch=512),
    "8gaussians-mlp-eps": Recipe("toy", "MLPScore", _MLP, data="8gaussians", steps=4000, batch=512),
    "checkerboard-mlp-eps": Recipe("toy", "MLPScore", _MLP, data="checkerboard", steps=4000, batch=512),
}

#: The ODE-SDE gap chapter's potential models: ``fp_name(data, w_R)`` for each set and weight.
FP_SETS = ("9gaussians", "rings", "checkerboard")
FP_WEIGHTS = (0.0, 0.1, 1.0, 10.0)
_POTENTIAL = {"dim": 2, "hidden": 80, "depth": 3}  # the paper's hidden widths, 80 x 3


def fp_name(data_set: str, weight: float) -> str:
    """The recipe name of the potential model for ``data_set`` trained with residual weight ``weight``."""
    return f"{data_set}-potential-wr{weight:g}"


for _d in FP_SETS:
    for _w in FP_WEIGHTS:
        RECIPES[fp_name(_d, _w)] = Recipe(
            "potential",
            "PotentialMLP",
            _POTENTIAL,
            data=_d,
            steps=4000,
            batch=512,
            lr=2e-3,
            residual_weight=_w,
            collocation=512 if _w else 0,
        )


#: The paper's training sizes (Deveney et al., Sec. 5): iterations, denoising samples per step, collocation
#: points per step. The chapter's ``FULL=True`` retrains with them (hours on a CPU; minutes on a GPU).
FP_PAPER_SIZES = {"steps": 100_000, "batch": 200_000, "collocation": 50_000}


def fp_paper_recipe(data_set: str, weight: float, **sizes: int) -> Recipe:
    """The recipe of ``fp_name(data_set, weight)`` at the paper's sizes (:data:`FP_PAPER_SIZES`).

    ``sizes`` overrides ``steps``, ``batch`` or ``collocation`` (the tests drive the same path at tiny
    sizes). A model with ``weight == 0`` has no collocation points, as in the shipped recipe.
    """
    name = fp_name(data_set, weight)
    if name not in RECIPES:
        raise ValueError(f"data_set must be one of {FP_SETS} and weight one of {FP_WEIGHTS}; got {name!r}")
    unknown = set(sizes) - set(FP_PAPER_SIZES)
    if unknown:
        raise TypeError(f"sizes takes {sorted(FP_PAPER_SIZES)}; got {sorted(unknown)}")
    s = {**FP_PAPER_SIZES, **sizes}
    for k, v in s.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{k} must be a positive int; got {v!r}")
    return replace(
        RECIPES[name], steps=s["steps"], batch=s["batch"], collocation=s["collocation"] if weight else 0
    )


#: Chapter 08's mean-reverting restoration nets, one per degradation: ``digits-mr-<degradation>``.
MR_DEGRADATIONS = ("noise", "blur", "inpaint")
_MR = {"ch": 16, "depth": 4, "emb": 32}
for _d in MR_DEGRADATIONS:
    RECIPES[f"digits-mr-{_d}"] = Recipe(
        "mr", "MRRestorer", _MR, data=_d, prediction="x0", steps=8000, batch=128, lr=2e-3, eval_samples=359
    )


def fp_penalty(net: nn.Module, x: Tensor, t: Tensor, create_graph: bool = False) -> Tensor:
    """R / (-2 d lambda / dt) = sigma_t^2 R / g_t^2 for a :class:`~.models.nets.PotentialMLP`: the
    Fokker-Planck residual per unit of log-SNR (lambda the half log-SNR).

    R is a rate in t, of order g^2 / sigma^2 times the error of the eps prediction; per unit of log-SNR it
    is of the order of that error, the unit of the denoising loss, on every schedule and at every t (the
    paper's unweighted mean of R^2 on t in [1e-5, 10] is dominated by its smallest times).
    """
    sched = VPLinear(**SCHEDULE["params"])
    r = fp_residual(net.potential, sched, x, t, create_graph=create_graph)
    t64 = t.to(torch.float64)
    return (sched.sigma(t64) ** 2 / sched.g2(t64)).to(x.dtype) * r


def train_interpolant(
    si,
    draw: Callable[[int, torch.Generator], tuple[Tensor, Tensor]],
    steps: int,
    *,
    batch: int = 512,
    lr: float = 2e-3,
    hidden: int = 128,
    depth: int = 3,
    t_clip: float = 1e-3,
    seed: int = 0,
) -> tuple[nn.Module, nn.Module, list[tuple[float, float]]]:
    """Fit the velocity b and the score s of a stochastic interpolant ``si`` with the antithetic quadratic
    losses (:func:`companion.interpolants.velocity_loss`, :func:`~companion.interpolants.score_loss`):
    two :class:`~.models.nets.MLPScore` nets, Adam with cosine decay, t ~ U(t_clip, 1 - t_clip).
    ``draw(n, generator)`` returns n pairs (x_0, x_1) of the coupling. Returns (b_net, s_net, losses per
    step). The nets take (x, t) with t in [0, 1]; CPU float32; deterministic for a seed and thread count."""
    from ..interpolants import score_loss, velocity_loss

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x0, _ = draw(2, g)
    nets_ = [nets.MLPScore(dim=x0.shape[1], hidden=hidden, depth=depth).float() for _ in range(2)]
    opt = torch.optim.Adam([p for n in nets_ for p in n.parameters()], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in tqdm(range(steps), desc="interpolant b, s", leave=False):
        x0, x1 = (v.float() for v in draw(batch, g))
        z = torch.randn(x0.shape, generator=g, dtype=torch.float32)
        t = t_clip + (1 - 2 * t_clip) * torch.rand(batch, generator=g, dtype=torch.float64)
        lb = velocity_loss(nets_[0], si, x0, x1, t, z)
        ls = score_loss(nets_[1], si, x0, x1, t, z)
        opt.zero_grad()
        (lb + ls).backward()
        opt.step()
        sched.step()
        losses.append((float(lb.detach()), float(ls.detach())))
    for n in nets_:
        n.eval()
    return nets_[0], nets_[1], losses


def _lr_at(step: int, recipe: Recipe) -> float:
    """Linear warm-up over 100 steps, then cosine decay to 0."""
    warm = min(100, recipe.steps // 10 + 1)
    if step < warm:
        return recipe.lr * (step + 1) / warm
    frac = (step - warm) / max(1, recipe.steps - warm)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * frac))


def _batch_sampler(recipe: Recipe, g: torch.Generator) -> Callable[[], tuple[Tensor, Tensor | None]]:
    if recipe.task in ("toy", "potential"):
        return lambda: (data.sample_toy(recipe.data, recipe.batch, g), None)
    x, y = data.digits("train")
    if recipe.task == "mr":
        from .restoration import degrade

        def draw_mr() -> tuple[Tensor, Tensor]:
            idx = torch.randint(0, x.shape[0], (recipe.batch,), generator=g)
            return x[idx], degrade(x[idx], recipe.data, g)

        return draw_mr

    def draw() -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, x.shape[0], (recipe.batch,), generator=g)
        return x[idx], y[idx]

    return draw


def _diffusion_loss(
    net: nn.Module, x0: Tensor, y: Tensor | None, recipe: Recipe, g: torch.Generator
) -> Tensor:
    sched = VPLinear(**SCHEDULE["params"])
    b = x0.shape[0]
    t = T_EPS + (1 - T_EPS) * torch.rand(b, generator=g, dtype=torch.float64)
    shape = (b,) + (1,) * (x0.ndim - 1)
    alpha, sigma = sched.alpha(t).float().view(shape), sched.sigma(t).float().view(shape)
    eps = torch.randn(x0.shape, generator=g)
    xt = alpha * x0 + sigma * eps
    if y is not None:
        drop = torch.rand(b, generator=g) < recipe.p_uncond
        y = torch.where(drop, torch.full_like(y, net.num_classes), y)
    target = eps if recipe.prediction == "eps" else alpha * eps - sigma * x0
    return F.mse_loss(net(xt, t.float(), y), target)


def _potential_loss(net: nn.Module, x0: Tensor, recipe: Recipe, g: torch.Generator) -> Tensor:
    loss = _diffusion_loss(net, x0, None, recipe, g)
    if recipe.residual_weight > 0:
        n, d = recipe.collocation, x0.shape[1]
        xc = (2 * torch.rand(n, d, generator=g) - 1) * recipe.box
        tc = T_EPS + (1 - T_EPS) * torch.rand(n, generator=g)
        loss = loss + recipe.residual_weight * fp_penalty(net, xc, tc, create_graph=True).square().mean()
    return loss


def _mr_loss(net: nn.Module, x0: Tensor, mu: Tensor, g: torch.Generator) -> Tensor:
    """x0-prediction loss of mean-reverting diffusion: x_t = alpha x0 + (1 - alpha) mu + sigma eps."""
    from .restoration import schedule

    sched = schedule()
    b = x0.shape[0]
    t = torch.rand(b, generator=g, dtype=torch.float64)
    shape = (b,) + (1,) * (x0.ndim - 1)
    alpha, sigma = sched.alpha(t).float().view(shape), sched.sigma(t).float().view(shape)
    xt = alpha * x0 + (1 - alpha) * mu + sigma * torch.randn(x0.shape, generator=g)
    return F.mse_loss(net(xt, t.float(), mu), x0)


def _step_loss(recipe: Recipe) -> Callable[[nn.Module, Tensor, Tensor | None, torch.Generator], Tensor]:
    if recipe.task == "potential":
        return lambda net, x, y, g: _potential_loss(net, x, recipe, g)
    if recipe.task == "classifier":
        return lambda net, x, y, g: F.cross_entropy(net(x), y)
    if recipe.task == "mr":
        return lambda net, x, y, g: _mr_loss(net, x, y, g)
    return lambda net, x, y, g: _diffusion_loss(net, x, y, recipe, g)


def train(
    name: str, recipe: Recipe | None = None, out: str | Path | None = None, evaluate: bool = True
) -> dict[str, Any]:
    """Train recipe ``name`` (or the given ``recipe``), save weights and card to ``out``; return the card."""
    if recipe is None:
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; available: {sorted(RECIPES)}")
        recipe = RECIPES[name]
    if recipe.task not in ("toy", "potential", "digits", "classifier", "mr"):
        raise ValueError(
            f"recipe.task must be 'toy', 'potential', 'digits', 'classifier' or 'mr'; got {recipe.task!r}"
        )
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(name, recipe, out, evaluate)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(name: str, recipe: Recipe, out: str | Path | None, evaluate: bool) -> dict[str, Any]:
    torch.manual_seed(recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    net = nets.ARCHITECTURES[recipe.arch](**recipe.config)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    draw, loss_fn = _batch_sampler(recipe, g), _step_loss(recipe)
    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(recipe.steps), desc=name, disable=True if os.environ.get("TQDM_DISABLE") else None)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        x, y = draw()
        loss = loss_fn(net, x, y, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        # EMA with a warm-up (decay (1+n)/(10+n) early on) so short runs are not dominated by the init.
        decay = min(recipe.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    ema.eval()
    tail = losses[-min(200, len(losses)) :]
    card: dict[str, Any] = {
        "name": name,
        "arch": recipe.arch,
        "config": dict(recipe.config),
        "prediction": recipe.prediction,
        "schedule": None
        if recipe.task == "classifier"
        else (MR_SCHEDULE if recipe.task == "mr" else SCHEDULE),
        "recipe": asdict(recipe),
        "seed": recipe.seed,
        "steps": recipe.steps,
        "final_loss": sum(tail) / len(tail),
        "final_loss_note": f"mean training loss of the last {len(tail)} steps",
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": f"python -m companion.lab.train {name}",
    }
    if evaluate:
        card["quality"] = _quality(name, ema, recipe, out)
    path = io.save(ema, name, card, out)
    card = io.load_card(name, path.parent)
    return card


# ----------------------------------------------------------------------------- quality figures
def _energy_distance(a: Tensor, b: Tensor) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo 2013), zero iff equal laws."""
    a, b = a.double(), b.double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def eval_sample(
    model: Callable[[Tensor, Tensor], Tensor], x_T: Tensor, prediction: str, steps: int = 25
) -> Tensor:
    """The sampler behind the cards: DPM-Solver++(2M), ``steps`` steps, log-SNR grid, t from 1 to 1e-3."""
    return cp_sample(
        model,
        x_T,
        schedule=VPLinear(**SCHEDULE["params"]),
        prediction=prediction,
        solver="dpmsolver++",
        order=2,
        method="multistep",
        steps=steps,
        grid="logsnr",
        t_start=1.0,
        t_end=T_EPS,
    )


@torch.no_grad()
def _quality(name: str, net: nn.Module, recipe: Recipe, out: str | Path | None) -> dict[str, Any]:
    g = torch.Generator().manual_seed(10_000 + recipe.seed)
    n = recipe.eval_samples
    if recipe.task == "classifier":
        x, y = data.digits("test")
        acc = float((net(x).argmax(1) == y).double().mean())
        return {"test_accuracy": acc, "test_size": int(y.numel())}
    if recipe.task == "mr":
        return _mr_quality(net, recipe, g)
    model = io.Model(net, {"name": name})
    q: dict[str, Any] = {
        "solver": f"DPM-Solver++(2M), {recipe.eval_steps} steps, log-SNR grid, t from 1 to {T_EPS}",
        "n": n,
    }
    if recipe.task in ("toy", "potential"):
        gen = eval_sample(
            model.cond(None), torch.randn(n, 2, generator=g), recipe.prediction, recipe.eval_steps
        )
        real_a, real_b = data.sample_toy(recipe.data, n, g), data.sample_toy(recipe.data, n, g)
        q["energy_distance"] = _energy_distance(gen, real_a)
        q["energy_distance_real_vs_real"] = _energy_distance(real_b, real_a)
        if recipe.task == "potential":
            xc = (2 * torch.rand(4096, 2, generator=g) - 1) * recipe.box
            tc = T_EPS + (1 - T_EPS) * torch.rand(4096, generator=g)
            q["residual_rms"] = float(fp_penalty(net, xc, tc).square().mean().sqrt())
            q["residual_note"] = "RMS of sigma^2 R / g^2 on 4096 collocation points, uniform in the box and t"
        return q
    from . import digits_metrics as dm

    clf = dm.classifier(out)
    test_x, _ = data.digits("test")
    labels = torch.arange(n) % 10
    x_T = torch.randn(n, 1, 8, 8, generator=g)
    q["reference"] = f"{test_x.shape[0]} held-out digits"
    q["fd_train_vs_test"] = dm.digits_fd(data.digits("train")[0], test_x, clf)
    xs = eval_sample(model.cond(None), x_T, recipe.prediction, recipe.eval_steps)
    q["unconditional"] = {"fd": dm.digits_fd(xs, test_x, clf)}
    for w in (1.0, 2.0, 4.0):
        xs = eval_sample(model.cond(labels, guidance=w), x_T, recipe.prediction, recipe.eval_steps)
        q[f"guidance_{w:g}"] = {
            "fd": dm.digits_fd(xs, test_x, clf),
            "accuracy": dm.class_accuracy(xs, labels, clf),
        }
    return q


def _mr_quality(net: nn.Module, recipe: Recipe, g: torch.Generator) -> dict[str, Any]:
    """PSNR and SSIM (mean over the 359 held-out digits) of the degraded images and of MRS-ODE-2 (data
    form, 20 steps, uniform t from 1 to 0) restorations, in float64."""
    from . import restoration as R

    x, _ = data.digits("test")
    mu = R.degrade(x, recipe.data, g).double()
    x_T = mu + R.SIGMA_INF * torch.randn(mu.shape, generator=g, dtype=torch.float64)
    net64 = copy.deepcopy(net).double()
    out = cp_sample(
        lambda xx, tt: net64(xx, tt, mu),
        x_T,
        schedule=R.schedule(),
        prediction="x0",
        solver="mrs",
        order=2,
        timesteps=torch.linspace(1.0, 0.0, 21, dtype=torch.float64),
        mu=mu,
    )
    ref = x.double()
    return {
        "solver": "MRS-ODE-2 (data form), 20 steps, uniform t from 1 to 0",
        "n": int(x.shape[0]),
        "degraded": {"psnr": float(R.psnr(mu, ref).mean()), "ssim": float(R.ssim(mu, ref).mean())},
        "restored": {"psnr": float(R.psnr(out, ref).mean()), "ssim": float(R.ssim(out, ref).mean())},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m companion.lab.train", description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="*", help=f"recipe names or 'all' (in order: {', '.join(RECIPES)})")
    p.add_argument("--out", default=None, help="output directory (default: the repository's models/)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (weights depend on it; default 1)"
    )
    p.add_argument("--steps", type=int, default=None, help="override the recipe's step count (smoke runs)")
    p.add_argument("--no-eval", action="store_true", help="skip the quality figures")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    args = p.parse_args(argv)
    if args.list or not args.recipe:
        for k, r in RECIPES.items():
            print(f"{k:24s} {r.task:10s} {r.arch:16s} steps={r.steps} batch={r.batch}")
        return
    names = list(RECIPES) if args.recipe == ["all"] else args.recipe
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; available: {sorted(RECIPES)}")
    torch.set_num_threads(args.threads)
    for n in names:
        r = RECIPES[n] if args.steps is None else replace(RECIPES[n], steps=args.steps)
        card = train(n, r, args.out, evaluate=not args.no_eval)
        print(
            f"{n}: {card['file']} sha256={card['sha256'][:16]} loss={card['final_loss']:.4f} "
            f"time={card['train_seconds']}s quality={card.get('quality')}"
        )


if __name__ == "__main__":
    main()
