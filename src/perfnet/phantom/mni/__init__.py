"""Phantom style B ("mni"): an independent simulator built on the MNI152 brain template.

Anatomy from the ICBM 2009a grey/white-matter probability maps nilearn ships (offline), posed
(scale, rotation with through-plane tilt, slab position) and deformed by a smooth random field,
resampled with partial volume; vascular territories, arteries and sinuses placed in MNI space;
territorial lesions graded by collateral reach; Parker's population AIF, four residue families
with gamma-kernel dispersion; CT noise with an FBP noise power spectrum, MR magnitude mixing,
Rician noise, contrast leakage and non-steady-state frames; rigid motion. Its truth has style A's
meaning and file layout; only the output types are shared with style A.

>>> from perfnet.phantom.mni import MniConfig, simulate_mni_study
>>> study = simulate_mni_study(MniConfig.draw(1, "CT", matrix=64, slices=4))
>>> study.series.data.shape[:3], study.truth.parameters["style"]
((64, 64, 4), 'mni')
"""

from perfnet.phantom.mni.config import MniConfig
from perfnet.phantom.mni.study import MniStudy, simulate_mni_study

__all__ = ["MniConfig", "MniStudy", "simulate_mni_study"]
