"""The U-Net's core head (issue 12.3's lesion head): it never changes the maps, it is fitted on a
frozen backbone with a Dice + cross-entropy loss, and when weights carry one, `analyze --method
cnn` takes the core from it and says so."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from perfnet.constants import CORE_PROBABILITY
from perfnet.errors import PerfnetInputError
from perfnet.inference import predict
from perfnet.inference.weights import bundled_weights, load_weights, save_weights
from perfnet.lesions import PRESETS, segment_lesions
from perfnet.models import UNet, build_model
from perfnet.training.core_head import CoreSamples, dice_per_study, fit_core_head
from phantoms import small_study


def _backbone(core_head: bool, hidden: int = 16) -> UNet:
    torch.manual_seed(0)
    model = UNet(in_channels=6, out_channels=2, width=8, stages=2, core_head=core_head, core_hidden=hidden)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 6, 24, 24))
    return model.eval()


def test_core_head_leaves_the_maps_bit_identical_and_its_two_forms_agree() -> None:
    plain = _backbone(False)
    headed = UNet(in_channels=6, out_channels=2, width=8, stages=2, core_head=True, core_hidden=16).eval()
    missing, unexpected = headed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("core_") for k in missing)
    x = torch.randn(3, 6, 21, 19)
    brain = torch.zeros(3, 21, 19, dtype=torch.bool)
    brain[:, 4:17, 3:15] = True
    brain[2] = False  # a slice without brain: relative maps taken against 0
    with torch.no_grad():
        assert torch.equal(headed(x), plain(x))
        features = headed.decode(x)[..., :21, :19]
        value = headed.head(features)
        inputs = headed.core_inputs(features, value, brain)
        prob = headed.core_probability(inputs)
        vectors = torch.sigmoid(headed.core_logit_of_vectors(inputs.permute(0, 2, 3, 1).reshape(-1, 12)))
    assert inputs.shape == (3, 8 + 2 * 2, 21, 19) and prob.shape == (3, 21, 19)
    median = value[0][:, brain[0]].median(dim=1).values
    torch.testing.assert_close(inputs[0, 10:], value[0] - median[:, None, None])
    torch.testing.assert_close(inputs[2, 10:], value[2])
    torch.testing.assert_close(vectors, prob.reshape(-1), rtol=1e-5, atol=1e-6)


def test_head_fitted_on_a_frozen_backbone_finds_a_ratio_defined_core() -> None:
    """Synthetic samples whose core is 'channel 0 more than 1.5 below its study's median'; the head
    (only its parameters) learns it to Dice > 0.9 on held-out studies; the backbone is untouched."""
    model = _backbone(True, hidden=16)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("core_")}
    gen = torch.Generator().manual_seed(1)

    def studies(count: int) -> CoreSamples:
        parts = []
        for _ in range(count):
            x = torch.randn(4000, 12, generator=gen)
            shift = 3 * torch.rand(1, generator=gen)  # each study's own level: only the ratio is core
            x[:, 0] += shift
            x[:, 10] = x[:, 0] - x[:, 0].median()  # the relative channel, as core_inputs makes it
            core = x[:, 10] < -1.5
            parts.append(CoreSamples(x.half(), core, torch.zeros(4000, dtype=torch.long)))
        return CoreSamples.cat(parts)

    train, test = studies(12), studies(4)
    history = fit_core_head(model, train, steps=300, lr=2e-2, batch=16384)
    assert history[-1] < history[0]
    dice = dice_per_study(model, test)
    assert dice.shape == (4,) and float(np.nanmean(dice)) > 0.9, dice
    for k, v in model.state_dict().items():
        if not k.startswith("core_"):
            assert torch.equal(v, before[k]), k


@pytest.fixture(scope="module")
def headed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled CT network with a core head that calls everything core (bias +20) or nothing
    (bias −20): the plumbing, not the head's skill (the fitted head: tests/models/test_bundled.py)."""
    folder = tmp_path_factory.mktemp("core-head")
    old, config = load_weights(bundled_weights("CT"))
    out = {}
    for name, bias in (("all", 20.0), ("none", -20.0)):
        cfg = config | {"model_kwargs": config["model_kwargs"] | {"core_head": True, "core_hidden": 0}}
        cfg = cfg | {"core_head": {"threshold": 0.5, "source": f"a test head ({name})"}}
        model = build_model(cfg["model"], **cfg["model_kwargs"])
        model.load_state_dict(
            {k: v for k, v in old.state_dict().items() if not k.startswith("core_")}, strict=False
        )
        with torch.no_grad():
            model.core_head[0].weight.zero_()
            model.core_head[0].bias.fill_(bias)
        out[name] = save_weights(folder / f"{name}.pt", model, cfg)
    return out


