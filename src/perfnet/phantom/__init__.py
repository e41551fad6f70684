"""Digital perfusion phantom (CT and DSC-MRI) with known truth, domain-randomised by a seed.

Two independent styles share the output types and the truth: ``geometric`` (this package's
modules) and ``mni`` (:mod:`perfnet.phantom.mni`); ``draw_config(style, seed, modality)`` and
``simulate(cfg)`` serve both.

>>> from perfnet.phantom import PhantomConfig, simulate_study
>>> study = simulate_study(PhantomConfig.draw(seed=1, modality="CT", matrix=64, slices=4))
>>> study.series.data.shape[:3], sorted(study.truth.maps)
((64, 64, 4), ['cbf', 'cbv', 'mtt', 'tmax', 'ttp'])
"""

from perfnet.phantom.cohort import write_cohort, write_study
from perfnet.phantom.config import PhantomConfig, ct_noise_sd
from perfnet.phantom.study import PhantomStudy, PhantomTruth, simulate_study
from perfnet.phantom.styles import STYLES, draw_config, simulate

__all__ = [
    "STYLES",
    "PhantomConfig",
    "PhantomStudy",
    "PhantomTruth",
    "ct_noise_sd",
    "draw_config",
    "simulate",
    "simulate_study",
    "write_cohort",
    "write_study",
]
