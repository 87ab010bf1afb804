"""The three FFN fits of sd_lens against the paper's 100 000-sample fit, on SmolLM2-135M-Instruct.

For each chosen block (default: 0, 2, 9, 11, 20, 28, 29 — the explosion and decay blocks of the
two defects in ../shared/SPEC.md and a few others; ``--layers all`` for every block):

* ``paper``        the reference computation of haoqiwang/singular_defect
                   (``singular_dir_mlp_llama2``) on the Hugging Face block with its *unfolded*
                   weights: ``X = randn(100000, d)`` as the MLP input after the norm's scale γ₂,
                   ``Y = silu(gate(X)) * up(X)``, ``torch.linalg.lstsq(X, Y)`` on the full matrices,
                   ``F = W_down · Mᵀ · diag(γ₂)``;
* ``mc``           ``fit_ffn(method="monte_carlo", n_samples=100_000)``: normal equations in chunks,
                   ``n ~ N(0, I)`` *before* γ₂ (the normalised input), no intercept;
* ``closed``       ``fit_ffn(method="gaussian")``: Stein closed form for ``n ~ N(0, I)``;
* ``closed@paper`` the same closed form for the paper's input distribution (isotropic after γ₂),
                   i.e. the infinite-sample limit of ``paper``;
* ``real``         ``fit_ffn(method="real")`` on normalised FFN inputs of ``--lines`` non-empty lines of
                   ``pydoc_data.topics`` (initial token excluded), 80 % fit / 20 % held out;
* ``real-64``      the same on the rows of the first 64 lines only (minus held-out rows).

Columns: fit time (seconds, the fit alone), R² of the FFN output's *linear part* on 20 000 fresh
``N(0, I)`` inputs and on the held-out real inputs (centred: ``1 − Σ‖Δy − FΔn‖² / Σ‖Δy‖²`` with
Δ = deviation from the evaluation set's mean, so every fit is judged by its slope ``F`` alone),
the acute angle between ``u₀(F)`` and ``u₀(F_paper)``, the angle between ``u₀(F)`` and the
initial token's residual state after the block (``x₀``; a high-norm defect state from block 2
on in SmolLM2, so a small angle there means ``u₀`` points along the defect), and ``s₀``.

Usage::

    .venv/bin/python benchmarks/bench_ffn_fit.py [--layers 0,2,11 | all] [--lines 512]
        [--samples 100000] [--seed 0] [--json OUT]

Timings are wall-clock on whatever else the machine is doing: the load average is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

import torch

DEFAULT_LAYERS = (0, 2, 9, 11, 20, 28, 29)


def corpus_lines(n: int) -> list[str]:
    """The first ``n`` non-empty lines of the ``pydoc_data.topics`` topics, in sorted topic order."""
    from pydoc_data.topics import topics

    lines: list[str] = []
    for key in sorted(topics):
        lines += [ln.strip() for ln in topics[key].splitlines() if ln.strip()]
        if len(lines) >= n:
            break
    return lines[:n]


def paper_fit(hf_layer, n_samples: int, seed: int) -> tuple[torch.Tensor, float]:
    """The reference's ``singular_dir_mlp_llama2`` (no identity): M in normalised-input space."""
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.manual_seed(seed)
        mlp = hf_layer.mlp
        N = hf_layer.post_attention_layernorm.weight.shape[0]
        X = torch.randn(n_samples, N)
        Y = (torch.nn.functional.silu(mlp.gate_proj(X)) * mlp.up_proj(X)).float()
        sol = torch.linalg.lstsq(X, Y)
        A2 = sol.solution.T.float()  # [d_mlp, d]: hidden ≈ A2 h with h = γ₂ ⊙ n
        gamma = hf_layer.post_attention_layernorm.weight.float()
        M = A2 * gamma[None, :]  # hidden ≈ (A2 diag γ₂) n
        del X, Y, sol
    return M, time.perf_counter() - t0


