"""sd_lens.signature on the bundled models: stability across corpora, Gemma-3 and the width error. The fine-tuned
relative and the rotated control are checked on what the executed page docs/signatures.md computes
(tests/integration/test_signature_tutorial_real.py); the long version (48 lines, 40 fine-tuning steps) is
benchmarks/signature_lineage.py."""

from __future__ import annotations

import warnings

import pytest
import torch

from sd_lens.corpus import default_corpus, held_out_texts
from sd_lens.errors import InputError
from sd_lens.signature import angle_matrix, compute_signature, signature_angle

A = default_corpus(16)
B = held_out_texts(A, 16)
_sigs: dict[str, object] = {}


def _signature(model, key: str, texts):
    if key not in _sigs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _sigs[key] = compute_signature(model, texts, name=key)
    return _sigs[key]


def test_smollm2_stable_across_disjoint_corpora(smollm2, unchanged):
    with unchanged(smollm2):
        a = _signature(smollm2, "smollm2", A)
    b = _signature(smollm2, "smollm2 B", B)
    assert not set(A) & set(B) and a.corpus_hash != b.corpus_hash
    # measured (16 + 16 lines): both at block 11 (defect D1, initial token, peak 180x); empirical 0.38 deg apart
    # (48 + 48 lines in the benchmark: 0.14 deg); the weights signature depends only on the block
    assert a.block == b.block == 11 and a.d_model == 576
    print(f"\nsmollm2: blocks {a.block} {b.block}; stability {signature_angle(a, b):.4f} deg, self angle {a.self_angle_deg:.3f}")
    assert signature_angle(a, b) < 1.0
    assert signature_angle(a, b, "weights") == 0.0
    # measured: the two signatures of one model are 4.6 deg apart (u0 of the explosion block vs the states; 4.7 on 48 lines)
    assert 2.0 < a.self_angle_deg < 8.0


def test_gemma3_stability_and_width_error(gemma3, smollm2):
    a = _signature(gemma3, "gemma-3", A)
    b = _signature(gemma3, "gemma-3 B", B)
    print(f"\ngemma-3: blocks {a.block} {b.block}, defects {a.defect} / {b.defect}; stability "
          f"{signature_angle(a, b):.4f} / {signature_angle(a, b, 'weights'):.4f} deg, self angle {a.self_angle_deg:.3f}")
    assert a.d_model == 640 and a.block == b.block
    # measured (16 + 16 lines): both at block 5 (D0, initial token + ",", " and"; peak 28-30x); empirical 0.69 deg,
    # weights 0 (same block); its two signatures are 19.2 deg apart
    assert signature_angle(a, b) < 2.0
    with pytest.raises(InputError, match=r"d_model 576.*d_model 640|d_model 640.*d_model 576"):
        angle_matrix([_signature(smollm2, "smollm2", A), a])
    assert torch.isfinite(a.weights).all()
