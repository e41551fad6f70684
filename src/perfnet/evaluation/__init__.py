"""Evaluation the way the papers report it: per-map MSE, PSNR, SSIM, MAE, MAEC; per-mask Dice;
over a cohort Pearson r of volumes, Bland–Altman, coefficient of repeatability, ICC(1,k), Friedman."""

from __future__ import annotations

from perfnet.evaluation.cohort import evaluate_cohort, evaluate_study, find_studies
from perfnet.evaluation.metrics import MAEC_WINDOWS, dice, mae, maec, map_metrics, mse, psnr, ssim
from perfnet.evaluation.stats import (
    agreement,
    bland_altman,
    coefficient_of_repeatability,
    friedman,
    icc1k,
    pearson,
)

__all__ = [
    "MAEC_WINDOWS",
    "agreement",
    "bland_altman",
    "coefficient_of_repeatability",
    "dice",
    "evaluate_cohort",
    "evaluate_study",
    "find_studies",
    "friedman",
    "icc1k",
    "mae",
    "maec",
    "map_metrics",
    "mse",
    "pearson",
    "psnr",
    "ssim",
]
