"""Research scale: the analysis of synthetic models of 1B and 7B shape with a planted defect.

For each device, shape and dtype asked: builds ``sd_lens.synthetic_model(family, shape)`` (random init,
a planted initial-token defect: see docs/models.md), times a bare forward over the corpus (the same
batches as the norm probe, stopped after the last block), runs ``run_analysis`` (defaults, or ``--full``:
channel lens, local checks, interventions) and prints one JSON line: the time of each stage, the bare
forward, the peak memory of each stage, the weights' bytes, whether the planted block/channel were found.

Peak memory: a thread samples the process's resident memory (CPU) or the CUDA allocator's allocated
bytes (GPU) every 10 ms; a sample is attributed to the stage running at that moment, placed by the
durations ``run_analysis`` records (``timings_s``, consecutive). A stage shorter than the sampling
period may show the neighbour's figure.

A case that would not fit is skipped with the reason, before anything is built: the build needs the
float32 model (the defect is planted in float32, then cast), and the analysis what
``sd_lens.dry_run`` counts for it, against the device's free memory.

Usage: python benchmarks/bench_scale.py [--shapes 1b,7b] [--dtypes float32,bfloat16] [--devices cpu,cuda]
       [--family llama] [--texts 48] [--full] [--label contended]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import torch


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "CPU")
    except OSError:
        model = "CPU"
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Memory samples (time, bytes) every ``period`` s on a thread, until stopped."""

    def __init__(self, device: str, period: float = 0.01):
        self.device, self.period = device, period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        return int(torch.cuda.memory_allocated(self.device)) if self.device.startswith("cuda") else _rss()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.read()))
            time.sleep(self.period)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, t0: float, t1: float) -> int:
        inside = [b for t, b in self.samples if t0 <= t <= t1]
        return max(inside) if inside else 0


def _free(device: str) -> int:
    from sd_lens.runtime.precision import free_bytes

    return int(free_bytes(device) or 0)


def bench_case(family: str, shape: str, dtype: str, device: str, texts: list[str], full: bool) -> dict[str, Any]:
    import sd_lens
    from sd_lens.models.synthetic import resolve_shape
    from sd_lens.runtime import act_name, stream
    from sd_lens.runtime.precision import parse_dtype
    from sd_lens.runtime.reducers import token_norms
    from sd_lens.runtime.tokens import tokenize

    row: dict[str, Any] = {"family": family, "shape": shape, "dtype": dtype, "device": _device_name(device)}
    s = resolve_shape(shape)
    gated = family in ("llama", "mistral", "qwen2", "gemma3")
    n_params = s.n_params(gated=gated)
    free = _free(device)
    build_need = n_params * 4  # planted in float32
    plan = sd_lens.dry_run(shape, family=family, dtype=dtype, n_texts=len(texts), channels=full, local_checks=full,
                           interventions=full, budget_gb=free / 1e9, check=False)
    row.update(n_params=n_params, free_gb=round(free / 1e9, 1), dry_run_peak_gb=round(plan.peak.total / 1e9, 2))
    if build_need > 0.9 * free or not plan.fits:
        row["skipped"] = (f"needs {build_need / 1e9:.1f} GB to build in float32 and {plan.peak.total / 1e9:.1f} GB for "
                          f"the analysis ({plan.peak.stage}); {free / 1e9:.1f} GB free")
        return row
    torch_dtype = parse_dtype(dtype)
    row["memory_before_gb"] = round(Sampler(device).read() / 1e9, 2)  # the process before the build
    with Sampler(device) as sampler:
        t0 = time.perf_counter()
        model, planted = sd_lens.synthetic_model(family, shape, dtype=torch_dtype, device=device)
        row["build_s"] = round(time.perf_counter() - t0, 2)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        row["weights_gb"] = round(weights / 1e9, 2)
        # bare forward: the probe's batches, stopped after the last block, one norm per token kept
        tok = tokenize(model, texts, max_tokens_per_text=64)
        seqs = tok.sequences
        last = {act_name("resid_post", model.cfg.n_layers - 1): token_norms}
        for _ in stream(model, seqs[:2], last):  # warm-up
            pass
        t0 = time.perf_counter()
        for _ in stream(model, seqs, last, batch_size=16):
            pass
        row["bare_forward_s"] = round(time.perf_counter() - t0, 3)
        row["n_tokens"] = int(sum(len(q) for q in seqs))
        start = time.perf_counter()
        result = sd_lens.run_analysis(model, texts, channels=full, local_checks=full, interventions=full)
        end = time.perf_counter()
    row["analysis_s"] = round(end - start, 2)
    row["stages_s"] = {k: round(v, 3) for k, v in result.timings_s.items()}
    # stages back to back, ending at `end` (the little before the probe goes to the first stage)
    peaks: dict[str, float] = {}
    t = end - sum(result.timings_s.values())
    for name, dt in result.timings_s.items():
        peaks[name] = round(sampler.peak(t, t + dt) / 1e9, 2)
        t += dt
    row["peak_gb"] = peaks
    row["peak_over_weights"] = round(max(peaks.values()) / (weights / 1e9), 2) if peaks else None
    found = list(result.defects)
    row["planted"] = planted.to_dict() if planted is not None else None
    row["found"] = (
        len(found) == 1 and found[0].explosion_layer == planted.block
        and int(found[0].direction.abs().argmax()) == planted.channel
    ) if planted is not None else None
    row["failed_stages"] = dict(result.errors)
    del model, result
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1b,7b")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--family", default="llama")
    ap.add_argument("--texts", type=int, default=48)
    ap.add_argument("--full", action="store_true", help="also the channel lens, local checks and interventions")
    ap.add_argument("--label", default="", help="a note printed with every line (e.g. 'contended')")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # "device,shape,dtype": one case, in this process
    args = ap.parse_args()
    if args.one:
        from sd_lens.corpus import default_corpus

        device, shape, dtype = args.one.split(",")
        row = bench_case(args.family, shape, dtype, device, default_corpus(args.texts), args.full)
        row.update(load_average=round(os.getloadavg()[0], 2), label=args.label, full=args.full)
        print(json.dumps(row), flush=True)
        return
    # each case in a fresh process: its peak memory is its own, and nothing of one case stays for the next
    for device in args.devices.split(","):
        for shape in args.shapes.split(","):
            for dtype in args.dtypes.split(","):
                cmd = [sys.executable, __file__, "--one", f"{device},{shape},{dtype}", "--family", args.family,
                       "--texts", str(args.texts), "--label", args.label] + (["--full"] if args.full else [])
                done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
                if done.returncode:
                    print(json.dumps({"family": args.family, "shape": shape, "dtype": dtype, "device": device,
                                      "failed": f"exit status {done.returncode}"}), flush=True)
                else:
                    print(done.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
