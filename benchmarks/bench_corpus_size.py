"""The defect finder on growing corpora: same major defects, and what each size costs.

Runs the norm probe and the defect finder on the default corpus and on N lines of other CPython prose
(lines the default corpus does not use), prints per size: the major defects (explosion and decay
blocks, high-norm blocks, initial token, first carriers, angle to the default corpus's direction),
the minor groups, the probe and second-pass times, the tokens the second pass re-ran, and the peak
memory of the direction clusters against what storing every high-norm vector would take.

Usage: python benchmarks/bench_corpus_size.py [--model NAME] [--sizes 400 1200 5000]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 1200, 5000])
    args = parser.parse_args()

    import sd_lens
    from sd_lens.analyses.defects import find_defects
    from sd_lens.analyses.probe import probe_norms
    from sd_lens.corpus import _prose_lines, default_corpus
    from sd_lens.linalg import acute_angle_deg

    model = sd_lens.load_model(args.model)
    used = set(default_corpus())
    other = [line for line in _prose_lines() if line not in used]
    reference = None
    print(f"model {args.model}, torch threads {torch.get_num_threads()}")
    for label, texts in [("default", default_corpus()), *[(f"{n} lines", other[:n]) for n in args.sizes]]:
        t0 = time.perf_counter()
        probe = probe_norms(model, texts)
        t1 = time.perf_counter()
        report = find_defects(model, probe)
        t2 = time.perf_counter()
        c = report.clusters
        assert c is not None
        n_states = int((c.assignment >= 0).sum())
        cluster_bytes = sum(s.numel() * 4 * 2 for s in c.sums) + c.assignment.numel() * 5
        print(
            f"\n== {label}: {len(texts)} texts, {probe.n_tokens} tokens; probe {t1 - t0:.1f} s, finder {t2 - t1:.1f} s "
            f"(second pass {c.seconds:.1f} s over {c.n_forward_tokens} tokens); {n_states} episode states in "
            f"{sum(c.n_clusters(layer) for layer in range(c.n_layers))} clusters: {cluster_bytes / 2**20:.1f} MiB kept "
            f"vs {n_states * int(model.cfg.d_model) * 4 / 2**20:.1f} MiB for every state's vector"
        )
        for d in report.all:
            angles = "" if reference is None else " ".join(
                f"{float(acute_angle_deg(d.direction, r)):.2f}" for r in reference
            )
            print(
                f"  {d.label}: explosion {d.explosion_layer}, decay {d.decay_layers}, high {d.first_layer}-{d.last_layer}, "
                f"peak {d.peak_norm:.0f} ({d.peak_ratio:.1f}x), initial {d.initial_token}, {d.n_episodes} occurrences, "
                f"carriers {[t for t, _ in d.noninitial_tokens[:4]]}, spread {d.spread_deg:.1f}, turn {d.turn_deg:.1f}"
                + (f"; deg to default D*: {angles}" if angles else "")
                + (f"; minor: {'; '.join(d.minor_reasons)}" if d.minor_reasons else "")
            )
        if reference is None:
            reference = [d.direction for d in report]


if __name__ == "__main__":
    main()
