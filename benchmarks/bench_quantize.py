"""Perplexity under W8A8 fake quantization vs a bare forward, on SmolLM2-135M-Instruct.

Same texts, same batches, interleaved round by round (the machine is shared; the ratio of each round
is printed and the median taken):

* ``bare``         one forward per batch through :func:`sd_lens.runtime.run_batch` with a reducer on the
                   logits that returns nothing: what any forward costs;
* ``ppl float``    :func:`perplexity` without hooks;
* ``ppl RTN``      :func:`perplexity` inside :func:`fake_quantize` (per-tensor W8A8, F2 kept at the defect
                   blocks), ``kl=False``: the acceptance figure is >= 0.8 x bare;
* ``ppl per-token`` and ``ppl SmoothQuant`` the same with the other schemes.

The weights are quantized once when the context opens (``enter``, timed separately, not counted in the
tokens/s: it is per experiment, not per token). tokens/s counts input tokens, per wall-clock second and
per CPU second of this process (the steadier figure on a shared machine).

Usage::

    .venv/bin/python benchmarks/bench_quantize.py [--texts 48] [--rounds 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import sd_lens
from perplexity_timing import bare_forward, token_rates
from sd_lens.analyses.outlier_interventions import perplexity
from sd_lens.corpus import default_corpus, held_out_texts
from sd_lens.quantize import PER_TOKEN, RTN, SMOOTHQUANT, fake_quantize, smoothquant_scales
from sd_lens.runtime import tokenize

#: the SmolLM2 defect blocks (explosion + decay of both major defects, as find_defects reports them);
#: which blocks are kept does not change the cost
KEEP = (2, 8, 9, 11, 28, 29)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--texts", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    model = sd_lens.load_model(args.model)
    corpus = default_corpus()
    smooth = smoothquant_scales(model, corpus)
    keep = [b for b in KEEP if b < int(model.cfg.n_layers)]
    tok = tokenize(model, held_out_texts(corpus, args.texts))
    print(f"{args.model}: {len(tok.sequences)} held-out texts, {tok.n_tokens} tokens, batch size {args.batch_size}, "
          f"load average {os.getloadavg()[0]:.2f}")

    bare = bare_forward(model, tok, args.batch_size)

    enter: list[float] = []

    def quantized(scheme, **kw) -> Callable[[], object]:
        def go() -> None:
            t0 = time.perf_counter()
            with fake_quantize(model, scheme, keep=keep, **kw) as hooks:
                enter.append(time.perf_counter() - t0)
                w0, c0 = time.perf_counter(), time.process_time()
                perplexity(model, tok, hooks, kl=False, batch_size=args.batch_size)
                go.wall, go.cpu = time.perf_counter() - w0, time.process_time() - c0  # type: ignore[attr-defined]

        return go

    runs: dict[str, Callable[[], object]] = {
        "bare": bare,
        "ppl float": lambda: perplexity(model, tok, batch_size=args.batch_size),
        "ppl RTN": quantized(RTN),
        "ppl per-token": quantized(PER_TOKEN),
        "ppl SmoothQuant": quantized(SMOOTHQUANT, smooth=smooth),
    }
    bare()  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        line = []
        for name, fn in runs.items():
            if name.startswith("ppl ") and name != "ppl float":
                fn()  # the forward alone, without the weight swap (timed inside)
                w, c = tok.n_tokens / fn.wall, tok.n_tokens / fn.cpu  # type: ignore[attr-defined]
            else:
                w, c = token_rates(tok.n_tokens, fn)
            wall[name].append(w)
            cpu[name].append(c)
            line.append(f"{name} {w:.0f}")
        print(f"round {r}: " + ", ".join(line) + f" tokens/s; ratio RTN/bare {wall['ppl RTN'][-1] / wall['bare'][-1]:.2f}")
    print(f"\nweights quantized on entering the context: median {statistics.median(enter):.2f} s")
    print(f"{'':18s}{'tokens/s (wall)':>16s}{'tokens/s (CPU)':>16s}{'x bare (wall)':>15s}{'x bare (CPU)':>14s}")
    bw, bc = statistics.median(wall["bare"]), statistics.median(cpu["bare"])
    for name in runs:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:18s}{w:16.0f}{c:16.0f}{w / bw:15.2f}{c / bc:14.2f}")


if __name__ == "__main__":
    main()
