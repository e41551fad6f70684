"""Conventional perfusion analysis: AIF/VOF selection, deconvolution and map formulas."""
