"""`report.html`: one study's result, self-contained (images embedded as PNG data URIs), offline.

At the top, the QC verdict (ok / review / unreliable, :mod:`perfnet.qc`) with the flags' messages,
the same for every method. Sections: lesion volumes with mismatch and DEFUSE-3 flags; lesion overlay
on the temporal mean frame; map montages in the usual colour scales with colour bars and units;
uncertainty maps of a CNN; AIF/VOF curves (conventional methods); QC flags; method and provenance.
The PNGs are also written to ``figures/`` beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from perfnet import __version__
from perfnet.constants import CORE_PROBABILITY

UNITS = {
    "cbf": "mL/100 g/min",
    "cbv": "mL/100 g",
    "mtt": "s",
    "ttp": "s",
    "tmax": "s",
}
TITLES = {
    "cbf": "CBF",
    "cbv": "CBV",
    "mtt": "MTT",
    "ttp": "TTP",
    "tmax": "Tmax",
}
#: Display windows of CT maps (MR maps and TTP use the 2nd–98th brain percentiles).
CT_WINDOWS = {"cbf": (0.0, 80.0), "cbv": (0.0, 8.0), "mtt": (0.0, 16.0), "tmax": (0.0, 16.0)}
MAX_SLICES = 6
CSS = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; }
td, th { border: 1px solid #bbb; padding: 0.25em 0.7em; text-align: right; }
th { background: #eee; } img { max-width: 100%; display: block; margin: 0.4em 0; }
.ok { color: #0a7a0a; } .no { color: #b00; } .note { color: #555; font-size: 0.85em; }
pre { background: #f0f0f0; padding: 0.6em; overflow: auto; font-size: 0.8em; }
.verdict { padding: 0.6em 1em; margin: 0 0 1em 0; border-radius: 4px; border: 2px solid; }
.verdict h2 { border: none; margin: 0 0 0.3em 0; font-size: 1.2em; }
.verdict ul { margin: 0.2em 0 0 1.2em; padding: 0; }
.verdict-ok { background: #e8f6e8; border-color: #0a7a0a; }
.verdict-review { background: #fff4d6; border-color: #c88a00; }
.verdict-unreliable { background: #fde4e4; border-color: #b00; }
"""
#: What each QC verdict tells the reader (the banner at the top of the report).
VERDICT_TEXT = {
    "ok": "QC ok: no quality warning was raised.",
    "review": "QC review: read the maps with the warnings below.",
    "unreliable": "QC unreliable: the maps are shown but must not be trusted.",
}


def _slices(brain: np.ndarray, n: int = MAX_SLICES) -> list[int]:
    """Up to ``n`` slices spread over those holding the most brain."""
    area = brain.sum(axis=(0, 1))
    occupied = np.flatnonzero(area > 0.1 * max(area.max(), 1))
    if occupied.size == 0:
        occupied = np.arange(brain.shape[2])
    idx = np.unique(np.round(np.linspace(0, occupied.size - 1, min(n, occupied.size))).astype(int))
    return [int(occupied[i]) for i in idx]


def _crop_box(brain: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """In-plane bounding box of the brain over all slices (plus a margin), for tighter panels."""
    if not brain.any():
        return slice(None), slice(None)
    xs, ys = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
    return (
        slice(max(0, xs[0] - margin), min(brain.shape[0], xs[-1] + margin + 1)),
        slice(max(0, ys[0] - margin), min(brain.shape[1], ys[-1] + margin + 1)),
    )


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, facecolor=fig.get_facecolor())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _window(name: str, values: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT" and name in CT_WINDOWS:
        return CT_WINDOWS[name]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98])
    return float(min(lo, 0.0) if name != "ttp" else lo), float(hi if hi > lo else lo + 1)


def _display(image: np.ndarray) -> np.ndarray:
    """An (X, Y[, C]) slice for imshow in radiological convention: anterior up, the patient's right
    (RAS +x) on the image's left."""
    return np.flip(np.swapaxes(image, 0, 1), axis=(0, 1))


