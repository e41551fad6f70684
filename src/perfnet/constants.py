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
MASK_NAMES = ("core", "hypoperfused", "penumbra", "brain")
MODALITIES = ("CT", "MR")
