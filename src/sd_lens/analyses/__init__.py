"""The analyses, one module each, in the order of the pipeline (see ``docs/analyses.md``).

* :mod:`~sd_lens.analyses.probe` — the norm of every token at every block (1);
* :mod:`~sd_lens.analyses.defects` — high-norm states grouped into defects (1);
* :mod:`~sd_lens.analyses.attention_matrix` — a self-attending token's attention update as a matrix (2);
* :mod:`~sd_lens.analyses.ffn_fit`, :mod:`~sd_lens.analyses.ffn_inputs` — the FFN as a linear map (3);
* :mod:`~sd_lens.analyses.spectra` — each block's linearisation, its singular direction, decay checks (4, 5);
* :mod:`~sd_lens.analyses.explosion` — the explosion subspace and the vocabulary sweeps (6);
* :mod:`~sd_lens.analyses.causal` — the causal experiments on one engine: ablation and patching of the trigger
  direction (7), the lever, the local checks, the interventions on massive activations;
* :mod:`~sd_lens.analyses.metrics` — perplexity and KL, shared by the experiments and the applications;
* :mod:`~sd_lens.analyses.norm_table`, :mod:`~sd_lens.analyses.text_run` — one text's norms at a glance.

Each is a function of a model (through :mod:`sd_lens.runtime`) or of its weight view
(:func:`sd_lens.model_view`) returning a frozen dataclass with ``to_dict()`` where it enters the JSON.
"""