def map_montage(
    name: str, volume: np.ndarray, brain: np.ndarray, modality: str, label: str | None = None
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = _slices(brain)
    vmin, vmax = _window(name.replace("_uncertainty", ""), volume[brain], modality)
    box = _crop_box(brain)
    volume, brain = volume[box], brain[box]
    if name.endswith("_uncertainty"):
        vmin = 0.0
    if name == CORE_PROBABILITY:
        vmin, vmax = 0.0, 1.0
    fig, axes = plt.subplots(1, len(slices), figsize=(1.9 * len(slices) + 0.9, 2.2), facecolor="black")
    axes = np.atleast_1d(axes)
    cmap = matplotlib.colormaps["magma" if name.endswith("_uncertainty") else "jet"].with_extremes(
        bad="black"
    )
    im = None
    for ax, z in zip(axes, slices, strict=True):
        img = np.ma.masked_where(~brain[:, :, z], volume[:, :, z])
        im = ax.imshow(_display(img), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"slice {z}", color="white", fontsize=7)
        ax.axis("off")
    base = name.replace("_uncertainty", "")
    title = label or f"{TITLES.get(base, base)}{' uncertainty (Laplace b)' if name != base else ''}"
    cbar = fig.colorbar(im, ax=list(axes), fraction=0.025, pad=0.01)
    cbar.set_label(UNITS.get(base, ""), color="white", fontsize=7)
    cbar.ax.tick_params(colors="white", labelsize=6)
    fig.suptitle(title, color="white", fontsize=9)
    return _png(fig)


def lesion_overlay(
    mean_frame: np.ndarray,
    brain: np.ndarray,
    core: np.ndarray,
    penumbra: np.ndarray,
    modality: str = "CT",
    late: np.ndarray | None = None,
) -> bytes:
    """Core and penumbra on the temporal mean; ``late`` (the input QC's tissue still enhancing at the
    last frame, ``late_bolus``) outlined in yellow where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = _slices(brain)
    box = _crop_box(brain, margin=12)
    mean_frame, core, penumbra, brain = mean_frame[box], core[box], penumbra[box], brain[box]
    late = None if late is None else late[box]
    values = mean_frame[brain] if brain.any() else mean_frame.ravel()
    if modality == "CT":
        lo, hi = 0.0, 80.0  # brain window (HU)
    else:
        lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(slices), figsize=(1.9 * len(slices), 2.2), facecolor="black")
    axes = np.atleast_1d(axes)
    for ax, z in zip(axes, slices, strict=True):
        ax.imshow(_display(mean_frame[:, :, z]), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        rgba = np.zeros((*core.shape[:2], 4))
        rgba[penumbra[:, :, z]] = (0.1, 0.9, 0.2, 0.55)
        rgba[core[:, :, z]] = (1.0, 0.1, 0.1, 0.7)
        ax.imshow(_display(rgba), interpolation="nearest")
        if late is not None and late[:, :, z].any():
            ax.contour(_display(late[:, :, z].astype(float)), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(f"slice {z}", color="white", fontsize=7)
        ax.axis("off")
    title = "core (red) and penumbra (green) on the temporal mean"
    if late is not None:
        title += "; still enhancing at the last frame: yellow outline"
    fig.suptitle(title, color="white", fontsize=9)
    return _png(fig)


def curves_plot(aif: dict[str, Any], modality: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(aif["times"])
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.plot(t, aif["aif"], color="tab:red", label="AIF (used)")
    if aif.get("aif_raw") is not None and aif.get("partial_volume_scale", 1.0) != 1.0:
        ax.plot(t, aif["aif_raw"], color="tab:red", ls=":", label="AIF (measured)")
    if aif.get("vof") is not None:
        ax.plot(t, aif["vof"], color="tab:blue", label="VOF")
    ax.set(xlabel="time (s)", ylabel="ΔHU" if modality == "CT" else "ΔR2* (1/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _network_line(provenance: dict[str, Any]) -> str:
    """Which network made a CNN's maps, and why when routing chose a specialist (weights file names
    only: paths may name a user's folders)."""
    weights = provenance.get("weights")
    if not weights:
        return ""
    names = [Path(w).name for w in ([weights] if isinstance(weights, str) else weights)]
    text = (
        "Network"
        + ("s" if len(names) > 1 else "")
        + ": "
        + ", ".join(f"<code>{html.escape(n)}</code>" for n in names)
    )
    routed = provenance.get("routed")
    if routed:
        text += (
            f", chosen instead of <code>{html.escape(str(routed.get('instead_of')))}</code> because the"
            f" study lies outside that network's training domain ({html.escape(str(routed.get('because')))})"
        )
    scaled = provenance.get("time_scale")
    if scaled:  # perfnet.inference.timescale: a bolus slower than the network trained on
        text += (
            f"; read on a time axis compressed ×{float(scaled['factor']):.2f} (the bolus rises in"
            f" {float(scaled['bolus_rise_s']):.1f} s, the network trained on ≤"
            f" {float(scaled['trained_rise_s']):.1f} s) and its maps mapped back"
        )
    gate = provenance.get("time_scale_gate")
    if gate and gate.get("healthy_tmax_median_s") is not None:  # the gated mode's verdict
        median, above = float(gate["healthy_tmax_median_s"]), float(gate["late_above_s"])
        text += (
            f", because read as acquired its healthy tissue's median Tmax was {median:.1f} s"
            f" (late above {above:g} s)"
            if gate.get("compressed")
            else f"; the bolus rises slower than the network trained on, read as acquired (its healthy"
            f" tissue's median Tmax {median:.1f} s, not late: ≤ {above:g} s)"
        )
    return f"<p>{text}.</p>"


def verdict_banner(provenance: dict[str, Any]) -> str:
    """The QC verdict (ok / review / unreliable) with the flag messages, for the top of the report."""
    from perfnet.qc import verdict

    flags = provenance.get("qc_flags") or []
    value = str(provenance.get("verdict") or provenance.get("qc_verdict") or verdict(flags))
    items = "".join(
        f"<li><code>{html.escape(f['code'])}</code>: {html.escape(f.get('message', ''))}</li>" for f in flags
    )
    return (
        f'<div class="verdict verdict-{html.escape(value)}" id="qc-verdict">'
        f"<h2>{html.escape(VERDICT_TEXT.get(value, f'QC {value}'))}</h2>"
        f"{f'<ul>{items}</ul>' if items else ''}</div>"
    )


def _profile_table(lesions: dict[str, Any]) -> str:
    """Tmax volumes, HIR, rCBV and core volumes at several thresholds, with their definitions."""
    tmax = lesions.get("tmax_volumes_ml")
    core = lesions.get("core_volumes_ml")
    if not tmax or not core:
        return ""
    hir, rcbv = lesions.get("hypoperfusion_intensity_ratio"), lesions.get("rcbv_hypoperfused")
    definitions = lesions.get("definitions", {})
    head = "".join(f"<th>Tmax &gt; {t} s</th>" for t in tmax) + "<th>HIR</th><th>rCBV</th>"
    row = "".join(f"<td>{v:.1f} mL</td>" for v in tmax.values())
    row += f"<td>{'—' if hir is None else f'{hir:.2f}'}</td><td>{'—' if rcbv is None else f'{rcbv:.2f}'}</td>"
    core_head = "".join(f"<th>core rCBF &lt; {c} %</th>" for c in core)
    core_row = "".join(f"<td>{v:.1f} mL</td>" for v in core.values())
    notes = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in definitions.items())
    return (
        f"<table><tr>{head}</tr><tr>{row}</tr></table><table><tr>{core_head}</tr><tr>{core_row}</tr></table>"
        f'<details><summary>definitions</summary><ul class="note">{notes}</ul></details>'
    )


