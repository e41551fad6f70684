"""CNN inference and training throughput (``make bench``).

Inference: the bundled CT weights (random weights of the same architecture when none are bundled)
on a 512×512×16×89 CT phantom study, against the conventional oSVD pipeline on the same study —
both without motion correction, which is the same shared step for both (≈ 33 s, see
conventional.py). Target on 2 cores: ≤ 20 s and faster than oSVD. Training: samples/s of the
bundled architecture at Gava's 128² pre-training resolution, batch 8, and peak memory. The CNN's
time includes its shift-consistency self-check (``perfnet.inference.consistency``), also reported
apart, as is the input QC's late-bolus measure (:func:`perfnet.qc.late_peak_ml`, in both times).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _memory import measured_analysis, peak_memory

from perfnet import qc
from perfnet.conventional.pipeline import AnalysisOptions
from perfnet.errors import PerfnetInputError
from perfnet.inference import predict
from perfnet.inference.weights import bundled_weights, load_weights, save_weights
from perfnet.models import build_model, masked_mse
from perfnet.phantom import PhantomConfig, simulate_study


def _weights(tmp: Path) -> tuple[Path, str]:
    try:
        return bundled_weights("CT"), "bundled CT weights"
    except PerfnetInputError:
        maps = ["cbf", "cbv", "mtt", "tmax", "ttp"]
        kwargs = {"in_channels": 80, "out_channels": 5, "width": 16}
        config = {
            "model": "unet",
            "model_kwargs": kwargs,
            "maps": maps,
            "modality": "CT",
            "frame_interval": 1.0,
            "frames": 80,
            "pixel_mm": 1.8,
            "align_lead_s": 6.0,
            "input_scale": 20.0,
            "target_mean": dict.fromkeys(maps, 0.0),
            "target_sd": dict.fromkeys(maps, 1.0),
        }
        return save_weights(tmp / "random.pt", build_model("unet", **kwargs), config), "random weights"


def main() -> None:
    import tempfile

    print("cnn: 512x512x16x89 CT phantom (simulation not timed)", flush=True)
    cfg = PhantomConfig.draw(
        2, "CT", matrix=512, slices=16, frames=89, frame_interval_s=1.0, timing="uniform", motion=False
    )
    study = simulate_study(cfg)
    series = study.series
    del study
    with tempfile.TemporaryDirectory() as tmp:
        path, what = _weights(Path(tmp))
        predict(series, path, device="cpu")  # warm-up (first-call allocations, thread pools)
        with peak_memory() as m:
            maps = predict(series, path, device="cpu")
        cnn_s = m["seconds"]
        print(
            f"  CNN inference ({what})     {cnn_s:6.1f} s  process peak {m['peak_gb']:4.2f} GB"
            f"  target ≤ 20 s: {'met' if cnn_s <= 20 else 'MISSED'}",
            flush=True,
        )
        with peak_memory() as m0:
            predict(series, path, device="cpu", consistency=False)
        print(
            f"  of which the shift-consistency check (two more passes, one view each):"
            f" {cnn_s - m0['seconds']:.1f} s; without it {m0['seconds']:.1f} s"
            f" (with / without {cnn_s / m0['seconds']:.2f})",
            flush=True,
        )
        start = time.perf_counter()
        late = qc.late_peak_ml(series, maps.brain_mask, baseline_end=8)  # the baseline's length: timing only
        print(
            f"  of which the late_bolus input measure (shared by every method): "
            f"{time.perf_counter() - start:.1f} s ({late:.0f} mL late)",
            flush=True,
        )
        result, m, steps = measured_analysis(series, AnalysisOptions(method="osvd", motion_correction=False))
        print(
            f"  oSVD pipeline                {m['seconds']:6.1f} s  process peak {m['peak_gb']:4.2f} GB"
            f"  ({steps})\n  CNN / oSVD time ratio {cnn_s / m['seconds']:.2f}"
            f" ({'faster' if cnn_s < m['seconds'] else 'SLOWER'})",
            flush=True,
        )
        del maps, result
        model, config = load_weights(path)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    frames = int(config["frames"])
    x = torch.randn(8, frames, 128, 128)
    y = torch.randn(8, len(config["maps"]), 128, 128)
    mask = torch.ones(8, 1, 128, 128, dtype=torch.bool)
    times = []
    with peak_memory() as m:
        for _ in range(6):
            start = time.perf_counter()
            opt.zero_grad()
            loss = masked_mse(model(x), y, mask)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
    step = float(np.median(times[1:]))
    params = sum(p.numel() for p in model.parameters())
    print(
        f"  training at 128², batch 8: {step:.3f} s/step = {8 / step:.1f} samples/s"
        f" (model {params / 1e6:.2f} M parameters, {params * 4 / 1e6:.1f} MB;"
        f" process peak {m['peak_gb']:.2f} GB)",
        flush=True,
    )


if __name__ == "__main__":
    main()
