"""Weights files: a model's state dict and everything needed to use it, loadable with
``torch.load(..., weights_only=True)`` (tensors and plain Python values only; nothing unpickled).

Format ``perfnet-weights-1``::

    {"format": "perfnet-weights-1",
     "config": {"model": "unet", "model_kwargs": {...}, "maps": ["cbf", ...], "modality": "CT",
                "frame_interval": 1.0, "frames": 80, "input_scale": 25.0,
                "target_mean": {...}, "target_sd": {...}, ...},
     "state_dict": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfnet.errors import PerfnetInputError
from perfnet.models import build_model

FORMAT = "perfnet-weights-1"
BUNDLED = Path(__file__).resolve().parent.parent / "weights"
REQUIRED = (
    "model",
    "model_kwargs",
    "maps",
    "frame_interval",
    "frames",
    "input_scale",
    "target_mean",
    "target_sd",
)


def save_weights(path: str | Path, model: nn.Module, config: dict[str, Any]) -> Path:
    """Write a weights file (config must be JSON-serialisable; it is checked by a round trip)."""
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ValueError(f"weights config lacks {', '.join(missing)}")
    config = json.loads(json.dumps(config))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "config": config, "state_dict": state}, tmp)
    tmp.replace(path)
    return path


def _read(path: Path) -> dict[str, Any]:
    """A weights file's contents, its config checked; never unpickles code."""
    if not path.is_file():
        raise PerfnetInputError(path, "weights file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding pickled objects
        raise PerfnetInputError(path, f"not a loadable perfnet weights file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise PerfnetInputError(path, f"not a perfnet weights file (expected format {FORMAT})")
    config = blob.get("config")
    if not isinstance(config, dict) or not isinstance(blob.get("state_dict"), dict):
        raise PerfnetInputError(path, "not a perfnet weights file (no config or state_dict)")
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise PerfnetInputError(path, f"weights config lacks {', '.join(missing)}")
    return blob


def weights_config(path: str | Path) -> dict[str, Any]:
    """The config of a weights file without building its model (e.g. its training ``domain``)."""
    return _read(Path(path))["config"]


def trained_styles(config: dict[str, Any]) -> list[str] | None:
    """The phantom styles a network's training saw, its ``--init`` chain included (the weights'
    ``training.phantom_styles``, recorded since stop 50; empty for a cohort without phantom truth);
    None where no training in the chain recorded them (weights trained before, the bundled ones)."""
    styles: set[str] = set()
    recorded = False
    training = config.get("training")
    while isinstance(training, dict):
        if isinstance(training.get("phantom_styles"), list):
            recorded = True
            styles.update(str(s) for s in training["phantom_styles"])
        init = training.get("init")
        training = init.get("training") if isinstance(init, dict) else None
    return sorted(styles) if recorded else None


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model (eval mode) and its config from a weights file; never unpickles code."""
    path = Path(path)
    blob = _read(path)
    config = blob["config"]
    try:
        model = build_model(config["model"], **config["model_kwargs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PerfnetInputError(path, f"weights name a model perfnet cannot build ({exc})") from None
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, KeyError) as exc:
        raise PerfnetInputError(path, f"weights do not fit the model: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), config


#: Bundled specialists per modality, after the primary ``<modality>.pt``, in the order inference
#: tries them: a study outside the primary network's training domain goes to the first specialist
#: whose domain holds it (:func:`perfnet.inference.cnn.route`). CT: ``ct-moving.pt`` (stop 42), the
#: CT network fine-tuned on moving studies (docs/cnn.md "Routing by training domain"; its card); MR:
#: ``mr-moving.pt`` (stop 44), the MR network fine-tuned on moving and cut-short studies.
SPECIALISTS: dict[str, tuple[str, ...]] = {"CT": ("ct-moving.pt",), "MR": ("mr-moving.pt",)}


def bundled_networks(modality: str) -> list[Path]:
    """The primary bundled weights of ``modality``, then its shipped specialists."""
    others = (BUNDLED / name for name in SPECIALISTS.get(modality.upper(), ()))
    return [bundled_weights(modality), *(path for path in others if path.is_file())]


def bundled_weights(modality: str) -> Path:
    """The default weights shipped in the package for a modality."""
    path = BUNDLED / f"{modality.lower()}.pt"
    if not path.is_file():
        raise PerfnetInputError(
            path, f"no bundled CNN weights for {modality} in this version; pass --weights FILE"
        )
    return path
