"""``sd-lens signature``: compute a model's signature file, or compare models and signature files.

::

    sd-lens signature --model M [--text-file F] [--block B] --out sig.json
    sd-lens signature compare A B C ... [--json OUT] [--figure OUT.png] [--text-file F]

Each argument of ``compare`` is a signature file (JSON written by the first form) or a model name
(computed on the default corpus or ``--text-file``). Every input is checked before any model loads,
widths included where they can be read without loading (signature files, model folders, cached
bundled models): bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from sd_lens.errors import InputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``signature`` (with its ``compare`` sub-command) to an ``sd-lens`` sub-parser set."""
    from sd_lens.models.loading import DEFAULT_MODEL

    p = subparsers.add_parser(
        "signature",
        help="a model's high-norm signature (save it to a file), or compare models/files: sd-lens signature compare A B ...",
        description="Compute a model's singular-defect signature (empirical and weights directions) and save it, "
        "or compare models and signature files with `sd-lens signature compare A B ...`.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name, HF folder, .gguf or hub id")
    _shared(p)
    p.add_argument("--block", type=int, default=None, help="read the weights signature at this block (default: explosion block)")
    p.add_argument("--out", type=Path, default=None, help="write the signature file here (default: print a summary only)")
    sub = p.add_subparsers(dest="signature_command")
    c = sub.add_parser("compare", help="angle matrix of models and/or signature files")
    c.add_argument("items", nargs="+", help="signature files (.json) or model names")
    _shared(c, inherit=True)
    c.add_argument("--json", type=Path, default=None, help="write the angle matrix as JSON here")
    c.add_argument("--figure", type=Path, default=None, help="write the heat map here (.png, .pdf or .svg)")
    c.add_argument("--save-dir", type=Path, default=None, help="also save a signature file for each model computed")
    p.set_defaults(func=run)
    return p


def _shared(p: argparse.ArgumentParser, inherit: bool = False) -> None:
    """The options of both forms; ``inherit``: a value given before ``compare`` is kept (no default here)."""
    from sd_lens.cli_common import add_text_file_arguments

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if inherit else value

    add_text_file_arguments(p, "UTF-8 text file, one text per line (default: the default corpus)", default(None))
    p.add_argument("--threshold", type=float, default=default(4.0),
                   help="high-norm threshold, multiples of the block median (default: 4)")
    p.add_argument("--device", default=default("cpu"))


def _compute(name: str, texts: list[str] | None, args: argparse.Namespace, block: int | None = None) -> Any:
    import sd_lens
    from sd_lens.signature.signature import compute_signature

    model = sd_lens.load_model(name, device=args.device)
    return compute_signature(model, texts, block=block, threshold=args.threshold, name=name)


def _check_common(args: argparse.Namespace) -> list[str] | None:
    from sd_lens.cli_common import device as _device
    from sd_lens.cli_common import texts as _texts

    if not (args.threshold > 1 and args.threshold < float("inf")):
        raise InputError(f"--threshold {args.threshold}: give a finite multiple of the median above 1")
    texts = _texts(args.text_file, getattr(args, "max_text_bytes", None))
    args.device = _device(args.device)
    return texts


def _run_compute(args: argparse.Namespace) -> int:
    from sd_lens.outputs import output_file, writes_in_place
    from sd_lens.signature.store import save_signature

    texts = _check_common(args)
    if args.out is not None:
        output_file(args.out, "--out")
    sig = _compute(args.model, texts, args, block=args.block)
    if args.out is not None and writes_in_place(args.out):  # the file itself goes to stdout or a pipe
        save_signature(sig, args.out)
        print(f"Signature written to {args.out}", file=sys.stderr)
        return 0
    print(json.dumps(sig.to_dict(), indent=1))
    if args.out is not None:
        save_signature(sig, args.out)
        print(f"Signature written to {args.out}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from sd_lens.outputs import atomic_write_bytes, atomic_write_text, notes_stream, output_dir, output_file
    from sd_lens.report.figures import fig_to_png
    from sd_lens.signature.compare import angle_matrix, check_widths
    from sd_lens.signature.store import is_signature_file, load_signature, signature_width

    texts = _check_common(args)
    for path, flag in ((args.json, "--json"), (args.figure, "--figure")):
        if path is not None:
            output_file(path, flag)
    if args.figure is not None and args.figure.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise InputError(f"--figure {args.figure}: give a .png, .pdf or .svg file name")
    if args.save_dir is not None:
        output_dir(args.save_dir, "--save-dir")
    files = {item: is_signature_file(item) for item in args.items}
    for item in args.items:
        if not files[item] and item.endswith(".json"):
            load_signature(item)  # raises the InputError that says what is wrong with the file
    check_widths([(item, signature_width(item)) for item in args.items])  # before any model loads
    sigs = []
    for item in args.items:
        if files[item]:
            sigs.append(load_signature(item))
            continue
        t0 = time.perf_counter()
        sig = _compute(item, texts, args)
        print(f"{item}: signature computed in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        check_widths([(s.model, s.d_model) for s in [*sigs, sig]])  # widths only known after loading
        if args.save_dir is not None:
            from sd_lens.signature.store import save_signature

            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in item)
            save_signature(sig, args.save_dir / f"{safe}.signature.json")
        sigs.append(sig)
    matrix = angle_matrix(sigs, names=[Path(i).stem.removesuffix(".signature") if files[i] else i for i in args.items])
    print(matrix.table("empirical"))
    print()
    print(matrix.table("weights"))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(matrix.to_dict(), indent=1) + "\n")
        print(f"JSON written to {args.json}", file=notes_stream(args.json))
    if args.figure is not None:
        fig = matrix.figure()
        if args.figure.suffix.lower() == ".png":
            atomic_write_bytes(args.figure, fig_to_png(fig))
        else:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=args.figure.suffix.lower()[1:], bbox_inches="tight")
            atomic_write_bytes(args.figure, buffer.getvalue())
        print(f"Figure written to {args.figure}", file=notes_stream(args.figure))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``sd-lens signature`` (compute) or ``sd-lens signature compare``; returns the exit code."""
    if getattr(args, "signature_command", None) == "compare":
        return _run_compare(args)
    return _run_compute(args)


def main(argv: list[str] | None = None) -> int:
    """``python -m sd_lens.signature.cli``: the same as ``sd-lens signature`` (exit 2 on bad input)."""
    from sd_lens.cli_common import run_command

    parser = argparse.ArgumentParser(prog="sd-lens", description="Find and verify singular defects of LLMs.")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run_command(parser, ["signature", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
