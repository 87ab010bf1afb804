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
counts its tokens once). Each is given per wall-clock second and per CPU second of this process
(``time.process_time``): on a shared machine the CPU-time figure is the steadier one.

Usage::

    .venv/bin/python benchmarks/bench_perplexity.py [--texts 48] [--rounds 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Callable

import sd_lens
from perplexity_timing import bare_forward, token_rates
from sd_lens.analyses.activation_outliers import activation_outliers
from sd_lens.analyses.outlier_interventions import (
    emergence_targets,
    held_out_corpus,
    intervention_hooks,
    perplexity,
)
from sd_lens.runtime import tokenize


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

    bare = bare_forward(model, tok, args.batch_size)

    runs: dict[str, Callable[[], object]] = {
        "bare": bare,
        "ppl clean": lambda: perplexity(model, tok, batch_size=args.batch_size),
        "ppl zero": lambda: perplexity(model, tok, hooks, kl=False, batch_size=args.batch_size),
        "ppl zero+KL": lambda: perplexity(model, tok, hooks, batch_size=args.batch_size),
    }
    bare()  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            w, c = token_rates(tok.n_tokens, fn)
            wall[name].append(w)
            cpu[name].append(c)
        print(f"round {r}: " + ", ".join(f"{k} {wall[k][-1]:.1f} ({cpu[k][-1]:.1f})" for k in runs)
              + " tok/s wall (CPU)")
    print(f"{'':14s}{'wall tok/s':>12s}{'x bare':>8s}{'CPU tok/s':>12s}{'x bare':>8s}   (medians over rounds)")
    for name in runs:
        rw = statistics.median(a / b for a, b in zip(wall[name], wall["bare"]))
        rc = statistics.median(a / b for a, b in zip(cpu[name], cpu["bare"]))
        print(f"{name:14s}{statistics.median(wall[name]):12.1f}{rw:8.3f}{statistics.median(cpu[name]):12.1f}{rc:8.3f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
