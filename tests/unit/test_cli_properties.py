"""Property tests over what a user can hand the CLI: any text file and any option value ends in a
result or a clear sd_lens error — never another exception (hypothesis)."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sd_lens.cli import build_parser, config_from_args
from sd_lens.corpus import read_texts
from sd_lens.errors import SdLensError
from sd_lens.runtime.tokens import tokenize

_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

hostile_lines = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["<script>alert(1)</script>", "\x00\x01\x02", "\u202e\u200b", "a" * 5000, "   ", "\r\n\r\n", "☃" * 50]),
)


@_SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=3000),  # any bytes: invalid UTF-8, NULs, BOMs
        # lines of text; lone surrogates become invalid UTF-8 on purpose
        st.lists(hostile_lines, max_size=8).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    )
)
def test_any_text_file_reads_or_fails_clearly(tmp_path_factory, data):
    path: Path = tmp_path_factory.mktemp("f") / "texts.txt"
    path.write_bytes(data)
    try:
        texts = read_texts(path)
    except SdLensError:
        return
    assert texts and all(isinstance(t, str) and t.strip() for t in texts)


@pytest.fixture(scope="module")
def llama():
    from sd_lens.models.tiny import tiny_model

    return tiny_model("llama")


@_SETTINGS
@given(texts=st.lists(hostile_lines, min_size=0, max_size=6), limit=st.one_of(st.none(), st.integers(1, 80)))
def test_any_texts_tokenize_or_fail_clearly(llama, texts, limit):
    try:
        tok = tokenize(llama, texts, max_tokens_per_text=limit)
    except SdLensError:
        return
    assert len(tok.sequences) == len(texts)
    assert all(len(s) >= 1 and (limit is None or len(s) <= limit) for s in tok.sequences)


option_values = st.one_of(
    st.integers(-(10**25), 10**25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(alphabet=string.printable, max_size=12),
    st.sampled_from(["none", "None", "0", "-1", "nan", "inf", "1e400", ""]),
)
flags = st.sampled_from(
    ["--seed", "--fit", "--vocab-limit", "--trigger-text", "--threshold", "--batch-size", "--max-tokens-per-text"]
)


@_SETTINGS
@given(pairs=st.lists(st.tuples(flags, option_values), max_size=4))
def test_any_option_values_give_a_config_or_a_clear_error(pairs):
    argv = ["analyze"] + [x for flag, value in pairs for x in (flag, value)]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's own usage error (exit 2)
        assert exc.code == 2
        return
    try:
        config = config_from_args(args)
    except SdLensError:
        return
    assert config.batch_size >= 1 and config.threshold > 1 and 0 <= config.seed < 2**63
