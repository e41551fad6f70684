"""Conventional perfusion analysis: AIF/VOF selection, deconvolution and map formulas.

Registers the deconvolution family and box-NLR as analysis methods (:mod:`perfnet.registry`);
their entry point is :func:`perfnet.conventional.pipeline.run_method`.
"""

from perfnet.registry import register_method

for _name, _text in (
    ("ssvd", "truncated SVD, P = 0.2 (Østergaard 1996)"),
    ("csvd", "block-circulant truncated SVD, P = 0.1 (Wu 2003)"),
    ("osvd", "block-circulant SVD with a per-voxel oscillation-index threshold (Wu 2003)"),
    (
        "tikhonov",
        "block-circulant Tikhonov-regularised deconvolution (Calamante 2003), λ from the study's SNR",
    ),
    ("boxnlr", "box-shaped residue by non-linear regression (Bennink 2016)"),
):
    register_method(_name, "perfnet.conventional.pipeline:run_method", kind="conventional", description=_text)
