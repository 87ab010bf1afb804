"""Signature lineage on the bundled models: a fine-tuned relative and a rotated control of SmolLM2, and Gemma-3.

What it does (all on the CPU, a few minutes on 2 cores):

1. SmolLM2-135M-Instruct's two signatures (:func:`sd_lens.signature.compute_signature`) on the default
   corpus (A, 48 lines) and on 48 disjoint lines of the same source (B, ``held_out_texts``): the
   stability angle of each signature across corpora.
2. A **relative**: SmolLM2 fine-tuned (full fine-tune, AdamW) on text that is in neither corpus —
   prose from the docstrings of Python's standard library (``finetune_texts``) — reporting the relative
   weight change ``‖ΔW‖/‖W‖`` (all parameters, and the explosion block's) and the perplexity before and
   after, on held-out docstring lines (the fine-tune's domain) and on corpus B.
3. A same-width **control**: SmolLM2 with its residual basis rotated by a random orthogonal ``Q``
   (:func:`sd_lens.signature.rotate_residual`; function-preserving, checked by perplexity), and the
   check that its signatures are ``Qᵀ`` times the original's.
4. Gemma-3-270M's signatures on A and B (its stability), and the width error against SmolLM2.
5. The angle matrix of base / relative / control (table, JSON, heat map) and every signature file.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/signature_lineage.py --out results/ [--steps 40] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

import sd_lens
from sd_lens.analyses.outlier_interventions import perplexity
from sd_lens.corpus import default_corpus, held_out_texts
from sd_lens.errors import InputError
from sd_lens.linalg import acute_angle_deg
from sd_lens.models.loading import bridge_from_hf, converted_model_dir
from sd_lens.report.figures import fig_to_png
from sd_lens.runtime.tokens import tokenize
from sd_lens.signature import angle_matrix, compute_signature, rotate_residual, save_signature, signature_angle

FINETUNE_MODULES = (
    "argparse", "collections", "csv", "datetime", "functools", "itertools", "json", "logging", "os", "pathlib",
    "re", "shutil", "statistics", "string", "subprocess", "textwrap", "threading", "typing", "unittest", "zipfile",
)


def finetune_texts(exclude: Sequence[str] = ()) -> list[str]:
    """Prose paragraphs (one line each, 60-400 characters) of the docstrings of some stdlib modules, in a fixed order.

    A different source from the analysis corpus (the reference manual's topics); lines in ``exclude`` are dropped.
    """
    seen, out = set(exclude), []
    for name in FINETUNE_MODULES:
        module = importlib.import_module(name)
        objects = [module] + [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]
        for obj in objects:
            if not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = inspect.getdoc(obj) or ""
            for para in doc.split("\n\n"):
                text = " ".join(line.strip() for line in para.splitlines())
                if 60 <= len(text) <= 400 and ">>>" not in text and " " in text and text not in seen:
                    seen.add(text)
                    out.append(text)
    return out


def fine_tune(
    hf: Any, sequences: Sequence[torch.Tensor], *, steps: int, lr: float, batch: int = 4, seq_len: int = 64, seed: int = 0
) -> list[float]:
    """Full fine-tune of an HF causal LM in place (AdamW, clip 1.0, next-token loss) on chunks of the token stream.

    The sequences are concatenated and cut into ``seq_len`` chunks; each step takes ``batch`` random chunks.
    Returns the loss of every step.
    """
    stream = torch.cat(list(sequences))
    n_chunks = len(stream) // seq_len
    if n_chunks < batch:
        raise InputError(f"only {n_chunks} chunks of {seq_len} tokens: give more fine-tuning text")
    chunks = stream[: n_chunks * seq_len].view(n_chunks, seq_len)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(hf.parameters(), lr=lr, weight_decay=0.0)
    hf.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, n_chunks, (batch,), generator=gen)
        x = chunks[idx]
        loss = hf(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    hf.eval()
    return losses


def relative_change(before: dict[str, torch.Tensor], after: Any, prefix: str = "") -> float:
    """``‖ΔW‖ / ‖W‖`` over the parameters whose name starts with ``prefix`` (Frobenius, all pooled)."""
    num = den = 0.0
    for name, p in after.named_parameters():
        if name.startswith(prefix) and name in before:
            num += float((p.detach() - before[name]).double().pow(2).sum())
            den += float(before[name].double().pow(2).sum())
    return math.sqrt(num / den) if den else float("nan")


def load_hf(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_model_dir(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, add_bos_token=True)
    return hf, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-gemma", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    res: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    T0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)

    A = default_corpus()
    B = held_out_texts(A, len(A))
    assert not set(A) & set(B)
    ft_all = finetune_texts(exclude=[*A, *B])
    ft_eval, ft_train = ft_all[:48], ft_all[48:]
    res["corpora"] = {"A": len(A), "B": len(B), "finetune_train": len(ft_train), "finetune_eval": len(ft_eval)}
    log(f"corpora: A {len(A)}, B {len(B)}, fine-tune train {len(ft_train)} / eval {len(ft_eval)} lines")

    name = "smollm2-135m-instruct"
    base = sd_lens.load_model(name)
    sig_a = compute_signature(base, A, name="smollm2")
    log(f"base on A: block {sig_a.block}, defect {sig_a.defect}, self angle {sig_a.self_angle_deg:.2f}")
    sig_b = compute_signature(base, B, name="smollm2 (corpus B)")
    stab = {k: signature_angle(sig_a, sig_b, k) for k in ("empirical", "weights")}
    res["smollm2_stability_deg"] = stab
    res["smollm2_blocks"] = {"A": sig_a.block, "B": sig_b.block}
    log(f"SmolLM2 stability A vs B: {stab} (blocks {sig_a.block}, {sig_b.block})")
    save_signature(sig_a, args.out / "smollm2.signature.json")
    save_signature(sig_b, args.out / "smollm2_corpusB.signature.json")

    # ---- fine-tuned relative
    hf, tok = load_hf(name)
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    train_seqs = tokenize(base, ft_train, max_tokens_per_text=args.seq_len).sequences
    ppl_before = {
        "finetune_eval": perplexity(base, ft_eval, kl=False).perplexity,
        "corpus_B": perplexity(base, B, kl=False).perplexity,
    }
    log(f"perplexity before: {ppl_before}")
    t = time.perf_counter()
    losses = fine_tune(hf, train_seqs, steps=args.steps, lr=args.lr, batch=args.batch, seq_len=args.seq_len, seed=args.seed)
    ft_seconds = time.perf_counter() - t
    blk = sig_a.block
    change = {
        "all": relative_change(before, hf),
        f"block_{blk}": relative_change(before, hf, f"model.layers.{blk}."),
        "embedding": relative_change(before, hf, "model.embed_tokens"),
    }
    n_tokens = args.steps * args.batch * args.seq_len
    log(f"fine-tuned {args.steps} steps ({n_tokens} tokens, {ft_seconds:.0f} s): loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
        f"relative change {change}")
    relative = bridge_from_hf(hf, tok, name="smollm2-finetuned")
    ppl_after = {
        "finetune_eval": perplexity(relative, ft_eval, kl=False).perplexity,
        "corpus_B": perplexity(relative, B, kl=False).perplexity,
    }
    log(f"perplexity after: {ppl_after}")
    res["finetune"] = {
        "steps": args.steps, "lr": args.lr, "tokens": n_tokens, "seconds": round(ft_seconds, 1),
        "loss_first": losses[0], "loss_last": losses[-1], "losses": [round(x, 4) for x in losses],
        "relative_weight_change": change, "perplexity_before": ppl_before, "perplexity_after": ppl_after,
    }
    sig_ft = compute_signature(relative, A, name="smollm2-finetuned")
    save_signature(sig_ft, args.out / "smollm2_finetuned.signature.json")
    log(f"relative: block {sig_ft.block}, defect {sig_ft.defect}")

    # ---- rotated control
    hf0, tok0 = load_hf(name)
    rot_hf, Q = rotate_residual(hf0, seed=args.seed + 1)
    del hf0
    control = bridge_from_hf(rot_hf, tok0, name="smollm2-rotated")
    ppl_rot = perplexity(control, B, kl=False).perplexity
    log(f"rotated control perplexity on B {ppl_rot:.4f} (base {ppl_before['corpus_B']:.4f})")
    sig_rot = compute_signature(control, A, name="smollm2-rotated")
    save_signature(sig_rot, args.out / "smollm2_rotated.signature.json")
    back = {
        "empirical": float(acute_angle_deg(Q.T @ sig_a.empirical, sig_rot.empirical)) if sig_rot.empirical is not None else None,
        "weights": float(acute_angle_deg(Q.T @ sig_a.weights, sig_rot.weights)),
    }
    res["control"] = {"perplexity_corpus_B": ppl_rot, "block": sig_rot.block, "equivariance_deg": back}
    log(f"control: block {sig_rot.block}; angle(Qᵀ s_base, s_rot): {back}")

    m = angle_matrix([sig_a, sig_b, sig_ft, sig_rot], names=["smollm2", "smollm2 (B)", "fine-tuned", "rotated"])
    res["matrix"] = m.to_dict()
    res["relative_deg"] = {k: m.angle("smollm2", "fine-tuned", k) for k in ("empirical", "weights")}
    res["control_deg"] = {k: m.angle("smollm2", "rotated", k) for k in ("empirical", "weights")}
    print(m.table("empirical"))
    print(m.table("weights"))
    (args.out / "lineage_matrix.png").write_bytes(fig_to_png(m.figure()))

    # ---- Gemma-3
    if not args.skip_gemma:
        del relative, control, hf, rot_hf
        gemma = sd_lens.load_model("gemma-3-270m")
        g_a = compute_signature(gemma, A, name="gemma-3")
        g_b = compute_signature(gemma, B, name="gemma-3 (corpus B)")
        save_signature(g_a, args.out / "gemma3.signature.json")
        save_signature(g_b, args.out / "gemma3_corpusB.signature.json")
        res["gemma3_stability_deg"] = {k: signature_angle(g_a, g_b, k) for k in ("empirical", "weights")}
        res["gemma3"] = {"A": g_a.to_dict(), "B": g_b.to_dict()}
        log(f"Gemma-3 stability A vs B: {res['gemma3_stability_deg']} (blocks {g_a.block}, {g_b.block}), "
            f"self angle {g_a.self_angle_deg:.2f}")
        try:
            angle_matrix([sig_a, g_a])
        except InputError as exc:
            res["width_error"] = str(exc)
            log(f"width error: {exc}")
    res["signatures"] = {s.model: s.to_dict() for s in (sig_a, sig_b, sig_ft, sig_rot)}
    res["seconds"] = round(time.perf_counter() - T0, 1)
    (args.out / "lineage.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
