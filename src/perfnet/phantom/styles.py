"""Phantom styles: independent simulators with one output type (``PhantomStudy``) and one truth.

- ``geometric`` (style A, the default): analytic head geometry (``perfnet.phantom.anatomy``),
  gamma-variate AIF, exponential dispersion, white CT noise (``perfnet.phantom.study``);
- ``mni`` (style B): the MNI152 template posed and deformed, vascular territories, population AIF,
  other residue families and gamma dispersion, CT noise with an FBP noise power spectrum, MR
  leakage and non-steady-state frames (``perfnet.phantom.mni``; needs nilearn for the template).

A model trained on one style and tested on the other measures generalisation inside the project
(``benchmarks/generalisation.py``).
"""

from __future__ import annotations

from typing import Any

from perfnet.errors import PerfnetInputError
from perfnet.phantom.config import DrawOptions, PhantomConfig

STYLES = ("geometric", "mni")
DEFAULT_STYLE = "geometric"


def check_style(style: str) -> str:
    if style not in STYLES:
        raise PerfnetInputError("--style", f"must be one of {', '.join(STYLES)}, got {style!r}")
    return style


def draw_config(
    style: str,
    seed: int,
    modality: str,
    options: DrawOptions | None = None,
    **overrides: Any,
) -> Any:
    """The drawn parameters of one study of ``style`` (``PhantomConfig`` or ``MniConfig``);
    ``options`` (:class:`~perfnet.phantom.config.DrawOptions`): how style A draws it (its lesion
    delay apart from its CBF drop, wider bolus, dispersion and residue families;
    :meth:`PhantomConfig.draw`); style B draws its own and refuses them."""
    options = options or DrawOptions()
    if check_style(style) == "mni":
        from perfnet.phantom.mni import MniConfig

        if chosen := options.chosen():
            flag, theirs = chosen[0].metadata["flag"], chosen[0].metadata["style_b"]
            raise PerfnetInputError(flag, f"style A (geometric) only: style B draws {theirs}")
        return MniConfig.draw(seed, modality, **overrides)
    return PhantomConfig.draw(seed, modality, **options.keywords(), **overrides)


def simulate(cfg: Any, noise: bool | None = None) -> Any:
    """Simulate the study a config of either style describes."""
    if style_of(cfg) == "mni":
        from perfnet.phantom.mni import simulate_mni_study

        return simulate_mni_study(cfg, noise=noise)
    from perfnet.phantom.study import simulate_study

    return simulate_study(cfg, noise=noise)


def style_of(cfg: Any) -> str:
    return str(getattr(cfg, "style", DEFAULT_STYLE))
