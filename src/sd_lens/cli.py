"""``sd-lens`` command line: ``analyze`` (JSON), ``report`` (HTML) and ``demo``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from sd_lens.errors import SdLensError
from sd_lens.models.loading import DEFAULT_MODEL, known_models


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name ({', '.join(known_models())}), HF dir or .gguf")
    p.add_argument("--text-file", type=Path, help="UTF-8 text file, one text per line (default: CPython docs corpus)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit", choices=["gaussian", "monte_carlo", "real"], default="gaussian", help="FFN linearisation")
    p.add_argument("--vocab", action="store_true", help="also sweep the whole vocabulary at each explosion block (slow)")
    p.add_argument("--vocab-limit", type=int, default=None, help="sweep only the first N token ids")
    p.add_argument("--device", default="cpu")
    p.add_argument("--progress", action="store_true", help="show progress bars")


def _analyze(args: argparse.Namespace, loaded: tuple[Any, float] | None = None):
    """Load the model (or take ``loaded``: a model and the seconds its load took) and analyse it."""
    import sd_lens
    from sd_lens.corpus import read_texts
    from sd_lens.pipeline import run_analysis

    t0 = time.perf_counter()
    if loaded is None:
        model = sd_lens.load_model(args.model, device=args.device)
        load_s = time.perf_counter() - t0
    else:
        model, load_s = loaded
        t0 -= load_s
    texts = read_texts(args.text_file) if args.text_file else None
    result = run_analysis(
        model, texts, seed=args.seed, fit_method=args.fit, vocab=args.vocab, vocab_limit=args.vocab_limit,
        progress=args.progress,
    )
    result.timings_s = {"load_model": load_s, **result.timings_s, "total": time.perf_counter() - t0}
    return model, result


def cmd_analyze(args: argparse.Namespace) -> int:
    _, result = _analyze(args)
    text = result.to_json(args.json)
    if args.json is None:
        print(text)
    else:
        print(result.defects.summary())
        print(f"JSON written to {args.json}")
    return 0


def cmd_report(args: argparse.Namespace, loaded: tuple[Any, float] | None = None) -> int:
    from sd_lens.report import write_report

    model, result = _analyze(args, loaded)
    path = write_report(model, result, args.out)
    print(result.defects.summary())
    print(f"Report written to {path.resolve()}")
    print(f"JSON written to {(path.parent / 'analysis.json').resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import sd_lens
    from sd_lens.analyses.norm_table import first_token_norms

    t0 = time.perf_counter()
    model = sd_lens.load_model(args.model)
    load_s = time.perf_counter() - t0
    table = first_token_norms(model, args.text)
    print(table.format())
    if args.report:
        args.text_file, args.seed, args.fit, args.vocab, args.vocab_limit = None, 0, "gaussian", False, None
        args.device, args.progress = "cpu", False
        return cmd_report(args, (model, load_s))  # the model loaded above, not a second load
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-lens", description="Find and verify singular defects of LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="run every analysis and write JSON")
    _common(a)
    a.add_argument("--json", type=Path, default=None, help="write the JSON here (default: print it)")
    a.set_defaults(func=cmd_analyze)
    r = sub.add_parser("report", help="run every analysis and write a self-contained HTML report")
    _common(r)
    r.add_argument("--out", type=Path, default=Path("sd_lens_report"), help="output directory")
    r.set_defaults(func=cmd_report)
    d = sub.add_parser("demo", help="norm table of a sentence, then the report (what `make demo` runs)")
    d.add_argument("--model", default=DEFAULT_MODEL)
    d.add_argument("--text", default="The cat sat on the mat because it was warm.")
    d.add_argument("--no-report", dest="report", action="store_false", help="only print the table")
    d.add_argument("--out", type=Path, default=Path("sd_lens_report"))
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SdLensError as exc:
        print(f"sd-lens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
