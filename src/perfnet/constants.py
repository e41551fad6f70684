"""Physical constants and units, stated once for the whole package.

Units: CBF mL/100 g/min, CBV mL/100 g, MTT s, TTP s from the first frame, Tmax s, volumes mL.
"""

#: Hematocrit correction kH = (1 - Hct_large) / (1 - Hct_small) (Rempp et al. 1994).
HEMATOCRIT_FACTOR = 0.73
#: Brain tissue density ρ in g/mL.
TISSUE_DENSITY = 1.04

#: Map names in the order perfnet writes and reports them.
MAP_NAMES = ("cbf", "cbv", "mtt", "ttp", "tmax")
MAP_UNITS = {
    "cbf": "mL/100 g/min",
    "cbv": "mL/100 g",
    "mtt": "s",
    "ttp": "s",
    "tmax": "s",
}
#: The CNN's core probability map (a U-Net with a core head; ``core_probability.nii.gz``, 0–1):
#: where it is present, :mod:`perfnet.lesions` takes the core from it instead of the rCBF rule.
CORE_PROBABILITY = "core_probability"
#: Plausible ranges every method's maps are clipped to (values outside are numerical failures).
MAP_LIMITS = {
    "cbf": (0.0, 250.0),
    "cbv": (0.0, 30.0),
    "mtt": (0.0, 40.0),
    "tmax": (0.0, 60.0),
    "ttp": (0.0, 1e4),
}
MASK_NAMES = ("core", "hypoperfused", "penumbra", "brain")
MODALITIES = ("CT", "MR")
