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
    delay_power: tuple[float, float] | None = None,
    delay_mix: tuple[float, float] | None = None,
    wide_bolus: bool = False,
    wide_dispersion: bool = False,
    wide_residue: bool = False,
    **overrides: Any,
) -> Any:
    """The drawn parameters of one study of ``style`` (``PhantomConfig`` or ``MniConfig``);
    ``delay_power`` / ``delay_mix``: style A's lesion delay drawn apart from its CBF drop;
    ``wide_bolus``: style A's arterial first pass drawn from a wider family (:meth:`PhantomConfig.draw`;
    style B draws its own delay exponent and its own population-shaped bolus); ``wide_dispersion``:
    style A's tissue dispersion kernel drawn as a gamma density of shape 1–6 (style B draws its own);
    ``wide_residue``: style A's gamma and log-normal residues drawn from narrower transit-time
    distributions too (style B draws its own families)."""
    if check_style(style) == "mni":
        from perfnet.phantom.mni import MniConfig

        for option, given, what in (
            ("--delay-power", delay_power, "its own delay exponent"),
            ("--delay-mix", delay_mix, "its own delay exponent"),
            ("--wide-bolus", wide_bolus or None, "its own bolus shape"),
            ("--wide-dispersion", wide_dispersion or None, "its own dispersion kernel"),
            ("--wide-residue", wide_residue or None, "its own residue families"),
        ):
            if given is not None:
                raise PerfnetInputError(option, f"style A (geometric) only: style B draws {what}")
        return MniConfig.draw(seed, modality, **overrides)
    from perfnet.phantom.config import PhantomConfig

    return PhantomConfig.draw(
        seed,
        modality,
        delay_power=delay_power,
        delay_mix=delay_mix,
        wide_bolus=wide_bolus,
        wide_dispersion=wide_dispersion,
        wide_residue=wide_residue,
        **overrides,
    )


def simulate(cfg: Any, noise: bool | None = None) -> Any:
    """Simulate the study a config of either style describes."""
    if style_of(cfg) == "mni":
        from perfnet.phantom.mni import simulate_mni_study

        return simulate_mni_study(cfg, noise=noise)
    from perfnet.phantom.study import simulate_study

    return simulate_study(cfg, noise=noise)


def style_of(cfg: Any) -> str:
    return str(getattr(cfg, "style", DEFAULT_STYLE))
