"""Training (Lightning, CPU), checkpoints, weights files and CNN inference on odd shapes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perfnet.cli import main
from perfnet.errors import PerfnetInputError
from perfnet.inference import predict
from perfnet.inference.inputs import model_size, prepare_input, reflect_times, resize_slices
from perfnet.inference.weights import load_weights, save_weights, weights_config
from perfnet.io.types import PerfusionSeries
from perfnet.models import build_model
from perfnet.phantom import PhantomConfig, simulate_study
from perfnet.phantom.cohort import write_study
from perfnet.training.run import train
from tiny_training import tiny_config as _tiny_config

TINY = {"matrix": 48, "slices": 3, "frames": 30, "coverage_mm": 30.0, "motion": False}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    for i in range(4):
        cfg = PhantomConfig.draw(700 + i, "CT", **TINY)
        write_study(simulate_study(cfg), root / f"sub-{i:04d}" / "ses-01", f"sub-{i:04d}")
    return root


def _metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_tiny_training_run_loss_falls_and_writes_run_folder(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    plan = train(cohort, run, _tiny_config(), resume=False)
    rows = _metrics(run / "fold-0" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(6))
    assert [r["resolution"] for r in rows] == ["pretrain"] * 2 + ["fine-tune"] * 4
    losses = [float(r["train_loss"]) for r in rows]
    assert min(losses[-2:]) < 0.8 * losses[0], losses
    saved = json.loads((run / "plan.json").read_text())
    assert saved["splits"][0]["validation_subjects"] and saved["splits"][0]["training_subjects"]
    assert set(saved["splits"][0]["validation_subjects"]).isdisjoint(saved["splits"][0]["training_subjects"])
    assert saved["config"]["loss"] == "mse" and saved["folds"]["0"]["epochs"] == 6
    assert 0 <= plan["cross_validation"]["val_tmax_maec"] < 20
    assert 0 <= plan["cross_validation"]["val_dice_core"] <= 1  # the slice-wise rCBF < 30 % core
    with (run / "fold-0" / "augmentations.csv").open() as f:
        draws = list(csv.DictReader(f))
    assert len(draws) == 6 * saved["folds"]["0"]["training_slices"]
    assert all(-5 <= int(d["shift"]) <= 30 for d in draws)
    assert len({d["shift"] for d in draws}) > 3  # drawn, not constant
    _, config = load_weights(run / "weights.pt")
    assert config["model"] == "unet" and config["frames"] == 24 and config["modality"] == "CT"
    assert config["bolus_rule"] == "early-peak"  # TrainConfig's default, recorded for inference
    assert config["training"]["validation"]["val_tmax_maec"] == pytest.approx(
        plan["folds"]["0"]["validation"]["val_tmax_maec"]
    )
    # the training domain: every training study described by inference's own preprocessing
    domain = config["domain"]
    assert domain["studies"] == config["training"]["training_studies"] == 2
    lo, hi = domain["head_motion_mm"]
    assert 0 <= lo <= hi < 1.0  # static phantoms: the correction finds (almost) no motion
    assert domain["max_frame_interval_s"][1] >= domain["max_frame_interval_s"][0] > 0
    assert domain["tissue_cnr"][0] > 0


def test_resume_continues_from_the_last_checkpoint(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(cohort, run, _tiny_config(epochs=2), resume=True)
    first = _metrics(run / "fold-0" / "metrics.csv")
    train(cohort, run, _tiny_config(epochs=3), resume=True)  # more epochs: resumes at epoch 2
    rows = _metrics(run / "fold-0" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert rows[:2] == first
    with pytest.raises(PerfnetInputError, match="other settings"):
        train(cohort, run, _tiny_config(epochs=3, width=8), resume=True)


def test_weights_round_trip_and_refuse_pickled_code(tmp_path: Path) -> None:
    model = build_model("unet", in_channels=10, out_channels=2, width=4).eval()
    config = {
        "model": "unet",
        "model_kwargs": {"in_channels": 10, "out_channels": 2, "width": 4},
        "maps": ["cbf", "tmax"],
        "frame_interval": 1.0,
        "frames": 10,
        "input_scale": 2.0,
        "target_mean": {"cbf": 40.0, "tmax": 2.0},
        "target_sd": {"cbf": 10.0, "tmax": 3.0},
    }
    path = save_weights(tmp_path / "w.pt", model, config)
    loaded, cfg = load_weights(path)
    x = torch.randn(2, 10, 17, 23)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert cfg == config
    # a file holding a pickled object (arbitrary code on unpickling) is refused, not executed
    evil = tmp_path / "evil.pt"
    torch.save({"format": "perfnet-weights-1", "config": config, "state_dict": {}, "x": _Evil()}, evil)
    with pytest.raises(PerfnetInputError, match="not a loadable"):
        load_weights(evil)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(PerfnetInputError, match=r"cut\.pt"):
        load_weights(truncated)
    # the config alone (routing reads a network's training domain so) is checked the same way
    assert weights_config(path) == config
    for bad in (evil, truncated):
        with pytest.raises(PerfnetInputError, match=bad.name.replace(".", r"\.")):
            weights_config(bad)


class _Evil:
    def __reduce__(self):  # pragma: no cover - must never run
        return (print, ("unpickled!",))


def _weights_for(tmp_path: Path, model: str, frames: int, pixel_mm: float | None) -> Path:
    maps = ["cbf", "cbv", "mtt", "tmax", "ttp"]
    kwargs = (
        {"in_channels": frames, "out_channels": 5, "width": 4}
        if model == "unet"
        else {"out_maps": 5, "width": 8, "code": 8}
    )
    torch.manual_seed(0)
    net = build_model(model, **kwargs)
    config = {
        "model": model,
        "model_kwargs": kwargs,
        "maps": maps,
        "modality": "CT",
        "frame_interval": 1.5,
        "frames": frames,
        "pixel_mm": pixel_mm,
        "align_lead_s": 4.0,
        "input_scale": 20.0,
        "target_mean": dict.fromkeys(maps, 5.0),
        "target_sd": dict.fromkeys(maps, 2.0),
    }
    return save_weights(tmp_path / f"{model}.pt", net, config)


@pytest.mark.parametrize(("model", "pixel_mm"), [("unet", None), ("unet", 3.1), ("temporal", 2.7)])
def test_inference_keeps_any_grid(tmp_path: Path, model: str, pixel_mm: float | None) -> None:
    cfg = PhantomConfig.draw(
        31, "CT", matrix=45, slices=3, frames=23, coverage_mm=30.0, timing="jittered", motion=False
    )
    series = simulate_study(cfg).series
    series = PerfusionSeries(
        series.data[:, :37], series.times, series.affine, "CT", None, dict(series.meta)
    )  # 45 × 37: odd, not a multiple of the U-Net's stride
    maps = predict(series, _weights_for(tmp_path, model, 19, pixel_mm), device="cpu", batch_slices=2)
    for name in ("cbf", "cbv", "mtt", "tmax", "ttp"):
        assert maps[name].shape == (45, 37, 3)
        assert np.isfinite(maps[name]).all()
        assert (maps[name][~maps.brain_mask] == 0).all()
    if model == "temporal":
        u = maps["tmax_uncertainty"]
        assert u.shape == (45, 37, 3) and (u[maps.brain_mask] > 0).all()
    else:
        assert "tmax_uncertainty" not in maps.maps
    assert maps.method == "cnn" and maps.provenance["time_grid"]["frames"] == 19


def test_time_grid_starts_before_the_bolus_and_reflects_past_the_end() -> None:
    cfg = PhantomConfig.draw(5, "CT", matrix=48, slices=3, frames=40, arrival_s=12.0, motion=False)
    series = simulate_study(cfg, noise=False).series
    inp = prepare_input(series, 1.0, 80, align_lead_s=5.0)
    assert inp.offset_s == pytest.approx(12.0 - 5.0, abs=2.0)
    assert inp.grid[0] == 0.0 and inp.curves.shape[3] == 80
    assert reflect_times(np.array([0.0, 5.0, 12.0, 25.0]), 10.0).tolist() == [0.0, 5.0, 8.0, 5.0]
    assert model_size((512, 512), (0.45, 0.45), 1.8) == (128, 128)
    x = torch.ones(2, 3, 64, 48)
    assert resize_slices(x, (16, 12)).shape == (2, 3, 16, 12)
    assert torch.allclose(resize_slices(x, (80, 60)), torch.ones(2, 3, 80, 60))


def test_cli_train_and_analyze_cnn(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    args = ["train", str(cohort), "--out", str(run), "--width", "4", "--frames", "16", "--epochs", "1"]
    args += ["--pretrain-epochs", "0", "--crop", "32", "--folds", "2", "--fold", "1", "--accelerator", "cpu"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(summary["weights"]).is_file() and "val_tmax_maec" in summary["validation"]
    series = next(cohort.rglob("*_ctp.nii.gz"))
    out = tmp_path / "maps"
    assert (
        main(
            [
                "analyze",
                str(series),
                "--out",
                str(out),
                "--method",
                "cnn",
                "--weights",
                str(run / "weights.pt"),
            ]
        )
        == 0
    )
    written = sorted(p.name for p in out.iterdir())
    maps = ["cbf", "cbv", "mtt", "tmax", "ttp", "brain_mask", "core", "hypoperfused", "penumbra"]
    others = ["lesions.json", "provenance.json", "report.html", "figures", ".perfnet-output.json"]
    assert written == sorted([*(f"{m}.nii.gz" for m in maps), *others])
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["method"] == "cnn" and prov["motion"]["reference_frame"] == 0
    # conventional methods take no weights; a missing weights file is a one-line input error
    assert (
        main(["analyze", str(series), "--out", str(tmp_path / "x"), "--weights", str(run / "weights.pt")])
        == 2
    )
    assert (
        main(
            ["analyze", str(series), "--out", str(tmp_path / "y"), "--method", "cnn", "--weights", "nope.pt"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "nope.pt: weights file not found" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_temporal_training_validates_the_final_weights(cohort: Path, tmp_path: Path) -> None:
    cfg = _tiny_config(model="temporal", width=4, model_kwargs={"code": 8}, epochs=3, val_every=2, crop=16)
    plan = train(cohort, tmp_path / "run", cfg, resume=False)
    rows = _metrics(tmp_path / "run" / "fold-0" / "metrics.csv")
    # a fixed header: epochs without validation leave its columns empty
    assert [r["val_tmax_maec"] == "" for r in rows] == [True, False, True]
    assert all(r["train_loss"] for r in rows)
    val = plan["folds"]["0"]["validation"]
    assert plan["config"]["loss"] == "laplace" and 0 <= val["val_tmax_maec"] < 20  # validated at the end


def test_log_targets_round_trip_and_weigh_errors_by_ratio() -> None:
    from perfnet.inference.targets import from_model, to_model, window_to_model

    offsets = {"cbf": 1.0}
    values = np.array([0.0, 2.0, 5.0, 50.0, 60.0])
    back = from_model(to_model(values, "cbf", offsets), "cbf", offsets)
    np.testing.assert_allclose(back, values, atol=1e-12)
    tensor = torch.tensor(values)
    torch.testing.assert_close(from_model(to_model(tensor, "cbf", offsets), "cbf", offsets), tensor)
    assert to_model(values, "tmax", offsets) is values  # not listed: linear
    logs = to_model(values, "cbf", offsets)
    # a core read as 5 instead of 2 costs log(6/3) ≈ 0.69; grey matter 60 for 50 only log(61/51) ≈ 0.18
    assert logs[2] - logs[1] == pytest.approx(np.log(2.0))
    assert logs[4] - logs[3] == pytest.approx(np.log(61 / 51))
    assert window_to_model((0.0, 80.0), "cbf", offsets) == pytest.approx((0.0, np.log(81.0)))
    assert window_to_model((0.0, 40.0), "tmax", offsets) == (0.0, 40.0)


def test_fine_tuning_from_a_weights_file(cohort: Path, tmp_path: Path) -> None:
    import hashlib

    first = tmp_path / "first"
    train(cohort, first, _tiny_config(epochs=3, log_maps=[]), resume=False)
    second = tmp_path / "second"
    init = first / "weights.pt"
    train(cohort, second, _tiny_config(epochs=2, init=str(init), log_maps=["cbf"], thin=[1, 4]), resume=False)
    _, old = load_weights(init)
    _, new = load_weights(second / "weights.pt")
    assert old["log_offsets"] == {} and new["log_offsets"] == {"cbf": 1.0}
    assert new["input_scale"] == old["input_scale"]  # the features were learnt at that scale
    assert new["target_mean"]["tmax"] == old["target_mean"]["tmax"]  # same domain: kept
    assert 1.5 < new["target_mean"]["cbf"] < 5.0  # mean of log(CBF + 1) over brain, CBF ≈ 10…90
    assert new["training"]["init"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    # a fine-tuned model has seen the first run's studies and its own
    assert new["domain"]["studies"] == old["domain"]["studies"] + new["training"]["training_studies"]
    rows = _metrics(second / "fold-0" / "metrics.csv")
    assert [r["resolution"] for r in rows] == ["fine-tune"] * 2  # no second pre-training
    with (second / "fold-0" / "augmentations.csv").open() as f:
        assert {d["thin"] for d in csv.DictReader(f)} == {"1", "4"}  # fewer-frames draws, logged
    first_rows = _metrics(first / "fold-0" / "metrics.csv")
    assert float(rows[0]["val_mae_tmax"]) < float(first_rows[0]["val_mae_tmax"])  # a warm start
    series = simulate_study(PhantomConfig.draw(711, "CT", **TINY)).series
    maps = predict(series, second / "weights.pt", device="cpu")
    assert np.isfinite(maps["cbf"]).all() and maps["cbf"].min() >= 0 and maps["cbf"].max() > 5
    with pytest.raises(PerfnetInputError, match=r"do not fit this run.*width"):
        train(cohort, tmp_path / "third", _tiny_config(init=str(init), width=8), resume=False)
    assert not (tmp_path / "third").exists()  # checked before any output is written


def test_fine_tuning_with_frozen_norm_keeps_the_batch_norm_statistics(cohort: Path, tmp_path: Path) -> None:
    """``freeze_norm``: the batch-norm running statistics of the init file are kept bit for bit while
    the weights (batch-norm scale and shift included) train; without it the statistics move."""
    first = tmp_path / "first"
    train(cohort, first, _tiny_config(epochs=3), resume=False)
    init = first / "weights.pt"
    old = load_weights(init)[0].state_dict()
    stats = [k for k in old if k.endswith(("running_mean", "running_var"))]
    trained = [k for k in old if k.endswith("weight") and k not in stats]
    assert stats and trained
    for freeze in (True, False):
        run = tmp_path / f"freeze-{freeze}"
        train(cohort, run, _tiny_config(epochs=1, init=str(init), freeze_norm=freeze), resume=False)
        new = load_weights(run / "weights.pt")[0].state_dict()
        same = [torch.equal(new[k], old[k]) for k in stats]
        assert all(same) if freeze else not any(same), (freeze, same)
        assert not any(torch.equal(new[k], old[k]) for k in trained)  # every layer trained
        assert json.loads((run / "plan.json").read_text())["config"]["freeze_norm"] is freeze


def test_frame_thinning_keeps_every_kth_frame_and_interpolates() -> None:
    from perfnet.training.dataset import thin_frames

    x = torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0, 25.0, 36.0])[:, None]  # (T, 1)
    out = thin_frames(x, 2, 0.0)[:, 0]  # keeps frames 0, 2, 4, 6
    torch.testing.assert_close(out, torch.tensor([0.0, 2.0, 4.0, 10.0, 16.0, 26.0, 36.0]))
    out = thin_frames(x, 3, 0.5)[:, 0]  # phase 0.5·3 → starts at frame 1: keeps 1, 4; held outside
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 6.0, 11.0, 16.0, 16.0, 16.0]))
    torch.testing.assert_close(thin_frames(x, 1), x)


def test_log_domain_weights_invert_values_and_scale_uncertainty(tmp_path: Path) -> None:
    """The same network read as linear and as log-CBF weights: CBF = exp(linear) − offset, and the
    Laplace scale maps to CBF units by the delta method, b · (CBF + offset)."""
    cfg = PhantomConfig.draw(31, "CT", matrix=40, slices=2, frames=25, coverage_mm=20.0, motion=False)
    series = simulate_study(cfg).series
    linear_path = _weights_for(tmp_path, "temporal", 19, 2.7)
    net, config = load_weights(linear_path)
    config["target_mean"]["cbf"] = 2.0  # exp(2 ± …) − 1: inside CBF's output limits
    linear_path = save_weights(tmp_path / "linear.pt", net, config)
    log_path = save_weights(tmp_path / "log.pt", net, config | {"log_offsets": {"cbf": 1.0}})
    linear = predict(series, linear_path, device="cpu")
    logged = predict(series, log_path, device="cpu")
    brain = logged.brain_mask
    np.testing.assert_allclose(logged["cbf"][brain], np.exp(linear["cbf"][brain]) - 1.0, rtol=1e-4)
    np.testing.assert_allclose(
        logged["cbf_uncertainty"][brain],
        linear["cbf_uncertainty"][brain] * (logged["cbf"][brain] + 1.0),
        rtol=1e-4,
    )
    np.testing.assert_array_equal(logged["tmax"], linear["tmax"])  # other maps untouched


class _Toy(torch.nn.Module):
    """A per-pixel linear map of the frames (a 1×1 convolution): the smallest network there is."""

    def __init__(self, frames: int, maps: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(frames, 2 * maps, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, log_scale = self.conv(x).chunk(2, dim=1)
        return value, torch.nn.functional.softplus(log_scale) + 1e-3


def test_a_new_network_is_one_registration(cohort: Path, tmp_path: Path) -> None:
    """Registering a network is all training and inference need: it trains (loss falls with its
    registered Laplace loss), its weights load by name and predict maps with an uncertainty."""
    from perfnet.models import NETWORKS, NetworkSpec, register_network

    spec = NetworkSpec(
        "toy1x1",
        _Toy,
        kwargs=lambda frames, maps, width: {"frames": frames, "maps": maps},
        forward=lambda model, x, times, bolus: model(x),
        loss="laplace",
        crop=32,
        pretrain=False,
    )
    register_network(spec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_network(spec)
        run = tmp_path / "run"
        train(cohort, run, _tiny_config(model="toy1x1", epochs=4, pretrain_epochs=0, lr=1e-2), resume=False)
        rows = _metrics(run / "fold-0" / "metrics.csv")
        losses = [float(r["train_loss"]) for r in rows]
        assert losses[-1] < losses[0], losses
        saved = json.loads((run / "plan.json").read_text())
        assert saved["config"]["loss"] == "laplace" and saved["config"]["crop"] == 32
        series = simulate_study(PhantomConfig.draw(31, "CT", **TINY)).series
        maps = predict(series, run / "weights.pt", device="cpu")
        u = maps["tmax_uncertainty"]
        assert u.shape == series.spatial_shape and (u[maps.brain_mask] > 0).all()
        assert np.isfinite(maps["tmax"]).all()
    finally:
        NETWORKS.pop("toy1x1", None)


def test_low_flow_weight_counts_the_core_more() -> None:
    """``--low-flow-weight W``: voxels whose target CBF is below 40 % of their slice's brain median
    weigh 1 + W in the MSE (log-domain targets read back in mL/100 g/min); the rest of the brain
    1, outside it 0; a slice without brain has no low-flow voxel."""
    from perfnet.inference.targets import to_model
    from perfnet.training.task import LOW_FLOW_FRACTION, PerfusionTask

    assert LOW_FLOW_FRACTION == 0.4
    kwargs = {"in_channels": 6, "out_channels": 2, "width": 4, "stages": 2}
    mean, sd, offsets = {"cbf": 3.0, "tmax": 2.0}, {"cbf": 0.5, "tmax": 3.0}, {"cbf": 1.0}
    cbf = torch.full((3, 8, 8), 50.0)
    cbf[0, :2, :2] = 10.0  # 20 % of the slice's median 50: low flow
    cbf[0, 2, 2] = 25.0  # 50 %: not
    cbf[1, :, :2] = 19.0  # a quarter of the slice at 38 % of the median: low flow
    cbf[2] = 5.0  # no brain on this slice
    mask = torch.ones(3, 8, 8, dtype=torch.bool)
    mask[0, 7, 7] = False
    mask[2] = False
    y = torch.stack([(to_model(cbf, "cbf", offsets) - mean["cbf"]) / sd["cbf"], torch.zeros(3, 8, 8)], dim=1)
    m = mask[:, None].float()
    plain = PerfusionTask("unet", kwargs, ["cbf", "tmax"], mean, sd, list(range(6)), log_offsets=offsets)
    assert torch.equal(plain._low_flow_weighted(y, m), m)  # no weight: the plain mask
    task = PerfusionTask(
        "unet", kwargs, ["cbf", "tmax"], mean, sd, list(range(6)), log_offsets=offsets, low_flow_weight=4.0
    )
    w = task._low_flow_weighted(y, m)[:, 0]
    assert (w[0, :2, :2] == 5.0).all() and w[0, 2, 2] == 1.0 and w[0, 7, 7] == 0.0
    assert float(w[0].sum()) == 4 * 5 + (64 - 4 - 1)
    assert (w[1, :, :2] == 5.0).all() and (w[1, :, 2:] == 1.0).all()
    assert (w[2] == 0.0).all()
    batch = {"x": torch.randn(3, 6, 8, 8), "y": y, "mask": mask}
    assert torch.isfinite(task._loss(batch)[0])


def test_low_flow_weight_also_weighs_the_laplace_loss() -> None:
    """Under the temporal network's Laplace NLL (β-NLL too) the low-flow weight multiplies each
    voxel's likelihood term as it does the MSE's: the loss is the weighted mean."""
    from perfnet.inference.targets import to_model
    from perfnet.models.losses import laplace_nll_parts
    from perfnet.training.task import PerfusionTask

    kwargs = {"in_channels": 6, "out_channels": 2, "width": 4, "stages": 2}
    mean, sd, offsets = {"cbf": 3.0, "tmax": 2.0}, {"cbf": 0.5, "tmax": 3.0}, {"cbf": 1.0}
    cbf = torch.full((2, 8, 8), 50.0)
    cbf[0, :3, :3] = 8.0  # low flow
    mask = torch.ones(2, 8, 8, dtype=torch.bool)
    y = torch.stack([(to_model(cbf, "cbf", offsets) - mean["cbf"]) / sd["cbf"], torch.zeros(2, 8, 8)], dim=1)
    value, scale = torch.randn(2, 2, 8, 8), torch.rand(2, 2, 8, 8) + 0.5
    batch = {"x": torch.randn(2, 6, 8, 8), "y": y, "mask": mask}
    for beta in (0.0, 1.0):
        losses = []
        for w in (0.0, 4.0):
            task = PerfusionTask(
                "unet", kwargs, ["cbf", "tmax"], mean, sd, list(range(6)), loss="laplace",
                log_offsets=offsets, low_flow_weight=w, nll_beta=beta,
            )  # fmt: skip
            task.forward = lambda b: (value, scale)  # type: ignore[method-assign]
            weighted = task._low_flow_weighted(y, mask[:, None].float())
            total, weight = laplace_nll_parts(value, scale, y, weighted, task.windows, beta=beta)
            losses.append(float(task._loss(batch)[0]))
            assert losses[-1] == pytest.approx(float(total / weight), rel=1e-6)
        assert losses[0] != pytest.approx(losses[1])  # the weight changes the loss


def test_slice_core_is_the_slice_wise_rcbf_rule() -> None:
    """``val_dice_core``'s core: CBF below 30 % of the median CBF inside the slice's brain; none on a
    slice without brain."""
    from perfnet.training.task import CORE_FRACTION, slice_core

    assert CORE_FRACTION == 0.3
    cbf = torch.full((2, 6, 6), 40.0)
    cbf[0, :2, :2] = 11.0  # 27.5 % of 40: core
    cbf[0, 2, 2] = 13.0  # 32.5 %: not
    cbf[0, 5, 5] = 1.0  # outside the brain: not
    inside = torch.ones(2, 6, 6, dtype=torch.bool)
    inside[0, 5, 5] = False
    inside[1] = False
    core = slice_core(cbf, inside)
    assert int(core[0].sum()) == 4 and core[0, :2, :2].all() and not core[1].any()
