"""What the channel lens (`sd-lens analyze --channels`) adds to `sd-lens analyze`, stage by stage.

Target (issue #10): the outlier, weight and sink analyses (stages ``outliers_and_sinks`` — massive
activations and attention sinks share one stream of forwards — and ``weight_outliers``) add <= 25 %
to `sd-lens analyze` on SmolLM2, measured in
the same run. The attribution, the lever and the life cycle (stages ``attribution``, ``lever``, ``life_cycle``) are
printed apart.
Each configuration runs in a fresh process with a warm model cache, alternating, best of
``--repeats`` by total time.

Usage: python benchmarks/bench_channels.py [--model NAME] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LENS = ("outliers_and_sinks", "weight_outliers")
CAUSAL = ("attribution", "lever", "life_cycle")


def analyze(model: str, channels: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a.json"
        cmd = [sys.executable, "-m", "sd_lens.cli", "analyze", "--model", model, "--json", str(out), "--no-progress"]
        if channels:
            cmd.append("--channels")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        timings = json.loads(out.read_text())["timings_s"]
    return {"process_wall_s": wall, **timings}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for channels in (False, True):
            runs[channels].append(analyze(args.model, channels))
    plain = min(runs[False], key=lambda r: r["total"])
    lens = min(runs[True], key=lambda r: r["total"])
    print(f"`sd-lens analyze --model {args.model}` without / with --channels (best of {args.repeats}, fresh processes)")
    for key in sorted(set(plain) | set(lens), key=lambda k: (k in LENS + CAUSAL, k)):
        a, b = plain.get(key), lens.get(key)
        print(f"  {key:<22} {'' if a is None else f'{a:8.2f}':>8} {'' if b is None else f'{b:8.2f}':>10} s")
    added = sum(lens.get(k, 0.0) for k in LENS)
    causal = sum(lens.get(k, 0.0) for k in CAUSAL)
    base = plain["total"]
    print(f"\noutlier + weight + sink analyses: {added:.2f} s = {added / base:.1%} of analyze without them ({base:.2f} s)")
    print(f"  target: <= 25 % -> {'OK' if added / base <= 0.25 else 'MISSED'}")
    print(f"attribution + lever + life cycle: {causal:.2f} s = {causal / base:.1%}")
    wall = lens["process_wall_s"] - plain["process_wall_s"]
    print(f"fresh-process wall time: {plain['process_wall_s']:.2f} s -> {lens['process_wall_s']:.2f} s "
          f"(+{wall:.2f} s, +{wall / plain['process_wall_s']:.1%}, everything --channels adds)")
    print(f"whole --channels run: {lens['total']:.2f} s vs {base:.2f} s (x{lens['total'] / base:.2f})")


if __name__ == "__main__":
    main()
