"""Long contexts (issue 24, item 5): one text of 512 / 2 048 / 8 000 tokens through `run_analysis`.

Each length runs in a fresh process (so its peak RSS is its own): the model is loaded, one text of CPython
prose (the bundled corpus's lines joined, cut to N tokens) is analysed with default settings, and the
script prints per stage the seconds and the peak resident memory while that stage ran (sampled every
10 ms), then the whole run's wall time and peak RSS. ``--eager`` measures the code before the long-context
work for comparison: the bridge's eager attention (``attention_path("eager")``) and the defect finder
re-running every traced carrier's prefix (``TRACE_BUDGET_BYTES = 0``).

Usage: python benchmarks/bench_long_context.py [--model NAME] [--lengths 512 2048 8000] [--eager]
The load average is printed beside the figures: CPU contention inflates every number.
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

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE


class _Sampler:
    """The largest RSS since the last :meth:`take`, sampled by a daemon thread."""

    def __init__(self) -> None:
        self.peak = _rss()
        self.lock = threading.Lock()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            r = _rss()
            with self.lock:
                self.peak = max(self.peak, r)
            time.sleep(0.01)

    def take(self) -> int:
        with self.lock:
            peak, self.peak = max(self.peak, _rss()), _rss()
        return peak


def _one(model_name: str, n_tokens: int, eager: bool) -> dict[str, Any]:
    """One analysis in this process; per-stage seconds and peak RSS (bytes)."""
    import sd_lens
    from sd_lens import pipeline
    from sd_lens.corpus import _prose_lines
    from sd_lens.runtime import tokenize
    from sd_lens.runtime.attention import attention_path

    sampler = _Sampler()
    model = sd_lens.load_model(model_name)
    text = "\n".join(_prose_lines())
    tok = tokenize(model, [text], max_tokens_per_text=n_tokens)
    n_real = len(tok.sequences[0])
    loaded_rss = sampler.take()
    peaks: dict[str, int] = {}

    class _Clock:  # pipeline's `time`: each tick(name) call closes a stage; the peak since the last one is its own
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        @staticmethod
        def perf_counter() -> float:
            caller = sys._getframe(1)
            peak = sampler.take()
            if caller.f_code.co_name == "tick":
                stage = caller.f_locals["name"]
                peaks[stage] = max(peaks.get(stage, 0), peak)
            return time.perf_counter()

    pipeline.time = _Clock()  # type: ignore[assignment]
    if eager:
        from sd_lens.analyses import defects

        defects.TRACE_BUDGET_BYTES = 0  # type: ignore[misc]
    t0 = time.perf_counter()
    with attention_path("eager" if eager else "auto"):
        result = pipeline.run_analysis(model, [text], max_tokens_per_text=n_tokens, seed=0)
    wall = time.perf_counter() - t0
    return {
        "tokens": n_real,
        "stages": {k: [round(v, 2), peaks.get(k, 0)] for k, v in result.timings_s.items()},
        "wall_s": round(wall, 1),
        "loaded_rss": loaded_rss,
        "peak_rss": max([loaded_rss, *peaks.values(), sampler.take()]),
        "defects": [(d.explosion_layer, d.decay_layers) for d in result.defects],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8000])
    parser.add_argument("--eager", action="store_true", help="the code before: eager attention, carriers re-run")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(_one(args.model, args.one, args.eager)))
        return
    import torch

    gb = 1e9
    print(f"model {args.model}, torch threads {torch.get_num_threads()}, "
          f"{'eager attention, carriers re-run' if args.eager else 'lean attention, carriers from the direction pass'}")
    for n in args.lengths:
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--model", args.model, "--one", str(n), *(["--eager"] if args.eager else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{n} tokens failed:\n{proc.stderr[-3000:]}")
        out = proc.stdout.strip().splitlines()[-1]
        r = json.loads(out)
        analysis_peak = max(peak for _, peak in r["stages"].values())
        print(f"\n{r['tokens']} tokens (load average {load:.1f} before): run_analysis {r['wall_s']} s, "
              f"peak RSS during the analysis {analysis_peak / gb:.2f} GB (while loading the model "
              f"{r['loaded_rss'] / gb:.2f} GB); defects (explosion, decay) {r['defects']}")
        print("| stage | seconds | peak RSS (GB) |\n|---|---|---|")
        for stage, (secs, peak) in r["stages"].items():
            print(f"| {stage} | {secs} | {peak / gb:.2f} |")


if __name__ == "__main__":
    main()
