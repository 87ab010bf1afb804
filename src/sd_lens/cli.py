"""``sd-lens`` command line: ``analyze`` (JSON), ``report`` (HTML), ``demo``, ``signature`` and ``quantize``.

The analysis flags are generated from :class:`sd_lens.pipeline.AnalysisConfig` (one flag per field,
see :func:`add_config_arguments`), so an option added there appears here with its help text.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Sequence

from sd_lens.cli_common import Loaded, add_text_file_arguments, run_command
from sd_lens.cli_common import device as _device
from sd_lens.cli_common import load as _load
from sd_lens.cli_common import texts as _texts
from sd_lens.errors import InputError
from sd_lens.models.loading import DEFAULT_MODEL, DEVICE_MAP_NAMES, known_models
from sd_lens.outputs import is_stdout, notes_stream, output_dir, output_file
from sd_lens.pipeline import AnalysisConfig, AnalysisResult
from sd_lens.report.prose import defects_summary


def _flag(name: str, meta: Any) -> str:
    return str(meta.get("flag", "--" + name.replace("_", "-")))


def _argument(annotation: Any) -> tuple[Any, bool, tuple[Any, ...] | None]:
    """(argparse type, None allowed, choices) of a field's annotation: ``int | None``, ``Literal[...]``..."""
    hint, optional = annotation, False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else str
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        return type(choices[0]), optional, choices
    return hint, optional, None


def _or_none(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its errors
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type = AnalysisConfig) -> None:
    """Add one flag per :class:`AnalysisConfig` field (``--kebab-name``, or the field's ``flag``).

    A ``bool`` field becomes ``--flag`` / ``--no-flag``; a ``Literal`` field gets its values as
    choices; a field that may be None accepts ``none``.
    """
    hints = typing.get_type_hints(config_class)
    for f in fields(config_class):
        meta = f.metadata
        kind, optional, choices = _argument(hints[f.name])
        help_text = str(meta.get("help", ""))
        if kind is bool:
            if f.name == "progress":  # on by default where a person watches (stderr is a terminal)
                parser.add_argument(
                    "--progress", dest="progress", action=argparse.BooleanOptionalAction, default=None,
                    help=help_text + " (default: when stderr is a terminal)",
                )
                continue
            action = "store_true" if f.default is False else argparse.BooleanOptionalAction
            parser.add_argument(_flag(f.name, meta), dest=f.name, action=action, default=f.default, help=help_text)
            continue
        shown = f" (default: {f.default}{'; none for no limit' if optional and kind is int else ''})"
        parser.add_argument(
            _flag(f.name, meta), dest=f.name, type=_or_none(kind) if optional else kind, default=f.default,
            choices=choices, help=help_text + shown,
        )


def config_from_args(args: argparse.Namespace) -> AnalysisConfig:
    """The :class:`AnalysisConfig` the parsed flags describe (validated)."""
    values = {f.name: getattr(args, f.name) for f in fields(AnalysisConfig)}
    if values.get("progress") is None:
        values["progress"] = sys.stderr.isatty()
    return AnalysisConfig(**values)


def _local_model_dir(model: str) -> Path | None:
    """The folder holding ``model``'s config.json without loading or downloading anything: a model
    folder, a bundled model already converted, a Hugging Face snapshot already cached; else None."""
    from sd_lens.models.sources.bundled import cache_dir, known_models
    from sd_lens.models.sources.hub import _cached_snapshot, is_hub_id

    path = Path(model)
    if path.is_dir():
        return path if (path / "config.json").is_file() else None
    if model in known_models():
        cached = cache_dir(model)
        return cached if (cached / "config.json").is_file() else None
    if is_hub_id(model):
        try:
            return _cached_snapshot(model)
        except Exception:  # noqa: BLE001 - a pre-check only: the load says what is wrong
            return None
    return None


def _check_trigger_text(model: str, text: str) -> None:
    """Refuse, before the model loads, a ``--trigger-text`` longer than the model's context, where the
    context (config.json) and the tokenizer (tokenizer.json) can be read without loading the model.

    A text of at most ``context - 2`` UTF-8 bytes always fits (a token covers at least one byte; BOS
    and EOS are the only extras), so only longer ones are tokenised here; the exact check, on the
    model's own tokenisation, runs again before any analysis (:func:`sd_lens.analyses.causal.trigger_tokens`).
    """
    import json

    from sd_lens.pipeline import DEFAULT_TRIGGER_TEXT

    folder = None if text == DEFAULT_TRIGGER_TEXT else _local_model_dir(model)
    if folder is None:
        return
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        cfg = cfg.get("text_config", cfg)
        n_ctx = next(int(cfg[k]) for k in ("max_position_embeddings", "n_positions", "n_ctx") if isinstance(cfg.get(k), int))
    except (OSError, ValueError, AttributeError, StopIteration):
        return
    if len(text.encode("utf-8")) + 2 <= n_ctx or not (folder / "tokenizer.json").is_file():
        return
    try:
        from sd_lens.runtime.tokens import count_tokens_in_file_tokenizer

        n_tokens = count_tokens_in_file_tokenizer(folder / "tokenizer.json", text)
    except Exception:  # noqa: BLE001 - a pre-check only: the exact one runs after the load
        return
    if n_tokens > n_ctx:
        raise InputError(
            f"--trigger-text has {n_tokens} tokens but the context of {model} holds {n_ctx}; give a shorter "
            "one (a sentence is enough: the causal checks read its first tokens)"
        )


