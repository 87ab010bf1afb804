"""Perplexity under an intervention on the massive activations vs a bare forward, on SmolLM2-135M-Instruct.

Same texts, same batches, same run, interleaved round by round (the machine is shared; the ratio of
each round is printed and the median taken):

* ``bare``       one forward per batch through :func:`sd_lens.runtime.run_batch` with a single reducer
                 on the logits (``unembed.hook_out``) that returns nothing: what any forward costs;
* ``ppl clean``  :func:`perplexity` without hooks (the NLL reducer: logsumexp - target logit, chunked);
* ``ppl zero``   :func:`perplexity` with Sun et al.'s zero intervention, ``kl=False``: one forward of
                 the intervened model per batch (the acceptance figure: >= 0.8 x bare);
* ``ppl zero+KL``the same with ``kl=True``: each batch runs doubled (clean + intervened rows), so about
                 half the tokens/s of ``bare`` is the expected cost; counted separately.

The intervention's channels and block come from :func:`activation_outliers` on the default corpus
(not timed); the texts are :func:`held_out_corpus`. tokens/s counts input tokens (a doubled batch
counts its tokens once).

Usage::

    .venv/bin/python benchmarks/bench_perplexity.py [--texts 48] [--rounds 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import sd_lens
from sd_lens.analyses.activation_outliers import activation_outliers
from sd_lens.analyses.outlier_interventions import (
    LOGITS_HOOK,
    emergence_targets,
    held_out_corpus,
    intervention_hooks,
    perplexity,
)
from sd_lens.runtime import make_batch, run_batch, tokenize
from sd_lens.runtime.tokens import length_sorted_batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--texts", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    model = sd_lens.load_model(args.model)
    outliers = activation_outliers(model, sites=("resid_post",))
    targets = emergence_targets(outliers)
    hooks = intervention_hooks(targets, "zero", relative=outliers.relative, absolute=outliers.absolute)
    tok = tokenize(model, held_out_corpus(args.texts))
    print(f"{args.model}: targets {targets}, {len(tok.sequences)} held-out texts, {tok.n_tokens} tokens, "
          f"batch size {args.batch_size}, load average {os.getloadavg()[0]:.2f}")

    def bare() -> float:
        t0 = time.perf_counter()
        for idx in length_sorted_batches(tok.sequences, args.batch_size):
            batch = make_batch(model, [tok.sequences[i] for i in idx], idx)
            run_batch(model, batch, {LOGITS_HOOK: lambda act, b: None})
        return tok.n_tokens / (time.perf_counter() - t0)

    runs = {
        "bare": bare,
        "ppl clean": lambda: perplexity(model, tok, batch_size=args.batch_size).tokens_per_s,
        "ppl zero": lambda: perplexity(model, tok, hooks, kl=False, batch_size=args.batch_size).tokens_per_s,
        "ppl zero+KL": lambda: perplexity(model, tok, hooks, batch_size=args.batch_size).tokens_per_s,
    }
    bare()  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            rates[name].append(fn())
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rates.items())
              + f" | zero/bare {rates['ppl zero'][-1] / rates['bare'][-1]:.3f}")
    print(f"{'':14s}{'median tok/s':>14s}{'x bare (median of rounds)':>28s}")
    for name, v in rates.items():
        ratio = statistics.median(a / b for a, b in zip(v, rates["bare"]))
        print(f"{name:14s}{statistics.median(v):14.1f}{ratio:28.3f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
