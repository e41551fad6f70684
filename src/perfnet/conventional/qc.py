"""Moved to :mod:`perfnet.qc` (one QC module for every method); kept as an import shim."""

from perfnet.qc import (
    INFORMATIONAL_FLAGS,
    LARGE_MOTION_MM,
    TRUNCATION_FRACTION,
    UNRELIABLE_FLAGS,
    aif_flags,
    motion_flags,
    non_steady_state_flags,
    reliable,
    verdict,
)

__all__ = [
    "INFORMATIONAL_FLAGS",
    "LARGE_MOTION_MM",
    "TRUNCATION_FRACTION",
    "UNRELIABLE_FLAGS",
    "aif_flags",
    "motion_flags",
    "non_steady_state_flags",
    "reliable",
    "verdict",
]
