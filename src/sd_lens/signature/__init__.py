"""Signatures and lineage: a model's high-norm direction, saved, loaded and compared across models.

Wang et al. (ICML 2025) find that the high-norm direction survives fine-tuning (relatives a few
degrees apart, unrelated models of the same width near 90°). :func:`compute_signature` measures it
two ways (empirical, from the primary defect's states; weights, ``u₀`` of the linearised explosion
block), :func:`save_signature` / :func:`load_signature` keep it in a small JSON file, and
:func:`angle_matrix` compares any number of models or files (table, JSON, heat map). The CLI is
``sd-lens signature``.
"""

from sd_lens.signature.compare import AngleMatrix, angle_matrix, check_widths
from sd_lens.signature.controls import random_orthogonal, rotate_residual
from sd_lens.signature.signature import Signature, compute_signature, corpus_hash, primary_defect, signature_angle
from sd_lens.signature.store import is_signature_file, load_signature, save_signature, signature_width

__all__ = [
    "AngleMatrix",
    "Signature",
    "angle_matrix",
    "check_widths",
    "compute_signature",
    "corpus_hash",
    "is_signature_file",
    "load_signature",
    "primary_defect",
    "random_orthogonal",
    "rotate_residual",
    "save_signature",
    "signature_angle",
    "signature_width",
]
