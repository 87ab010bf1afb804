"""Wall time of `sd-lens analyze` on SmolLM2 split by stage, and the norm probe's overhead.

Targets on a 2-core CPU machine: `sd-lens analyze` with default settings <= 30 s including the warm
model load; the norm probe <= 1.15x a bare forward of the same batches (stopping at the same block).
Usage: python benchmarks/bench_analyze.py [--model NAME] [--vocab] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def bench_cli(model: str, vocab: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a.json"
        cmd = [sys.executable, "-m", "sd_lens.cli", "analyze", "--model", model, "--json", str(out)]
        if vocab:
            cmd.append("--vocab")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        data = json.loads(out.read_text())
    return {"process_wall_s": wall, **data["timings_s"], "_defects": data["defects"]}


def bench_probe(model_name: str, repeats: int) -> tuple[float, float, int]:
    import sd_lens
    from sd_lens.analyses.probe import probe_norms
    from sd_lens.corpus import default_corpus
    from sd_lens.runtime.tokens import tokenize

    model = sd_lens.load_model(model_name)
    tok = tokenize(model, default_corpus())
    n_layers = model.cfg.n_layers
    probe_norms(model, tok)  # warm-up
    bare, probe = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for _, tokens, _ in tok.batches(16):
                model(tokens, return_type=None, stop_at_layer=n_layers)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        probe_norms(model, tok)
        probe.append(time.perf_counter() - t0)
    return min(bare), min(probe), tok.n_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--vocab", action="store_true", help="include the vocabulary sweeps")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    res = bench_cli(args.model, args.vocab)
    print(f"\n`sd-lens analyze --model {args.model}{' --vocab' if args.vocab else ''}` (fresh process, warm cache)")
    for k, v in res.items():
        if not k.startswith("_"):
            print(f"  {k:<22} {v:8.2f} s")
    target = 30.0
    if args.vocab:
        print(f"  (the {target:.0f} s target is for default settings; --vocab adds the opt-in sweeps)")
    else:
        print(f"  target: total <= {target:.0f} s -> {'OK' if res['total'] <= target else 'MISSED'}")
    for d in res["_defects"]:
        for key in ("vocab_coefficients", "noninitial_pathway"):
            if key in d:
                v = d[key]
                bare = f", bare forward {v['bare_tokens_per_second']:.0f} tok/s" if "bare_tokens_per_second" in v else ""
                print(f"  {key} at block {v['layer']}: {v['seconds']:.1f} s, {v['tokens_per_second']:.0f} tok/s{bare}")
    bare, probe, n = bench_probe(args.model, args.repeats)
    ratio = probe / bare
    print(f"\nnorm probe vs bare forward, {n} tokens in batches of 16 (best of {args.repeats}):")
    print(f"  bare {bare:.2f} s ({n / bare:.0f} tok/s), probe {probe:.2f} s ({n / probe:.0f} tok/s), ratio {ratio:.3f}")
    print(f"  target: ratio <= 1.15 -> {'OK' if ratio <= 1.15 else 'MISSED'}")


if __name__ == "__main__":
    main()