def slope_r2(view, M: torch.Tensor, X: torch.Tensor, chunk: int = 4096) -> float:
    """Centred R² of the FFN output explained by the slope alone, pooled over coordinates."""
    F = view.W_out.T @ M  # [d, d]
    mean_n = X.double().mean(0)
    ys, sum_y = [], torch.zeros(view.d_model, dtype=torch.float64)
    res = tot = 0.0
    # two passes: means first, then residuals
    with torch.no_grad():
        for lo in range(0, X.shape[0], chunk):
            y = view.ffn_hidden(X[lo:lo + chunk]) @ view.W_out
            ys.append(y)
            sum_y += y.double().sum(0)
        mean_y = sum_y / X.shape[0]
        for i, lo in enumerate(range(0, X.shape[0], chunk)):
            dy = ys[i].double() - mean_y
            dn = X[lo:lo + chunk].double() - mean_n
            res += float((dy - dn @ F.double().T).pow(2).sum())
            tot += float(dy.pow(2).sum())
    return 1.0 - res / tot


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default=",".join(map(str, DEFAULT_LAYERS)))
    ap.add_argument("--lines", type=int, default=512)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.WARNING)
    from transformers import AutoModelForCausalLM

    import sd_lens
    from sd_lens.analyses.ffn_fit import fit_ffn
    from sd_lens.analyses.ffn_inputs import collect_ffn_inputs
    from sd_lens.linalg import acute_angle_deg
    from sd_lens.models.loading import converted_model_dir
    from sd_lens.models.view import model_view

    name = "smollm2-135m-instruct"
    t0 = time.perf_counter()
    model = sd_lens.load_model(name)
    hf = AutoModelForCausalLM.from_pretrained(converted_model_dir(name), dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    mv = model_view(model)
    layers = list(range(mv.n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]

    # ---- real inputs: one pass over the corpus collects every chosen block -----------------------
    lines = corpus_lines(args.lines)
    t0 = time.perf_counter()
    real = collect_ffn_inputs(model, lines, layers, max_tokens=None)
    collect_s = time.perf_counter() - t0
    rows_per_line = [model.to_tokens(ln).shape[1] - 1 for ln in lines]  # initial token excluded
    n_rows = real[layers[0]].shape[0]
    assert n_rows == sum(rows_per_line)
    first64 = sum(rows_per_line[:64])
    n_hold = int(round(0.2 * n_rows))
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(args.seed))  # as fit_ffn(real)
    eval_idx, fit_idx = perm[:n_hold], perm[n_hold:]
    idx64 = fit_idx[fit_idx < first64].sort().values

    # initial token's residual state after each block (deterministic: it attends only to itself)
    x0: dict[int, torch.Tensor] = {}

    def grab(layer):
        def hook(t, hook):
            x0[layer] = t[0, 0].detach().float().clone()

        return hook

    with torch.no_grad():
        model.run_with_hooks(model.to_tokens(lines[0]), stop_at_layer=max(layers) + 1,
                             fwd_hooks=[(f"blocks.{lay}.hook_resid_post", grab(lay)) for lay in layers])

    gauss_eval = torch.randn(20_000, mv.d_model, generator=torch.Generator().manual_seed(args.seed + 1))
    print(f"model {name}: load {load_s:.1f} s; corpus {len(lines)} lines, {n_rows} FFN inputs per block "
          f"({first64} from the first 64 lines), collected for {len(layers)} blocks in {collect_s:.1f} s; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    header = f"{'block':>5} {'fit':<13} {'time s':>8} {'R² gauss':>9} {'R² real':>9} {'∠paper°':>8} {'∠x₀°':>7} {'s₀':>9}"
    print(header)
    print("-" * len(header), flush=True)

    results = []
    totals: dict[str, float] = {}
    for layer in layers:
        view = mv.block(layer)
        hf_layer = hf.model.layers[layer]
        gamma = hf_layer.post_attention_layernorm.weight.detach().float()
        X = real[layer]
        fits: dict[str, tuple[torch.Tensor, float]] = {}
        fits["paper"] = paper_fit(hf_layer, args.samples, args.seed)
        f = fit_ffn(view, None, "monte_carlo", n_samples=args.samples, n_eval=0, seed=args.seed)
        fits["mc"] = (f.M, f.fit_seconds)
        f = fit_ffn(view, None, "gaussian", n_eval=0)
        fits["closed"] = (f.M, f.fit_seconds)
        raw = dataclasses.replace(
            view,
            W_gate=hf_layer.mlp.gate_proj.weight.detach().float().T.contiguous(),
            W_in=hf_layer.mlp.up_proj.weight.detach().float().T.contiguous(),
            ln2_scale=torch.ones_like(gamma),
        )
        f = fit_ffn(raw, None, "gaussian", n_eval=0)
        fits["closed@paper"] = (f.M * gamma[None, :], f.fit_seconds)
        f = fit_ffn(view, None, "real", inputs=X, seed=args.seed)
        fits["real"] = (f.M, f.fit_seconds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = fit_ffn(view, None, "real", inputs=X[idx64], holdout=0.0)
        fits["real-64"] = (f.M, f.fit_seconds)

        U_paper = torch.linalg.svd((view.W_out.T @ fits["paper"][0]).double())[0][:, 0]
        for method, (M, secs) in fits.items():
            F = (view.W_out.T.double() @ M.double())
            U, S, _ = torch.linalg.svd(F)
            row = dict(
                layer=layer, fit=method, seconds=secs,
                r2_gauss=slope_r2(view, M, gauss_eval), r2_real=slope_r2(view, M, X[eval_idx]),
                angle_paper=float(acute_angle_deg(U[:, 0], U_paper)),
                angle_x0=float(acute_angle_deg(U[:, 0], x0[layer])), s0=float(S[0]),
                n_fit={"paper": args.samples, "mc": args.samples, "real": len(fit_idx),
                       "real-64": len(idx64)}.get(method, 0),
            )
            results.append(row)
            totals[method] = totals.get(method, 0.0) + secs
            print(f"{layer:>5} {method:<13} {secs:>8.2f} {row['r2_gauss']:>9.4f} {row['r2_real']:>9.4f} "
                  f"{row['angle_paper']:>8.2f} {row['angle_x0']:>7.2f} {row['s0']:>9.2f}", flush=True)
        print(flush=True)

    print("total fit time over", len(layers), "blocks:",
          ", ".join(f"{k} {v:.1f} s" for k, v in totals.items()))
    print(f"real inputs: {len(fit_idx)} fitted / {n_hold} held out (real-64: {len(idx64)} fitted, "
          f"input dimension {mv.d_model}); collection {collect_s:.1f} s for all blocks at once")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(model=name, layers=layers, lines=len(lines), n_rows=n_rows, collect_s=collect_s,
                           samples=args.samples, seed=args.seed, results=results), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
