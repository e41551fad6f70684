"""The Lightning module: loss, optimiser schedule and validation metrics in the maps' own units."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from perfnet.inference import time_channel
from perfnet.inference.targets import from_model, window_to_model
from perfnet.models import build_model, network_spec
from perfnet.models.losses import laplace_nll_parts, masked_mse_parts

#: Clinically relevant window per map for Hess's importance weighting (Tmax [0, 40] s as in the paper).
WINDOWS = {"tmax": (0.0, 40.0), "ttp": (0.0, 60.0), "mtt": (0.0, 20.0), "cbf": (0.0, 80.0), "cbv": (0.0, 8.0)}
#: Low-flow voxels of ``--low-flow-weight``: target CBF below this fraction of the slice's median.
LOW_FLOW_FRACTION = 0.4
#: The validation's core (``val_dice_core``): CBF below this fraction of the slice's median brain
#: CBF, in the predicted and the target map alike (the clinical rCBF < 30 % rule, slice-wise).
CORE_FRACTION = 0.3


def slice_core(cbf: torch.Tensor, inside: torch.Tensor, fraction: float = CORE_FRACTION) -> torch.Tensor:
    """(B, H, W) bool: voxels of ``inside`` whose ``cbf`` is below ``fraction`` of the median CBF
    inside their slice (none in a slice without brain)."""
    none = cbf.new_tensor(float("-inf"))
    ref = torch.stack([c[m].median() if m.any() else none for c, m in zip(cbf, inside, strict=True)])
    return (cbf < fraction * ref.view(-1, 1, 1)) & inside


class PerfusionTask(L.LightningModule):
    def __init__(
        self,
        model: str,
        model_kwargs: dict[str, Any],
        maps: list[str],
        target_mean: dict[str, float],
        target_sd: dict[str, float],
        grid: list[float],
        loss: str = "mse",
        lr: float = 5e-4,
        lr_step_epochs: int = 4,
        lr_gamma: float = 0.5,
        windows: dict[str, list[float]] | None = None,
        log_offsets: dict[str, float] | None = None,
        freeze_norm: bool = False,
        low_flow_weight: float = 0.0,
        nll_beta: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model, **model_kwargs)
        self.maps = list(maps)
        self.mean = torch.tensor([target_mean[m] for m in maps]).view(1, -1, 1, 1)
        self.sd = torch.tensor([target_sd[m] for m in maps]).view(1, -1, 1, 1)
        self.log_offsets = dict(log_offsets or {})
        win = {**WINDOWS, **(windows or {})}
        # the importance windows in standardised units of the network's domain
        self.windows = []
        for m in maps:
            if m not in win:
                self.windows.append((-np.inf, np.inf))
                continue
            lo, hi = window_to_model(tuple(win[m]), m, self.log_offsets)
            self.windows.append(((lo - target_mean[m]) / target_sd[m], (hi - target_mean[m]) / target_sd[m]))
        self.times = time_channel(np.asarray(grid))
        self._val: dict[str, float] = {}

    def train(self, mode: bool = True) -> PerfusionTask:
        """``freeze_norm``: batch-norm layers stay in eval mode while the rest trains, so that a
        fine-tune normalises with the running statistics of the weights it started from (which it
        keeps) instead of replacing them with those of its own, smaller cohort."""
        super().train(mode)
        if mode:
            self._freeze_norm()
        return self

    def _freeze_norm(self) -> None:
        if self.hparams.get("freeze_norm", False):
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def on_train_epoch_start(self) -> None:
        # Lightning keeps each submodule's mode as it finds it (it calls no train()): set it here
        self._freeze_norm()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        spec = network_spec(self.hparams.model)
        return spec.forward(self.model, batch["x"], self.times.to(batch["x"].device), batch.get("bolus"))

    def _loss(
        self, batch: dict[str, torch.Tensor], across_ranks: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and prediction. ``across_ranks``: normalised by the weight of the
        *global* batch (all data-parallel ranks) and multiplied by the world size, so that DDP's
        gradient average equals the gradient of one process seeing the whole batch."""
        value, scale = self(batch)
        mask = batch["mask"][:, None]
        if self.hparams.loss == "laplace" and scale is not None:
            beta = float(self.hparams.get("nll_beta", 0.0) or 0.0)  # β-NLL (losses.laplace_nll_parts)
            weighted = self._low_flow_weighted(batch["y"], mask)
            total, weight = laplace_nll_parts(value, scale, batch["y"], weighted, self.windows, beta=beta)
            floor = 1e-12
        else:
            total, weight = masked_mse_parts(value, batch["y"], self._low_flow_weighted(batch["y"], mask))
            if scale is not None:  # a scale head beside the MSE regression (the U-Net's): its Laplace
                # NLL on the *detached* maps, so the maps train exactly as without it; same weights
                nll, _ = laplace_nll_parts(value.detach(), scale, batch["y"], mask)
                total = total + nll
            floor = 1.0
        world = self.trainer.world_size if across_ranks and self._trainer is not None else 1
        if world > 1:
            weight = weight.detach().clone()
            torch.distributed.all_reduce(weight)
            return total * world / weight.clamp_min(floor), value
        return total / weight.clamp_min(floor), value

    def _low_flow_weighted(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss mask (B, 1, H, W) with weight 1 + ``low_flow_weight`` where the target CBF is
        below :data:`LOW_FLOW_FRACTION` of the median target CBF of the slice's brain: the core
        (rCBF < 30 %) and a margin, which a mean squared error over all voxels pulls towards the
        population mean (issue 12.3). Unchanged without a weight or a CBF map."""
        w = float(self.hparams.get("low_flow_weight", 0.0) or 0.0)
        if w <= 0 or "cbf" not in self.maps:
            return mask
        i = self.maps.index("cbf")
        raw = y[:, i] * self.sd[0, i].to(y) + self.mean[0, i].to(y)
        cbf = from_model(raw, "cbf", self.log_offsets)  # (B, H, W) in mL/100 g/min
        low = slice_core(cbf, mask[:, 0] > 0, LOW_FLOW_FRACTION)
        return mask * (1.0 + w * low[:, None].to(mask.dtype))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch, across_ranks=True)
        self.log(
            "train_loss",
            loss,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=batch["x"].shape[0],
            sync_dist=True,
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"n": 0.0, "inter": 0.0, "pred": 0.0, "true": 0.0} | {f"abs_{m}": 0.0 for m in self.maps}
        self._val |= {"maec": 0.0, "loss": 0.0, "slices": 0.0}
        self._val |= {"core_inter": 0.0, "core_pred": 0.0, "core_true": 0.0}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Sums over the rank's validation shard (padding samples count nothing); reduced over
        the ranks at the epoch's end."""
        count = batch["count"].float() if "count" in batch else torch.ones(batch["x"].shape[0])
        value, scale = self(batch)
        mask, y = batch["mask"][:, None], batch["y"]
        for j in range(value.shape[0]):  # the loss of each slice, as at batch size 1
            sl = slice(j, j + 1)
            if self.hparams.loss == "laplace" and scale is not None:
                total, weight = laplace_nll_parts(value[sl], scale[sl], y[sl], mask[sl], self.windows)
                floor = 1e-12
            else:
                total, weight = masked_mse_parts(value[sl], y[sl], mask[sl])
                floor = 1.0
            self._val["loss"] += float(total / weight.clamp_min(floor)) * float(count[j])
        self._val["slices"] += float(count.sum())
        sd, mean = self.sd.to(value.device), self.mean.to(value.device)
        pred, true = value * sd + mean, batch["y"] * sd + mean
        for i, m in enumerate(self.maps):  # back to map units
            pred[:, i] = from_model(pred[:, i], m, self.log_offsets)
            true[:, i] = from_model(true[:, i], m, self.log_offsets)
        mask = batch["mask"]
        n = float(mask.sum())
        self._val["n"] += n
        for i, m in enumerate(self.maps):
            self._val[f"abs_{m}"] += float((pred[:, i] - true[:, i]).abs()[mask].sum())
        if "cbf" in self.maps:  # the core by the slice-wise rCBF rule, in both maps
            i = self.maps.index("cbf")
            p, t = slice_core(pred[:, i], mask), slice_core(true[:, i], mask)
            self._val["core_inter"] += float((p & t).sum())
            self._val["core_pred"] += float(p.sum())
            self._val["core_true"] += float(t.sum())
        if "tmax" in self.maps:
            i = self.maps.index("tmax")
            p, t = pred[:, i][mask], true[:, i][mask]
            self._val["maec"] += float((p.clamp(0, 20) - t.clamp(0, 20)).abs().sum())
            self._val["inter"] += float(((p > 6) & (t > 6)).sum())
            self._val["pred"] += float((p > 6).sum())
            self._val["true"] += float((t > 6).sum())

    def on_validation_epoch_end(self) -> None:
        """Metrics of the whole validation set: the ranks' sums added (float64 all-reduce), then
        the ratios (logged with ``sync_dist``: the same number on every rank)."""
        keys = sorted(self._val)
        sums = torch.tensor([self._val[k] for k in keys], dtype=torch.float64)
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        v = dict(zip(keys, sums.tolist(), strict=True))
        n = max(v["n"], 1.0)
        self.log("val_loss", v["loss"] / max(v["slices"], 1.0), prog_bar=True, sync_dist=True)
        for m in self.maps:
            self.log(f"val_mae_{m}", v[f"abs_{m}"] / n, sync_dist=True)
        if "cbf" in self.maps:
            denom = v["core_pred"] + v["core_true"]
            dice = 2 * v["core_inter"] / denom if denom else float("nan")
            self.log("val_dice_core", dice, sync_dist=True)
        if "tmax" in self.maps:
            self.log("val_tmax_maec", v["maec"] / n, sync_dist=True)
            denom = v["pred"] + v["true"]
            self.log(
                "val_dice_hypoperfused", 2 * v["inter"] / denom if denom else float("nan"), sync_dist=True
            )

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, self.hparams.lr_step_epochs, self.hparams.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": sched}
