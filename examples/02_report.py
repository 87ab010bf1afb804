"""Write the singular-defect report of a model, then take its views and figures one by one.

Run:  .venv/bin/python examples/02_report.py [--model gemma-3-270m] [--out DIR]

Writes DIR/report.html (opens offline) and DIR/analysis.json, then, as a notebook would, gets
each circuitsvis view and matplotlib figure of the report separately: one view is saved as its
own offline HTML file and one figure as a PNG next to the report.
"""

import argparse
from pathlib import Path

import sd_lens
from sd_lens.pipeline import run_analysis
from sd_lens.report import figures_for, views_for, write_report

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default=sd_lens.DEFAULT_MODEL)
parser.add_argument("--out", type=Path, default=Path("sd_lens_report"))
args = parser.parse_args()

model = sd_lens.load_model(args.model)
result = run_analysis(model)  # default corpus; pass texts=[...] for your own
print(sd_lens.defects_summary(result.defects))

# 1. The whole report: one self-contained page plus the JSON.
path = write_report(model, result, args.out)
print(f"\nreport: {path.resolve()} ({path.stat().st_size / 1e6:.2f} MB)")

# 2. The same views one by one (in Jupyter, put one last in a cell to display it).
views = views_for(model, result)
for name, view in views.items():
    print(f"  {name:24s} {len(view.parts):2d} x {view.parts[0].component:14s} {view.title}")
single = args.out / "norm_trigger.html"
single.write_text(views["norm_trigger"].to_html(), encoding="utf-8")  # bundle included: works offline
print(f"one view on its own: {single.resolve()}")

# 3. The figures, as matplotlib figures.
figures = figures_for(result)
print("figures:", ", ".join(figures))
if "defect_angles" in figures:
    figures["defect_angles"].savefig(args.out / "defect_angles.png", dpi=100)
    print(f"angle chart: {(args.out / 'defect_angles.png').resolve()}")