def _analyze(loaded: Loaded, texts: list[str] | None, config: AnalysisConfig) -> AnalysisResult:
    from sd_lens.pipeline import run_analysis

    t0 = time.perf_counter() - loaded.seconds
    result = run_analysis(loaded.model, texts, config)
    timings = {"load_model": loaded.seconds, **result.timings_s, "total": time.perf_counter() - t0}
    return replace(result, timings_s=timings)


def cmd_analyze(args: argparse.Namespace) -> int:
    # every input and output is checked before the model loads: a bad one costs nothing
    config = config_from_args(args)
    texts = _texts(args.text_file, args.max_text_bytes)
    _check_trigger_text(args.model, config.trigger_text)
    if args.json is not None:
        output_file(args.json, "--json")
    device = _device(args.device)
    result = _analyze(_load(args.model, device, args.dtype, args.device_map, config), texts, config)
    if args.json is None or is_stdout(args.json):
        print(result.to_json())
        return _failed_stages(result)
    result.to_json(args.json)
    notes = notes_stream(args.json)  # stderr when the JSON itself goes to a pipe or /dev/stdout
    print(defects_summary(result.defects), file=notes)
    _print_findings_summary(result, notes)
    print(f"JSON written to {args.json}", file=notes)
    return _failed_stages(result)


def _print_findings_summary(result: AnalysisResult, stream: Any) -> None:
    """The outlier tokens' first line, the rotation check's and causal ranking's sentences and the super weights'
    lines, when they ran."""
    from sd_lens.report.prose import findings_summary

    if result.outlier_tokens is not None:
        print(result.outlier_tokens.summary().splitlines()[0], file=stream)
    text = findings_summary(result)
    if text:
        print(text, file=stream)
    if result.super_weights is not None:
        print(result.super_weights.summary(), file=stream)


def _failed_stages(result: AnalysisResult) -> int:
    """3 (and one line per failed stage on stderr) when a stage failed after the others finished, else 0."""
    for name, error in result.errors.items():
        print(f"sd-lens: error: the {name} stage failed: {error} (the other stages' results were written)",
              file=sys.stderr)
    return 3 if result.errors else 0


def _report(loaded: Loaded, texts: list[str] | None, config: AnalysisConfig, out: Path) -> int:
    from sd_lens.report import write_report

    result = _analyze(loaded, texts, config)
    path = write_report(loaded.model, result, out)
    print(defects_summary(result.defects))
    _print_findings_summary(result, sys.stdout)
    print(f"Report written to {path.resolve()}")
    print(f"JSON written to {(path.parent / 'analysis.json').resolve()}")
    return _failed_stages(result)


def _report_dir(out: Path) -> None:
    """Check ``--out`` and the files the report writes in it (a read-only report.html is refused now)."""
    from sd_lens.report.build import REPORT_FILES

    output_dir(out, "--out", files=REPORT_FILES)


def cmd_report(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    texts = _texts(args.text_file, args.max_text_bytes)
    _check_trigger_text(args.model, config.trigger_text)
    _report_dir(args.out)
    device = _device(args.device)
    return _report(_load(args.model, device, args.dtype, args.device_map, config), texts, config, args.out)


def cmd_demo(args: argparse.Namespace) -> int:
    from sd_lens.analyses.norm_table import first_token_norms

    if args.report:
        _report_dir(args.out)
    loaded = _load(args.model)
    print(first_token_norms(loaded.model, args.text).format())
    if args.report:
        # default options on the default corpus, with the model loaded above (one load)
        return _report(loaded, None, AnalysisConfig(), args.out)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name ({', '.join(known_models())}), HF dir, .gguf or Hugging Face model id")
    add_text_file_arguments(p, "UTF-8 text file, one text per line (default: CPython docs corpus)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="the dtype the model is loaded, and its forward runs, in (default: float32; see --forward-dtype)",
    )
    p.add_argument(
        "--device-map", default=None, choices=list(DEVICE_MAP_NAMES),
        help="split a model too big for one GPU over several (accelerate's device_map; overrides --device)",
    )
    add_config_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-lens", description="Find and verify singular defects of LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="run every analysis and write JSON")
    _common(a)
    a.add_argument("--json", type=Path, default=None, help="write the JSON here: a file (written atomically), - or a pipe (default: print it)")
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
    from sd_lens.quantize import cli as quantize_cli
    from sd_lens.signature.cli import add_parser as add_signature_parser

    add_signature_parser(sub)  # sd-lens signature [compare ...]
    quantize_cli.add_parser(sub)  # sd-lens quantize
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sd-lens``; returns the exit code: 0 done, 2 an error sd_lens explains (one line on
    stderr, nothing written), 3 written, but a stage failed after others had finished (one line per
    failed stage on stderr; ``failed_stages`` in the JSON), 1 anything else (a bug: please report the
    traceback)."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
