"""Preprocessing: brain mask, bolus timing, signal → concentration, motion correction, filters."""

from perfnet.preprocess.bolus import BolusTiming, detect_bolus
from perfnet.preprocess.concentration import to_concentration
from perfnet.preprocess.filters import bilateral_filter, temporal_smooth
from perfnet.preprocess.mask import brain_mask
from perfnet.preprocess.motion import MotionResult, interpolate_frames, motion_correct

__all__ = [
    "BolusTiming",
    "MotionResult",
    "bilateral_filter",
    "brain_mask",
    "detect_bolus",
    "interpolate_frames",
    "motion_correct",
    "temporal_smooth",
    "to_concentration",
]
