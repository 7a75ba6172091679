"""Weights as safetensors plus a JSON card; loading validates both and never unpickles anything.

A model ``name`` is two files: ``name.safetensors`` (the float32 weights) and ``name.json`` (the card:
architecture and config, recipe, seed, steps, final loss, training time, quality figures, and the SHA-256
of the weights file). :func:`load` checks the hash before reading the tensors, so a truncated or altered
file fails with an error naming it instead of loading garbage.

Where a model is found (:func:`search_path`, first match by name wins):

1. ``$COMPANION_MODELS``, when set;
2. the local ``models/`` folder: the repository's ``models/`` in a source checkout, else ``./models`` in the
   working directory. ``make models`` and ``python -m companion.lab.train`` write there, so a retrained
   model overrides the shipped one of the same name;
3. the weights shipped inside the package (``companion/lab/models/weights/``, package data), so a plain
   ``pip install`` (Colab) loads every model the chapters use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..._device import host_to
from ...parameterization import classifier_free_guidance
from ...schedules import Schedule, get_schedule
from .nets import ARCHITECTURES

__all__ = [
    "WeightsError",
    "models_dir",
    "shipped_dir",
    "search_path",
    "locate",
    "sha256",
    "save",
    "load",
    "load_card",
    "Model",
    "available",
]


class WeightsError(RuntimeError):
    """A weights file or its card is missing, corrupted, or does not match its architecture."""


def shipped_dir() -> Path:
    """The weights and cards shipped inside the package (package data)."""
    return Path(__file__).resolve().parent / "weights"


def _checkout_root() -> Path | None:
    """The repository root when the package runs from a source checkout (``src/companion``), else None."""
    here = Path(__file__).resolve()
    root = here.parents[4]
    if here.parents[3].name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def models_dir() -> Path:
    """The local models folder, where training writes by default and which overrides the shipped weights.

    ``$COMPANION_MODELS`` if set; else the repository's ``models/`` in a source checkout; else ``./models``.
    """
    env = os.environ.get("COMPANION_MODELS")
    if env:
        return Path(env)
    root = _checkout_root()
    return root / "models" if root is not None else Path.cwd() / "models"


def search_path() -> list[Path]:
    """The folders :func:`load` searches, in order: the local models folder, then the shipped weights."""
    return [models_dir(), shipped_dir()]


def locate(name: str) -> Path:
    """The folder that holds model ``name``'s card: the first of :func:`search_path` that has it.

    When none has it, the shipped folder (so that the error names the file a plain install should have).
    """
    _check_name(name)
    for d in search_path():
        if (d / f"{name}.json").is_file():
            return d
    return shipped_dir()


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise ValueError(f"name must be a model name such as 'digits-unet-eps' (no path); got {name!r}")


def _paths(name: str, root: str | Path | None, *, writing: bool = False) -> tuple[Path, Path]:
    _check_name(name)
    if root is not None:
        d = Path(root)
    else:
        d = models_dir() if writing else locate(name)
    return d / f"{name}.safetensors", d / f"{name}.json"


def save(net: nn.Module, name: str, card: dict[str, Any], root: str | Path | None = None) -> Path:
    """Write ``name.safetensors`` (contiguous float32 tensors in sorted-key order) and ``name.json``.

    ``root`` defaults to the local models folder (:func:`models_dir`), never to the shipped weights.

    The card must name ``arch`` (a key of :data:`~companion.lab.models.nets.ARCHITECTURES`) and ``config``
    (its constructor arguments); ``file``, ``sha256`` and ``bytes`` are filled in here.
    """
    from safetensors.torch import save_file

    if card.get("arch") not in ARCHITECTURES:
        raise ValueError(f"card['arch'] must be one of {sorted(ARCHITECTURES)}; got {card.get('arch')!r}")
    w_path, c_path = _paths(name, root, writing=True)
    w_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(net.state_dict().items())}
    # No metadata: the bytes depend on the weights alone, so equal weights give equal hashes.
    save_file(state, str(w_path))
    card = {**card, "file": w_path.name, "sha256": sha256(w_path), "bytes": w_path.stat().st_size}
    c_path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return w_path


def load_card(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """The JSON card of model ``name``; :class:`WeightsError` naming the file if missing or unreadable."""
    _, c_path = _paths(name, root)
    if not c_path.is_file():
        raise WeightsError(
            f"model card {c_path} not found; retrain with `python -m companion.lab.train {name}`"
        )
    try:
        card = json.loads(c_path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"model card {c_path} is not valid JSON: {e}") from e
    for key in ("arch", "config", "sha256"):
        if key not in card:
            raise WeightsError(f"model card {c_path} lacks the key {key!r}")
    return card


def _read_weights(w_path: Path, card: dict[str, Any], name: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not w_path.is_file():
        raise WeightsError(
            f"weights file {w_path} not found; retrain with `python -m companion.lab.train {name}`"
        )
    digest = sha256(w_path)
    if digest != card["sha256"]:
        raise WeightsError(
            f"weights file {w_path} is corrupted or does not belong to its card: SHA-256 {digest[:16]}... "
            f"!= {str(card['sha256'])[:16]}... recorded in {w_path.with_suffix('.json').name}"
        )
    try:
        return load_file(str(w_path))
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise WeightsError(f"weights file {w_path} could not be read as safetensors: {e}") from e


@dataclass
class Model:
    """A trained network with its card: ``model(x, t, y=None)`` returns the prediction it was trained for.

    ``prediction`` ("eps" or "v") and ``schedule`` say how to read the output; :meth:`cond` binds
    labels and a classifier-free guidance scale into a plain ``(x, t)`` callable for the solvers.
    """

    net: nn.Module
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.card.get("name", ""))

    @property
    def prediction(self) -> str | None:
        return self.card.get("prediction")

    @property
    def schedule(self) -> Schedule | None:
        s = self.card.get("schedule")
        return get_schedule(s["name"], **s.get("params", {})) if s else None

    def to(self, *args: Any, **kwargs: Any) -> Model:
        self.net.to(*args, **kwargs)
        return self

    def __call__(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        if y is None:
            return self.net(x, t)
        return self.net(x, t, y)

    def cond(self, y: Tensor | int | None, guidance: float = 1.0):
        """``(x, t) -> uncond + guidance (cond - uncond)`` for labels ``y`` (classifier-free guidance).

        ``guidance = 1`` is the plain conditional model and costs one evaluation; ``y = None`` is the
        unconditional model. Otherwise each call evaluates the network once on a doubled batch
        (:func:`companion.parameterization.classifier_free_guidance`).
        """
        if y is None:
            return lambda x, t: self(x, t)
        if not isinstance(guidance, (int, float)) or isinstance(guidance, bool):
            raise TypeError(f"guidance must be a real number; got {type(guidance).__name__}")
        num_classes = getattr(self.net, "num_classes", 0)
        if not num_classes:
            raise ValueError(f"model {self.name!r} is unconditional: pass y=None")
        labels = torch.as_tensor(y, dtype=torch.long)
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ValueError(f"y must hold class labels in [0, {num_classes}); got {labels.tolist()}")
        w = float(guidance)
        on_device: dict[torch.device, Tensor] = {}  # labels copied once per device, not once per step

        def guided(x: Tensor, t: Tensor | float) -> Tensor:
            b = x.shape[0]
            if x.device not in on_device:
                on_device[x.device] = host_to(labels, x.device)
            yc = on_device[x.device].expand(b)
            yu = torch.full((b,), num_classes, device=x.device, dtype=torch.long)
            tt = torch.as_tensor(t, device=x.device, dtype=x.dtype)
            return classifier_free_guidance(self, w, yc, yu)(x, tt)

        return guided


def load(name: str, root: str | Path | None = None, device: str | torch.device = "cpu") -> Model:
    """Load model ``name`` (e.g. ``"digits-unet-eps"``) from ``root`` (default: :func:`locate`).

    Raises :class:`WeightsError` naming the file when the weights or card are missing, the weights'
    SHA-256 differs from the card's, or the tensors do not fit the card's architecture.
    """
    w_path, c_path = _paths(name, root)
    card = load_card(name, root)
    state = _read_weights(w_path, card, name)
    try:
        net = ARCHITECTURES[card["arch"]](**card["config"])
    except (KeyError, TypeError) as e:
        raise WeightsError(f"model card {c_path} names an unknown architecture or config: {e}") from e
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights file {w_path} does not fit architecture {card['arch']}: {e}") from e
    net.eval().requires_grad_(False)
    return Model(net.to(device), card)


def available(root: str | Path | None = None) -> list[str]:
    """Names of the models with a card in ``root`` (default: in any folder of :func:`search_path`)."""
    dirs = [Path(root)] if root is not None else search_path()
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.json")})
