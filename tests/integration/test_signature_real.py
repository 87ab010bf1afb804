"""sd_lens.signature on the bundled models: stability across corpora, a fine-tuned relative vs a rotated control,
Gemma-3 and the width error. The long version (48 lines, 40 fine-tuning steps) is benchmarks/signature_lineage.py."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from sd_lens.analyses.outlier_interventions import perplexity
from sd_lens.corpus import default_corpus, held_out_texts
from sd_lens.errors import InputError
from sd_lens.linalg import acute_angle_deg
from sd_lens.models.loading import bridge_from_hf
from sd_lens.runtime.tokens import tokenize
from sd_lens.signature import angle_matrix, compute_signature, rotate_residual, signature_angle

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from signature_lineage import fine_tune, finetune_texts, load_hf, relative_change  # noqa: E402

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


def test_smollm2_relative_is_close_and_rotated_control_is_not(smollm2):
    """A short fine-tune keeps both signatures; a function-preserving rotation of the basis sends them to ~90 deg."""
    base = _signature(smollm2, "smollm2", A)
    hf, tok = load_hf("smollm2-135m-instruct")
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    texts = finetune_texts(exclude=[*A, *B])
    held, train = texts[:16], texts[48:112]
    seqs = tokenize(smollm2, train, max_tokens_per_text=64).sequences
    ppl_before = perplexity(smollm2, held, kl=False).perplexity
    losses = fine_tune(hf, seqs, steps=3, lr=3e-4, batch=2, seq_len=64)
    change = relative_change(before, hf)
    print(f"\nfine-tune: losses {losses}, relative weight change {change:.5f}")
    # measured: ||dW||/||W|| = 0.00305 after 3 steps at lr 3e-4 (losses 4.52, 4.45, 3.98); perplexity on 16 held-out
    # docstring lines 66.3 -> 54.3
    assert change > 1.5e-3, change
    relative = bridge_from_hf(hf, tok, name="smollm2-finetuned")
    ppl_after = perplexity(relative, held, kl=False).perplexity
    print(f"perplexity on 16 held-out docstring lines: {ppl_before:.3f} -> {ppl_after:.3f}")
    assert ppl_after < 0.95 * ppl_before
    hf0, tok0 = load_hf("smollm2-135m-instruct")
    rot, Q = rotate_residual(hf0, seed=1)
    control = bridge_from_hf(rot, tok0, name="smollm2-rotated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ft = compute_signature(relative, A[:8], name="fine-tuned")
        ro = compute_signature(control, A[:8], name="rotated")
    m = angle_matrix([base, ft, ro], names=["base", "fine-tuned", "rotated"])
    print(m.table("empirical", digits=3))
    print(m.table("weights", digits=3))
    print("blocks", base.block, ft.block, ro.block, "equivariance",
          float(acute_angle_deg(Q.T @ base.empirical, ro.empirical)), float(acute_angle_deg(Q.T @ base.weights, ro.weights)))
    for kind in ("empirical", "weights"):
        # measured (base on 16 lines, the others on 8): relative 1.63 (empirical) / 0.147 (weights) deg;
        # control 89.1 / 88.7 deg (random in 576 dims: 90 +- 2.4)
        assert m.angle("base", "fine-tuned", kind) < 5.0, kind
        assert m.angle("base", "rotated", kind) > 80.0, kind
    # the control is the same model in another basis: rotated back, its signatures are the original's
    # (measured: 0.34 deg empirical, which is the 16- vs 8-line corpus difference; 7e-6 deg weights)
    assert float(acute_angle_deg(Q.T @ base.empirical, ro.empirical)) < 0.5
    assert float(acute_angle_deg(Q.T @ base.weights, ro.weights)) < 0.5
    assert ro.block == base.block and ft.block == base.block


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