#: How to read an uncertainty map (a Laplace scale b: P(|truth − value| ≤ t) = 1 − exp(−t/b)).
UNCERTAINTY_NOTE = (
    "<p class=\"note\">Per-voxel Laplace scale b in the map's units: the network's 90 % interval is"
    " value ± 2.3·b (b·ln 10). Its calibration on unseen phantom studies is in the model card.</p>"
)


def write_report(
    out_dir: str | Path,
    maps: Any,
    mean_frame: np.ndarray,
    lesions: dict[str, Any],
    provenance: dict[str, Any],
    modality: str,
    aif: dict[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` and ``figures/*.png`` into ``out_dir`` (which must exist)."""
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    brain = np.asarray(maps.brain_mask, dtype=bool)
    images: list[tuple[str, str, bytes]] = []  # (section, name, png)
    masks = maps.masks
    if {"core", "penumbra"} <= set(masks):
        images.append(
            (
                "lesions",
                "lesion_overlay",
                lesion_overlay(
                    mean_frame, brain, masks["core"], masks["penumbra"], modality, late=masks.get("late")
                ),
            )
        )
    if CORE_PROBABILITY in maps.maps:  # the CNN's core head, which the core above is taken from
        label = "Core probability (CNN core head)"
        montage = map_montage(CORE_PROBABILITY, maps[CORE_PROBABILITY], brain, modality, label=label)
        images.append(("lesions", CORE_PROBABILITY, montage))
    for name in ("tmax", "cbf", "cbv", "mtt", "ttp"):
        if name in maps.maps:
            images.append(("maps", name, map_montage(name, maps[name], brain, modality)))
    for name in sorted(k for k in maps.maps if k.endswith("_uncertainty")):
        images.append(("uncertainty", name, map_montage(name, maps[name], brain, modality)))
    if aif is not None:
        images.append(("curves", "aif_vof", curves_plot(aif, modality)))
    for _, name, data in images:
        (figures / f"{name}.png").write_bytes(data)

    v = lesions["volumes_ml"]
    ratio = lesions.get("mismatch_ratio")
    flags = lesions["defuse3"]
    yes = '<b class="ok">yes</b>'
    no = '<b class="no">no</b>'
    qc = provenance.get("qc_flags") or []
    qc_html = (
        "<ul>"
        + "".join(
            f"<li><code>{html.escape(f['code'])}</code>: {html.escape(f.get('message', ''))}</li>" for f in qc
        )
        + "</ul>"
        if qc
        else "<p>none</p>"
    )
    seconds = provenance.get("seconds", {})
    section = {
        s: "".join(_img(d, n) for sec, n, d in images if sec == s)
        for s in ("lesions", "maps", "uncertainty", "curves")
    }
    method = html.escape(str(provenance.get("method", maps.method)))
    settings = lesions["settings"]
    tmax_thr = settings["tmax_threshold_s"]
    core_pct = 100 * settings["core_relative_cbf"]
    calibrated = settings.get("cbf_calibration", 1.0) != 1.0 or any(
        settings.get(k) for k in ("cbf_offset", "core_cbv_weight")
    )
    core_text = (
        f"core threshold: CBF &lt; {core_pct:.0f} % of {lesions['reference_cbf']:.1f}"
        f" ({html.escape(settings['reference'])} reference)"
    )
    if settings.get("core_cbv_weight"):
        core_text += ", blood volume weighed in (below)"
    if lesions.get("core_source") == "adc":
        core_text = "core from the ADC map (diffusion), not from perfusion"
        calibrated = True  # state the rule as applied
    core_note = f" Core rule as applied: {html.escape(lesions.get('core_rule', ''))}." if calibrated else ""
    if lesions.get("core_note"):
        core_note += f" Note: {html.escape(lesions['core_note'])}."
    late = lesions.get("in_late_tissue_ml")
    if late:  # present once the late tissue raises late_bolus
        core_note += (
            f" <b>{late['core']:.1f} mL of the core and {late['hypoperfused']:.1f} mL of the hypoperfused"
            f" region lie in the {late['late_tissue']:.0f} mL of tissue still enhancing at the last frame"
            " (QC <code>late_bolus</code>): not measured there, by any method.</b>"
        )
    prov_text = html.escape(json.dumps(provenance, indent=1, default=str)[:200_000])
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>perfnet report: {method}</title>
<style>{CSS}</style></head><body>
{verdict_banner(provenance)}
<h1>perfnet {html.escape(__version__)}: {modality} perfusion, method <code>{method}</code></h1>
<p class="note">Research software, not a medical device. Images: patient's right on the image's left.</p>
<h2>Lesion volumes</h2>
<table><tr><th>core</th><th>hypoperfused (Tmax &gt; {tmax_thr:g} s)</th><th>penumbra</th>
<th>mismatch volume</th><th>mismatch ratio</th></tr>
<tr><td>{v["core"]:.1f} mL</td><td>{v["hypoperfused"]:.1f} mL</td><td>{v["penumbra"]:.1f} mL</td>
<td>{v["mismatch"]:.1f} mL</td><td>{"∞" if ratio is None else f"{ratio:.2f}"}</td></tr></table>
<p>DEFUSE-3 target mismatch: {yes if flags["target_mismatch"] else no} — core &lt; 70 mL:
{yes if flags["core_below_70ml"] else no}, ratio ≥ 1.8: {yes if flags["mismatch_ratio_at_least_1_8"] else no},
mismatch ≥ 15 mL: {yes if flags["mismatch_at_least_15ml"] else no}. Affected side:
{html.escape(str(lesions.get("affected_side")))}; {core_text}.{core_note}</p>
{_profile_table(lesions)}
{section["lesions"]}
<h2>Perfusion maps</h2>
<p class="note">Units: CBF mL/100 g/min, CBV mL/100 g, MTT, TTP (from the first frame) and Tmax s.</p>
{section["maps"]}
{"<h2>Uncertainty (CNN)</h2>" + UNCERTAINTY_NOTE + section["uncertainty"] if section["uncertainty"] else ""}
{"<h2>Arterial input and venous output</h2>" + section["curves"] if section["curves"] else ""}
<h2>Quality control</h2>
{qc_html}
<h2>Method and provenance</h2>
{_network_line(provenance)}
<p>Total time {seconds.get("total", float("nan")):.1f} s.</p>
<details><summary>provenance.json</summary><pre>{prov_text}</pre></details>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(body, encoding="utf-8")
    return path
