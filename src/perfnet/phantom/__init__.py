"""Digital perfusion phantom (CT and DSC-MRI) with known truth, domain-randomised by a seed.

>>> from perfnet.phantom import PhantomConfig, simulate_study
>>> study = simulate_study(PhantomConfig.draw(seed=1, modality="CT", matrix=64, slices=4))
>>> study.series.data.shape[:3], sorted(study.truth.maps)
((64, 64, 4), ['cbf', 'cbv', 'mtt', 'tmax', 'ttp'])
"""

from perfnet.phantom.cohort import write_cohort, write_study
from perfnet.phantom.config import PhantomConfig, ct_noise_sd
from perfnet.phantom.study import PhantomStudy, PhantomTruth, simulate_study

__all__ = [
    "PhantomConfig",
    "PhantomStudy",
    "PhantomTruth",
    "ct_noise_sd",
    "simulate_study",
    "write_cohort",
    "write_study",
]
