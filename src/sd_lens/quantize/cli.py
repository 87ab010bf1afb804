"""``sd-lens quantize``: W8A8 perplexity with and without the defect blocks' F2 in high precision.

``sd-lens quantize --model M [--text-file F] --json OUT``: finds the defects on the default corpus,
calibrates SmoothQuant on it, and measures perplexity on held-out text — ``--text-file`` (one text per
line; none of them may be in the corpus) or the default corpus's next ``--held-out-lines`` lines. Every
input and output is checked before the model loads (a bad one exits 2 with one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sd_lens.errors import InputError

__all__ = ["add_parser", "run"]


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``quantize`` command to ``sd-lens``'s subparsers; returns its parser."""
    from sd_lens.cli_common import add_text_file_arguments
    from sd_lens.models.loading import DEFAULT_MODEL, known_models

    p = subparsers.add_parser(
        "quantize", help="W8A8 fake-quantized perplexity, the defect blocks' F2 kept or not (Wang et al. 2025 §6)",
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"built-in name ({', '.join(known_models())}), HF dir, .gguf or Hugging Face model id")
    add_text_file_arguments(p, "held-out text for the perplexity, one text per line (default: the default corpus's "
                               "next --held-out-lines lines); the defects are found on the default corpus")
    p.add_argument("--json", type=Path, required=True, help="write the result here")
    p.add_argument("--schemes", default="rtn,per_token,smoothquant",
                   help="comma-separated: rtn, per_token, smoothquant (the first gets the random/all controls)")
    p.add_argument("--seeds", type=_positive, default=5, help="random-block controls (seeds 0..N-1; default 5)")
    p.add_argument("--held-out-lines", type=_positive, default=48, help="default held-out lines (default 48)")
    p.add_argument("--max-tokens-per-text", type=_positive, default=64, help="truncate texts (default 64)")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar (default: when stderr is a terminal)")
    p.set_defaults(func=run)
    return p


def _schemes(text: str) -> list[str]:
    from sd_lens.quantize.fake import SCHEMES

    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SCHEMES]
    if not names or bad or len(set(names)) != len(names):
        raise InputError(f"--schemes: give distinct names from {', '.join(SCHEMES)}, got {text!r}")
    return names


def run(args: argparse.Namespace) -> int:
    """Run ``sd-lens quantize``; 0 when done (errors are :class:`~sd_lens.errors.SdLensError`, exit 2 in
    :func:`sd_lens.cli.main`)."""
    from sd_lens.cli_common import device as _device
    from sd_lens.cli_common import load as _load
    from sd_lens.cli_common import texts as _texts
    from sd_lens.corpus import default_corpus, held_out_texts
    from sd_lens.outputs import notes_stream, output_file

    # every input and output is checked before the model loads
    schemes = _schemes(args.schemes)
    corpus = default_corpus()
    held = _texts(args.text_file, args.max_text_bytes) or held_out_texts(corpus, args.held_out_lines)
    overlap = set(held) & set(corpus)
    if overlap:
        raise InputError(f"--text-file: {len(overlap)} line(s) are in the analysis corpus (the default corpus), "
                         f"e.g. {next(iter(overlap))!r}; perplexity must be measured on held-out text")
    output_file(args.json, "--json")
    device = _device(args.device)
    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)

    from sd_lens.quantize.evaluate import quantization_experiment

    loaded = _load(args.model, device)
    result = quantization_experiment(
        loaded.model, corpus, held, schemes=schemes, seeds=tuple(range(args.seeds)),
        batch_size=args.batch_size, max_tokens_per_text=args.max_tokens_per_text, progress=progress,
    )
    result.to_json(args.json)
    notes = notes_stream(args.json)  # stderr when the JSON itself goes to standard output or a pipe
    print(result.summary(), file=notes)
    print(f"JSON written to {args.json}", file=notes)
    return 0
