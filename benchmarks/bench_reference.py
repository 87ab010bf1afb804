"""`sd-lens analyze` end to end against the singular-defects reference code's *method*, on the same texts.

The reference method (Wang et al.'s scripts, re-written here from their description, not their code): one
forward pass over the texts for the residual norms, then for every block a least-squares fit of the FFN on
100 000 Gaussian inputs (``torch.linalg.lstsq`` on the samples), the block's linear map ``L = (I + F)(I + A)``,
its full SVD and the full ``eig`` of ``L − I``, in float64. sd_lens does the same analyses (and more: the
defect finder, decay and causal checks) with the closed-form fit and iterative leading triplets.

Issue 21's goal: ``sd-lens analyze`` end to end ≥ 25x faster than the reference method on the same 200 prose
lines (measured 10x before: 26.5 s against 265.5 s). Each side runs in a fresh process with the model cache
warm; both include loading the model and importing the libraries.

Usage: python benchmarks/bench_reference.py [--model NAME] [--lines 200] [--skip-reference]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = r"""
import json, sys, time
import torch
t0 = time.perf_counter()
import sd_lens
from sd_lens.analyses.attention_matrix import attention_matrix
from sd_lens.analyses.probe import probe_norms
from sd_lens.models.view import model_view

model = sd_lens.load_model(sys.argv[1])
texts = open(sys.argv[2], encoding="utf-8").read().splitlines()
t_load = time.perf_counter()
probe_norms(model, texts)  # the forward over the texts, norms per block
t_fwd = time.perf_counter()
view = model_view(model)
gen = torch.Generator().manual_seed(0)
d = view.d_model
for layer in range(view.n_layers):
    blk = view.block(layer)
    with torch.no_grad():
        X = torch.randn(100_000, d, generator=gen)
        Y = torch.cat([blk.ffn_out(X[i : i + 10_000]) for i in range(0, X.shape[0], 10_000)])
        Y = Y - (blk.b_out if blk.b_out is not None else 0.0)
        F = torch.linalg.lstsq(X, Y).solution.T  # ffn_out(n) ~ F n
        A = attention_matrix(blk).A
        eye = torch.eye(d)
        L = ((eye + F) @ (eye + A)).double()
        torch.linalg.svd(L)
        torch.linalg.eig(L - torch.eye(d, dtype=torch.float64))
t_end = time.perf_counter()
print(json.dumps({"load_s": t_load - t0, "forward_s": t_fwd - t_load, "per_block_s": t_end - t_fwd}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()

    from sd_lens.corpus import _prose_lines

    lines = _prose_lines()[: args.lines]
    print(f"{args.model}, {len(lines)} prose lines; load average {os.getloadavg()[0]:.2f}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "lines.txt"
        texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out = Path(tmp) / "a.json"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sd_lens.cli", "analyze", "--model", args.model, "--text-file",
                        str(texts), "--json", str(out)], check=True, capture_output=True)
        ours = time.perf_counter() - t0
        data = json.loads(out.read_text())
        stages = data["timings_s"]
        print(f"sd-lens analyze: {ours:.1f} s wall, {data['corpus']['n_tokens']} tokens "
              f"({', '.join(f'{k} {v:.2f}' for k, v in stages.items())})")
        if args.skip_reference:
            return
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", REFERENCE, args.model, str(texts)], check=True,
                             capture_output=True, text=True)
        ref = time.perf_counter() - t0
        parts = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"reference method: {ref:.1f} s wall (" + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + ")")
        print(f"ratio: {ref / ours:.1f}x (goal >= 25x); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
