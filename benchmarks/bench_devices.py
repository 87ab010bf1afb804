"""The full analysis (`run_analysis`, default options, default corpus) on the CPU and, when there is one, a GPU.

Prints the wall time per stage on each device and the card's name. Usage:
python benchmarks/bench_devices.py [--model NAME] [--dtype float32|bfloat16] [--devices cpu,cuda] [--full]
"""

from __future__ import annotations

import argparse
import time

import torch

FULL = dict(channels=True, local_checks=True, interventions=True)


def run_on(model_name: str, device: str, dtype: str, full: bool = False) -> dict[str, float]:
    import sd_lens
    from sd_lens.runtime.precision import parse_dtype

    t0 = time.perf_counter()
    model = sd_lens.load_model(model_name, device=device, dtype=parse_dtype(dtype))
    load = time.perf_counter() - t0
    opts = FULL if full else {}
    sd_lens.run_analysis(model, sd_lens.default_corpus()[:4])  # warm-up (kernels, caches)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = sd_lens.run_analysis(model, None, **opts)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    return {"load_model": load, **result.timings_s, "analysis_total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--full", action="store_true", help="also channels, local checks and interventions")
    parser.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda when there is one)")
    args = parser.parse_args()
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        print("no CUDA device: CPU only")
    what = "channels, local checks, interventions" if args.full else "run_analysis defaults"
    print(f"model {args.model}, {args.dtype}, default corpus, {what} (seconds)")
    rows = {d: run_on(args.model, d, args.dtype, args.full) for d in devices}
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    print(f"{'stage':28s}" + "".join(f"{d:>12s}" for d in devices))
    for k in keys:
        print(f"{k:28s}" + "".join(f"{rows[d].get(k, float('nan')):12.2f}" for d in devices))


if __name__ == "__main__":
    main()
