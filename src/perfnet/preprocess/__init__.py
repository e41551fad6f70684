"""Preprocessing: brain mask, bolus timing, signal → concentration, motion correction, filters."""
