"""Cohort statistics of Gava et al. 2022: agreement of lesion volumes between two methods.

- Pearson r (and its two-sided p) of the volumes;
- Bland–Altman (1986): bias = mean(a − b), limits of agreement = bias ± 1.96·SD(a − b);
- coefficient of repeatability CR = 1.96·SD(a − b) (Bland & Altman; the half-width of the limits);
- ICC(1,k) (Shrout & Fleiss 1979, one-way random effects, mean of k ratings: the ``ICC1k`` of
  pingouin that Gava et al. report) = (MSB − MSW) / MSB, with its F test and 95 % CI;
- Friedman test across ≥ 3 methods on paired per-study values (scipy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def pearson(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"r": float("nan"), "p": float("nan"), "n": int(a.size)}
    r, p = stats.pearsonr(a, b)
    return {"r": float(r), "p": float(p), "n": int(a.size)}


def bland_altman(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    bias = float(d.mean()) if d.size else float("nan")
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    return {
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "n": int(d.size),
    }


def coefficient_of_repeatability(a: np.ndarray, b: np.ndarray) -> float:
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(1.96 * d.std(ddof=1)) if d.size > 1 else float("nan")


def icc1k(ratings: np.ndarray) -> dict[str, float]:
    """ICC(1,k) of an (n subjects × k raters) table, with F, p and the 95 % CI (Shrout & Fleiss)."""
    x = np.asarray(ratings, dtype=np.float64)
    n, k = x.shape
    if n < 2 or k < 2:
        return dict.fromkeys(("icc", "F", "p", "ci_low", "ci_high"), float("nan"))
    grand = x.mean()
    msb = k * np.sum((x.mean(axis=1) - grand) ** 2) / (n - 1)
    msw = np.sum((x - x.mean(axis=1, keepdims=True)) ** 2) / (n * (k - 1))
    if msb == 0:
        return dict.fromkeys(("icc", "F", "p", "ci_low", "ci_high"), float("nan"))
    if msw == 0:
        return {"icc": 1.0, "F": float("inf"), "p": 0.0, "ci_low": 1.0, "ci_high": 1.0}
    f = msb / msw
    df1, df2 = n - 1, n * (k - 1)
    p = float(stats.f.sf(f, df1, df2))
    f_low = f / stats.f.ppf(0.975, df1, df2)
    f_high = f * stats.f.ppf(0.975, df2, df1)
    return {
        "icc": float((msb - msw) / msb),
        "F": float(f),
        "p": p,
        "ci_low": float(1 - 1 / f_low),
        "ci_high": float(1 - 1 / f_high),
    }


def friedman(*groups: np.ndarray) -> dict[str, float]:
    """Friedman χ² test of ≥ 3 paired samples (e.g. per-study errors of three methods)."""
    if len(groups) < 3:
        return {"statistic": float("nan"), "p": float("nan"), "k": len(groups)}
    res = stats.friedmanchisquare(*[np.asarray(g, dtype=np.float64) for g in groups])
    return {"statistic": float(res.statistic), "p": float(res.pvalue), "k": len(groups)}


def agreement(pred: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Every agreement statistic of paired volumes (prediction vs reference)."""
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return {
        "pearson": pearson(pred, ref),
        "bland_altman": bland_altman(pred, ref),
        "coefficient_of_repeatability": coefficient_of_repeatability(pred, ref),
        "icc1k": icc1k(np.column_stack([pred, ref])),
    }
