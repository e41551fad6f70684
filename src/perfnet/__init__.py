"""perfnet: perfusion maps and core/penumbra from CT perfusion and DSC-MRI.

    from perfnet import analyze, load_series
    result = analyze("sub-01_ses-01_ctp.nii.gz", method="osvd")   # or a PerfusionSeries
    result.save("out/")

Stages (see DESIGN.md): io → preprocess → conventional | models → lesions → evaluation,
with `phantom` providing studies of known truth; :func:`analyze` (perfnet.study) runs them.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("perfnet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "analyze": "perfnet.study",
    "StudyResult": "perfnet.study",
    "load_series": "perfnet.io",
    "PerfusionSeries": "perfnet.io.types",
    "PerfusionMaps": "perfnet.io.types",
    "register_method": "perfnet.registry",
}


def __getattr__(name: str) -> Any:  # the public API loads on first use: `import perfnet` stays light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'perfnet' has no attribute {name!r}")


__all__ = [
    "PerfusionMaps",
    "PerfusionSeries",
    "StudyResult",
    "__version__",
    "analyze",
    "load_series",
    "register_method",
]
