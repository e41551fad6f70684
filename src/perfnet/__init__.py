"""perfnet: perfusion maps and core/penumbra from CT perfusion and DSC-MRI.

Stages (see DESIGN.md): io → preprocess → conventional | models → lesions → evaluation,
with `phantom` providing studies of known truth.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("perfnet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
