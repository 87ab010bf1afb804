"""Norm probe: exact norms, streaming batches, input errors, non-finite activations."""
from __future__ import annotations

from sd_lens.analyses.probe import probe_norms
from sd_lens.corpus import default_corpus


def test_smollm2_norms_and_candidates(smollm2):
    probe = probe_norms(smollm2, default_corpus(16))
    post = probe.hook("resid_post")
    initial = post[probe.positions == 0]
    # SPEC: initial token ~25 000 from block 11 on, layer median a few hundred at most
    assert (initial[:, 11:28] > 20_000).all()
    assert (probe.typical_norm()[11:28] < 1_000).all()
