"""The HTML report: self-contained, and rendered by headless Chromium into a non-blank page."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from perfnet.cli import main
from perfnet.io import save_series_nifti
from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.preprocess.mask import csf_mask


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    cfg = PhantomConfig.draw(41, "CT", matrix=96, slices=6, coverage_mm=60.0, lesion="core", motion=False)
    series = save_series_nifti(simulate_study(cfg).series, root / "ctp.nii.gz", dtype=np.int16)
    assert main(["analyze", str(series), "--out", str(root / "out"), "--method", "csvd"]) == 0
    return root / "out"


def test_report_is_self_contained(analysed: Path) -> None:
    text = (analysed / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,', text)
    assert len(images) == 7  # overlay, 5 maps, AIF/VOF
    assert not re.search(r'src="(?!data:)', text) and "<link" not in text  # nothing fetched
    for needle in ("Lesion volumes", "DEFUSE-3", "mL/100 g/min", "Quality control", "provenance.json"):
        assert needle in text
    assert sorted(p.name for p in (analysed / "figures").iterdir()) == sorted(
        ["lesion_overlay.png", "tmax.png", "cbf.png", "cbv.png", "mtt.png", "ttp.png", "aif_vof.png"]
    )


def test_csf_is_found_and_left_out_of_the_lesions() -> None:
    cfg = PhantomConfig.draw(42, "CT", matrix=96, slices=6, coverage_mm=60.0, motion=False)
    study = simulate_study(cfg)
    labels = study.truth.labels
    brain = labels > 0
    csf = csf_mask(study.series, brain)
    true_csf = labels == 3  # anatomy.CSF
    parenchyma = study.truth.masks["brain"]
    assert (csf & true_csf).sum() > 0.5 * (true_csf & brain).sum()
    assert (csf & parenchyma).sum() < 0.02 * parenchyma.sum()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(
    _chromium() is None, reason="headless Chromium not installed (Debian: apt install chromium)"
)
def test_report_renders_in_headless_chromium(analysed: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    # offline machines: no background connections, a fresh profile
    cmd += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    cmd += [f"--user-data-dir={tmp_path / 'profile'}"]
    cmd += ["--window-size=1000,1400", f"--screenshot={shot}", (analysed / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "Chromium wrote no screenshot"
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000
    assert pixels.std() > 0.1  # text, tables and images, not a blank page
    dark = (pixels.mean(axis=2) < 0.2).mean()
    assert 0.05 < dark < 0.9  # the black map panels are there


def test_report_names_the_network_and_why_routing_chose_it() -> None:
    """A CNN report says which weights file made the maps (its name only, never the folder: a path
    can name a user) and, where routing by training domain chose a specialist, instead of which
    network and why; conventional methods have no such line."""
    from perfnet.evaluation.report import _network_line

    routed = {
        "weights": "/home/dr-someone/site/perfnet/weights/ct-moving.pt",
        "routed": {"weights": "ct-moving.pt", "instead_of": "ct.pt", "because": "head motion 4.1 mm"},
    }
    line = _network_line(routed)
    assert "<code>ct-moving.pt</code>" in line and "instead of <code>ct.pt</code>" in line
    assert "head motion 4.1 mm" in line and "dr-someone" not in line
    ensemble = _network_line({"weights": ["/a/fold-0.pt", "/a/fold-1.pt"]})
    assert ensemble == "<p>Networks: <code>fold-0.pt</code>, <code>fold-1.pt</code>.</p>"
    assert _network_line({"method": "osvd"}) == ""
    # a slow bolus read on a compressed time axis (perfnet.inference.timescale) says so
    slow = {
        "weights": "/w/mr.pt",
        "time_scale": {"factor": 1.2355, "bolus_rise_s": 22.86, "trained_rise_s": 14.823},
    }
    assert _network_line(slow) == (
        "<p>Network: <code>mr.pt</code>; read on a time axis compressed ×1.24 (the bolus rises in 22.9 s,"
        " the network trained on ≤ 14.8 s) and its maps mapped back.</p>"
    )
    # the gated mode (the default) says why it compressed, or why it did not
    gate = {"healthy_tmax_median_s": 3.43, "late_above_s": 2.3, "compressed": True, "factor": 1.2355}
    assert _network_line(slow | {"time_scale_gate": gate}) == (
        "<p>Network: <code>mr.pt</code>; read on a time axis compressed ×1.24 (the bolus rises in 22.9 s,"
        " the network trained on ≤ 14.8 s) and its maps mapped back, because read as acquired its healthy"
        " tissue's median Tmax was 3.4 s (late above 2.3 s).</p>"
    )
    on_time = gate | {"compressed": False, "healthy_tmax_median_s": 1.6}
    kept = {"weights": "/w/mr.pt", "time_scale_gate": on_time}
    assert _network_line(kept) == (
        "<p>Network: <code>mr.pt</code>; the bolus rises slower than the network trained on, read as"
        " acquired (its healthy tissue's median Tmax 1.6 s, not late: ≤ 2.3 s).</p>"
    )
