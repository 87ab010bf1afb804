"""AnalysisConfig: one place for run_analysis's options, checked before any model runs, and the CLI
flags generated from it."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Literal

import pytest
import torch

from sd_lens.cli import add_config_arguments, build_parser, config_from_args, main
from sd_lens.errors import InputError
from sd_lens.pipeline import AnalysisConfig, run_analysis


class _NoModel:
    """Fails the test if anything touches it: bad options must be refused first."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) before the options were checked")


@pytest.mark.parametrize(
    "options, field",
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
        ({"batch_size": 0}, "batch_size"),
        ({"vocab_limit": -3}, "vocab_limit"),
        ({"max_tokens_per_text": 0}, "max_tokens_per_text"),
        ({"seed": 99999999999999999999}, "seed"),
        ({"seed": -1}, "seed"),
        ({"fit_method": "exact"}, "fit_method"),
        ({"trigger_text": "  "}, "trigger_text"),
        ({"ffn_r2_samples": 10}, "ffn_r2_samples"),
        ({"ffn_r2_samples": -1}, "ffn_r2_samples"),
        ({"ffn_r2_samples": True}, "ffn_r2_samples"),
    ],
)
def test_bad_options_are_refused_before_the_model_runs(options, field):
    with pytest.raises(InputError, match=field):
        run_analysis(_NoModel(), ["some text"], **options)


def test_unknown_options_name_the_valid_ones():
    with pytest.raises(InputError, match="unknown option.*treshold.*threshold"):
        run_analysis(_NoModel(), ["x"], treshold=5)


def test_config_and_overrides_compose():
    base = AnalysisConfig(seed=3, vocab=True)
    assert base.seed == 3 and base.vocab and base.fit_method == "gaussian"
    with pytest.raises(Exception):
        base.seed = 4  # frozen


def test_every_config_field_is_a_cli_flag_with_help():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in ("analyze", "report"):
        dests = {a.dest: a for a in sub[command]._actions}
        for f in fields(AnalysisConfig):
            assert f.name in dests, f"--{f.name} missing from `sd-lens {command}`"
            assert dests[f.name].help, f"--{f.name} has no help"
    args = parser.parse_args(["analyze", "--fit", "real", "--vocab", "--vocab-limit", "7", "--threshold", "5"])
    assert config_from_args(args) == AnalysisConfig(fit_method="real", vocab=True, vocab_limit=7, threshold=5.0)
    assert config_from_args(parser.parse_args(["report"])) == AnalysisConfig()


def test_cli_refuses_bad_options_before_loading(capsys, monkeypatch):
    import sd_lens

    monkeypatch.setattr(sd_lens, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["analyze", "--model", "no-such-model", "--vocab-limit", "-3"]) == 2
    assert "vocab_limit=-3" in capsys.readouterr().err


def test_generated_flags_cover_none_literals_and_true_booleans():
    @dataclass(frozen=True)
    class Options:
        limit: int | None = field(default=5, metadata={"help": "a limit"})
        mode: Literal["a", "b"] = field(default="a", metadata={"help": "a mode"})
        fast: bool = field(default=True, metadata={"help": "go fast"})

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Options)
    assert vars(parser.parse_args([])) == {"limit": 5, "mode": "a", "fast": True}
    assert vars(parser.parse_args(["--limit", "none", "--mode", "b", "--no-fast"])) == {
        "limit": None, "mode": "b", "fast": False
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    args = build_parser().parse_args(["analyze", "--max-tokens-per-text", "none"])
    assert config_from_args(args).max_tokens_per_text is None


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, float("nan"), True])
def test_sink_epsilon_is_a_mean_attention(eps):
    with pytest.raises(InputError, match="sink_epsilon"):
        AnalysisConfig(sink_epsilon=eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_forwards_dtype_is_recorded_and_float16_is_warned_about(dtype, tmp_path):
    """The JSON and the report say which dtype the forward ran in; float16 comes with a warning saying what it changes."""
    import json
    import warnings

    from sd_lens.models.tiny import tiny_model
    from sd_lens.report import write_report

    model = tiny_model("llama", dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_analysis(model, ["the cat sat on the mat", "a b c d e f"])
    said = [str(w.message) for w in caught if "runs in float16" in str(w.message)]
    assert len(said) == (1 if dtype == torch.float16 else 0)
    assert json.loads(result.to_json())["dtype"] == name
    html = write_report(model, result, tmp_path / "out").read_text(encoding="utf-8")
    assert f"d_model 64, {name})" in html
    assert ("Caution: the model runs in float16" in html) == (dtype == torch.float16)


def test_held_out_texts_are_disjoint_from_any_corpus():
    """--interventions measures perplexity on lines the means were not computed on, whatever the corpus size."""
    from sd_lens.analyses.outlier_interventions import held_out_corpus
    from sd_lens.corpus import default_corpus, held_out_texts

    assert held_out_texts(default_corpus()) == held_out_corpus(48)  # the 48 lines after the default corpus
    big = default_corpus(5000)
    held = held_out_texts(big)
    assert len(held) == 48 and not set(held) & set(big)
    mine = ["my own text", default_corpus(60)[50]]
    assert len(held_out_texts(mine)) == 48 and mine[1] not in held_out_texts(mine)


def test_held_out_lines_reach_every_perplexity_stage():
    """``held_out_lines`` (``--held-out-lines``): the stages measure on that many held-out lines of the default
    corpus, none of them among the analysed texts; a bad count is refused before any work."""
    from sd_lens.cli import build_parser, config_from_args
    from sd_lens.corpus import held_out_texts
    from sd_lens.errors import InputError
    from sd_lens.pipeline import AnalysisConfig
    from sd_lens.stages.registry import StageInputs

    cfg = config_from_args(build_parser().parse_args(["analyze", "--held-out-lines", "12"]))
    assert cfg.held_out_lines == 12 and AnalysisConfig().held_out_lines == 48
    texts = ["my own text", "another text"]
    inputs = StageInputs(None, texts, cfg, None, None, None, {})  # type: ignore[arg-type]
    assert inputs.held_out == held_out_texts(texts, 12) and len(inputs.held_out) == 12
    for bad in (0, -3, True, 2.5):
        with pytest.raises(InputError, match="held_out_lines"):
            AnalysisConfig(held_out_lines=bad)