def test_predict_writes_the_core_probability_and_keeps_the_maps(headed: dict[str, Path]) -> None:
    series = small_study(5454, "CT", matrix=64, slices=3, lesion="core", motion=False).series
    run = {"device": "cpu", "flips": True, "skip_frames": 0, "consistency": False}
    plain = predict(series, bundled_weights("CT"), **run)
    maps = predict(series, headed["all"], **run)
    for name in ("cbf", "cbv", "mtt", "tmax", "ttp", "tmax_uncertainty"):
        np.testing.assert_array_equal(maps[name], plain[name])
    prob = maps[CORE_PROBABILITY]
    assert CORE_PROBABILITY not in plain.maps
    assert prob.shape == maps["cbf"].shape and np.allclose(prob[maps.brain_mask], 1.0, atol=1e-6)
    assert (prob[~maps.brain_mask] == 0).all()
    assert maps.provenance["core_head"]["source"] == "a test head (all)"
    with pytest.raises(PerfnetInputError, match="core head"):
        predict(series, [headed["all"], bundled_weights("CT")], **run)
    both = predict(series, [headed["all"], headed["none"]], **run)  # an ensemble: the mean probability
    np.testing.assert_allclose(both[CORE_PROBABILITY][maps.brain_mask], 0.5, atol=1e-6)


def test_analyze_takes_the_core_from_the_head_and_says_so(headed: dict[str, Path]) -> None:
    from perfnet.study import analyze

    study = small_study(5454, "CT", matrix=64, slices=3, lesion="core", motion=False)
    everything = analyze(study.series, "cnn", weights=headed["all"], motion_correction=False)
    nothing = analyze(study.series, "cnn", weights=headed["none"], motion_correction=False)
    for result in (everything, nothing):
        assert result.lesions["core_source"] == "cnn core head"
        assert "core head's probability ≥ 0.5" in result.lesions["core_rule"]
    volumes = everything.lesions["volumes_ml"]
    assert volumes["hypoperfused"] > 1 and volumes["core"] == pytest.approx(volumes["hypoperfused"])
    assert nothing.lesions["volumes_ml"]["core"] == 0
    with tempfile.TemporaryDirectory() as tmp:  # the report shows the probability the core came from
        everything.save(Path(tmp) / "out")
        assert (Path(tmp) / "out" / "core_probability.nii.gz").is_file()
        assert (Path(tmp) / "out" / "figures" / "core_probability.png").is_file()
        assert 'alt="core_probability"' in (Path(tmp) / "out" / "report.html").read_text()
    rule = analyze(study.series, "cnn", motion_correction=False)  # the bundled weights: the rule
    assert rule.lesions["core_source"] == "perfusion" and "core head" not in rule.lesions["core_rule"]


def test_segment_lesions_reads_the_probability_inside_the_hypoperfused_tissue() -> None:
    shape = (40, 40, 3)
    brain = np.zeros(shape, bool)
    brain[4:36, 4:36] = True
    tmax = np.where(np.arange(40)[:, None, None] < 20, 9.0, 1.0) * np.ones(shape)
    cbf = np.full(shape, 50.0)
    prob = np.zeros(shape, np.float32)
    prob[8:16, 8:16] = 0.9  # inside the hypoperfused half
    prob[24:32, 8:16] = 0.9  # outside it: not core
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    result = segment_lesions(cbf, tmax, brain, affine, PRESETS["rapid"], core_probability=prob)
    # the square (its corners rounded by the clean-up's opening), nothing outside the Tmax > 6 s half
    assert result.core[9:15, 9:15].all() and 0.8 * 192 <= result.core.sum() <= 192
    assert not result.core[20:].any()
    assert not segment_lesions(
        cbf, tmax, brain, affine, PRESETS["rapid"], core_probability=prob * 0.5
    ).core.any()
