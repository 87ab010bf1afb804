"""The spectra stage of `sd-lens analyze` (analyses 4–5: every block's leading triplet of L and F, and the
decay eigen-checks) with the exact float64 decompositions (``exact=True``, sd_lens before issue 21) and
with the default iterative route, on one model; and how far apart their answers are.

Prints, for each thread count asked: the wall time of ``layer_spectra`` (as ``run_analysis`` calls it:
Gaussian fit, R² on 256 held-out samples, every block) for both routes, the time of the decompositions
alone (the fits precomputed), the decay checks' time, the solvers used (fallbacks named), and the largest
differences: angle of u0/v0 (L and F) in degrees, relative s0, relative decay eigenvalue; and the stage against
the norm probe with the FFN fits' R² on 1 024, 256 (the default) and 0 held-out inputs.

Usage: python benchmarks/bench_spectra.py [--model NAME] [--threads 2,1] [--repeats 2]

Timings are wall-clock on whatever else the machine is doing: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", default=f"{torch.get_num_threads()},1")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import sd_lens
    from sd_lens.analyses.defects import find_defects
    from sd_lens.analyses.probe import probe_norms
    from sd_lens.analyses.spectra import _block_parts, _L_operator, decay_check, layer_spectra, linearize_block
    from sd_lens.corpus import default_corpus
    from sd_lens.linalg import acute_angle_deg, leading_triplet
    from sd_lens.models.view import model_view

    model = sd_lens.load_model(args.model)
    view = model_view(model)
    probe = probe_norms(model, default_corpus())
    report = find_defects(model, probe)
    dirs = [d.direction for d in report]
    decay = sorted({b for d in report for b in d.decay_layers})
    print(f"{args.model}: {view.n_layers} blocks, d_model {view.d_model}; defects "
          + ", ".join(f"{d.label} (explodes {d.explosion_layer}, decays {list(d.decay_layers)})" for d in report))
    print(f"load average {os.getloadavg()[0]:.2f}")
    parts = {b: _block_parts(view.block(b), None, "gaussian", n_eval=0) for b in range(view.n_layers)}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        row: dict[str, float] = {}
        for exact in (True, False):
            tag = "exact" if exact else "fast"
            best = best_dec = best_eig = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                spectra = layer_spectra(view, dirs, keep=decay, seed=0, exact=exact)
                best = min(best, time.perf_counter() - t0)
                t0 = time.perf_counter()
                for b, (A, F, fit) in parts.items():
                    blk = view.block(b)
                    if exact:
                        leading_triplet(linearize_block(blk, b, fit=fit).L, exact=True)
                    else:
                        leading_triplet(_L_operator(A, F, blk.parallel, blk.W_out.device))
                    leading_triplet(F, exact=exact)
                best_dec = min(best_dec, time.perf_counter() - t0)
                t0 = time.perf_counter()
                checks = [decay_check(view, b, d.direction, lin=spectra.linearizations[b], exact=exact)
                          for d in report for b in d.decay_layers]
                best_eig = min(best_eig, time.perf_counter() - t0)
            row[f"{tag}_spectra_s"], row[f"{tag}_decomp_s"], row[f"{tag}_decay_s"] = best, best_dec, best_eig
            if exact:
                ref, ref_checks = spectra, checks
            else:
                fast, fast_checks = spectra, checks
        print(f"\n{threads} thread(s): layer_spectra exact {row['exact_spectra_s']:.2f} s -> fast {row['fast_spectra_s']:.2f} s"
              f" ({row['exact_spectra_s'] / row['fast_spectra_s']:.1f}x); decompositions alone "
              f"{row['exact_decomp_s']:.2f} s -> {row['fast_decomp_s']:.2f} s "
              f"({row['exact_decomp_s'] / row['fast_decomp_s']:.1f}x); decay checks {row['exact_decay_s']:.3f} s -> "
              f"{row['fast_decay_s']:.3f} s")
    # the stage against the norm probe (issue 21's goal: spectra <= 0.5x the probe on the CPU), by R² sample count
    torch.set_num_threads(int(args.threads.split(",")[0]))
    probe_s = min(_timed(lambda: probe_norms(model, default_corpus())) for _ in range(args.repeats))
    print(f"\n{torch.get_num_threads()} thread(s): norm probe {probe_s:.2f} s; layer_spectra as run_analysis calls it:")
    for n_eval in (1024, 256, 0):
        t = min(_timed(lambda: layer_spectra(view, dirs, keep=decay, seed=0, n_eval=n_eval)) for _ in range(args.repeats))
        print(f"  ffn_r2_samples={n_eval:>4}: {t:.2f} s = {t / probe_s:.2f}x the probe")
    ang = max(
        max(float(acute_angle_deg(getattr(f, k), getattr(e, k))) for k in ("u0", "v0", "ffn_u0", "ffn_v0"))
        for f, e in zip(fast.blocks, ref.blocks)
    )
    rel = max(max(abs(f.s0 - e.s0) / e.s0, abs(f.ffn_s0 - e.ffn_s0) / e.ffn_s0) for f, e in zip(fast.blocks, ref.blocks))
    rel_eig = max((abs(f.eigenvalue - e.eigenvalue) / abs(e.eigenvalue) for f, e in zip(fast_checks, ref_checks)), default=0.0)
    solvers: dict[str, int] = {}
    for b in fast.blocks:
        for s in (b.solver, b.ffn_solver):
            solvers[s] = solvers.get(s, 0) + 1
    print(f"\nagreement: max angle {ang:.2e} deg, max relative s0 {rel:.1e}, max relative decay eigenvalue {rel_eig:.1e}; "
          f"closest blocks {[fast.closest_block(k) for k in range(len(dirs))]} vs {[ref.closest_block(k) for k in range(len(dirs))]}")
    print("triplet solvers:", solvers)
    print("decay-check solvers:", [f"block {c.layer}: {c.solver}" for c in fast_checks])


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
