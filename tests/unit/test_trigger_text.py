"""``--trigger-text`` is checked with its own message (issue 24, item 5): before the model loads where
the context and tokenizer can be read without loading it, and in any case before any analysis runs
(not after all of them, with advice about "text 0" and max_tokens_per_text)."""

from __future__ import annotations

import json

import pytest

import sd_lens
import sd_lens.pipeline as pipeline
from sd_lens.analyses.causal import trigger_tokens, verify_trigger
from sd_lens.cli import _check_trigger_text, main
from sd_lens.errors import InputError
from sd_lens.models.tiny import tiny_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_an_overlong_trigger_fails_before_any_analysis(llama, monkeypatch):
    monkeypatch.setattr(pipeline, "probe_norms", lambda *a, **k: pytest.fail("the analysis ran"))
    n_ctx = int(llama.cfg.n_ctx)
    with pytest.raises(InputError) as info:
        pipeline.run_analysis(llama, ["a short text"], trigger_text="ab " * n_ctx)
    message = str(info.value)
    assert "trigger text" in message and "--trigger-text" in message and f"holds {n_ctx}" in message
    assert "text 0" not in message and "max_tokens_per_text" not in message


def test_verify_trigger_names_the_trigger_text(llama):
    import torch

    v0 = torch.ones(llama.cfg.d_model)
    with pytest.raises(InputError, match="trigger text .* tokens but the model's context holds"):
        verify_trigger(llama, 0, v0, "x" * (int(llama.cfg.n_ctx) + 5))
    assert trigger_tokens(llama, "hello there").shape == (1, len("hello there") + 1)  # char tokenizer + BOS


def _model_folder(tmp_path, n_ctx: int):
    """A model folder with a config.json and a word-level tokenizer.json, and no weights."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": n_ctx}))
    tok = Tokenizer(WordLevel({"[UNK]": 0, "word": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_an_overlong_trigger_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sd_lens, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    folder = _model_folder(tmp_path, n_ctx=32)
    assert main(["analyze", "--model", str(folder), "--trigger-text", "word " * 40]) == 2
    err = capsys.readouterr().err
    assert "--trigger-text has 40 tokens" in err and "holds 32" in err and len(err.strip().splitlines()) == 1


def test_the_pre_check_passes_what_may_fit(tmp_path):
    folder = _model_folder(tmp_path, n_ctx=32)
    _check_trigger_text(str(folder), "word " * 20)  # 100 bytes, 20 tokens: tokenised, fits
    _check_trigger_text(str(folder), "short")  # fewer bytes than the context: not even tokenised
    _check_trigger_text("not-a-local-model/anywhere", "word " * 10_000)  # context unknown: the exact check later
