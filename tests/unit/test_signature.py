"""sd_lens.signature on tiny models: compute, save/load, angle matrix, sign invariance, widths, CLI, rotation."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure

from sd_lens.analyses.spectra import linearize_block, top_singular
from sd_lens.corpus import default_corpus
from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.linalg import acute_angle_deg
from sd_lens.models.loading import bridge_from_hf
from sd_lens.models.tiny import char_tokenizer, tiny_hf_config, tiny_model
from sd_lens.signature import (
    Signature,
    angle_matrix,
    check_widths,
    compute_signature,
    corpus_hash,
    load_signature,
    random_orthogonal,
    rotate_residual,
    save_signature,
    signature_angle,
    signature_width,
)
from sd_lens.signature.cli import main as signature_main

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import planted_bos_model  # noqa: E402

pytestmark = pytest.mark.bridge_only(reason="plants defects and rotates the basis through the bridge's Hugging Face model")

TEXTS = [t[:60] for t in default_corpus(8)]  # short: no truncation warning, fast
PLANT_TEXTS = ["@ " + t for t in TEXTS]  # one first character ('@' is rare in the corpus) for models without BOS


def _sig(emp: torch.Tensor | None, w: torch.Tensor, name: str = "m") -> Signature:
    d = w.shape[0]
    return Signature(
        model=name, d_model=d, n_layers=2, empirical=emp, weights=w, block=1, weights_s0=1.0, defect=None,
        n_major=None, corpus_hash=None, n_texts=None, threshold=4.0, fit_method="gaussian", sd_lens_version="0",
    )


def _plant_bos(model, scale: float = 40.0):
    """Scale the embedding of the first token of every text (BOS; NeoX's tokenizer prepends none, so there the
    first character, which :data:`PLANT_TEXTS` share) of a private tiny model: a high-norm initial token."""
    from sd_lens.runtime.tokens import tokenize

    first = int(tokenize(model, PLANT_TEXTS[:1]).sequences[0][0])
    tables = {id(p): p for n, p in model.named_parameters() if "embed" in n or "wte" in n}  # the bridge's copy
    emb = model.original_model.get_input_embeddings().weight
    tables.setdefault(id(emb), emb)
    with torch.no_grad():
        for table in tables.values():
            table[first] *= scale
    return model


# ---------------------------------------------------------------- compute


def test_weights_signature_every_family(tiny, unchanged):
    """Weights-only: u0 of the linearised block, unit, deterministic, no forward, model untouched."""
    with unchanged(tiny):
        sig = compute_signature(tiny, block=1, empirical=False)
        again = compute_signature(tiny, block=-1 % tiny.cfg.n_layers, empirical=False)
    assert sig.d_model == tiny.cfg.d_model and sig.n_layers == tiny.cfg.n_layers and sig.block == 1
    assert sig.empirical is None and sig.corpus_hash is None and sig.n_major is None
    assert abs(float(sig.weights.norm()) - 1) < 1e-6
    _, u0, _ = top_singular(linearize_block(tiny, 1, n_eval=0).L)
    assert float(acute_angle_deg(sig.weights, u0)) < 1e-3
    assert torch.equal(sig.weights, again.weights)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "neox"])
def test_planted_defect_every_family(family, tmp_path):
    """A planted high-norm BOS gives an empirical signature along the planted state, in every family."""
    # Gemma's post-norms give every update a norm of ~sqrt(d) x scale: a larger plant stands out
    model = _plant_bos(tiny_model(family, seed=2, n_layers=3), 400.0 if family == "gemma3" else 40.0)
    sig = compute_signature(model, PLANT_TEXTS)
    assert sig.empirical is not None and sig.defect is not None and sig.defect["initial_token"]
    assert sig.block == sig.defect["explosion_layer"] and sig.n_major and sig.n_major >= 1
    assert sig.corpus_hash == corpus_hash(PLANT_TEXTS, 64) and sig.n_texts == len(PLANT_TEXTS)
    assert abs(float(sig.empirical.norm()) - 1) < 1e-6
    # weights is oriented towards empirical (sign convention), angles unaffected
    assert float(sig.weights @ sig.empirical) >= 0
    back = load_signature(save_signature(sig, tmp_path / "s.json"))
    assert torch.equal(back.empirical, sig.empirical) and torch.equal(back.weights, sig.weights)
    assert back.to_dict() == sig.to_dict() and back.source == str(tmp_path / "s.json")


def test_defects_reused_and_explicit_block():
    from sd_lens.analyses.defects import find_defects
    from sd_lens.analyses.probe import probe_norms

    model = planted_bos_model()
    report = find_defects(model, probe_norms(model, TEXTS))
    a = compute_signature(model, TEXTS, defects=report)
    b = compute_signature(model, TEXTS)
    assert torch.equal(a.empirical, b.empirical) and torch.equal(a.weights, b.weights)
    c = compute_signature(model, defects=report, block=2)
    assert c.block == 2 and torch.equal(c.empirical, a.empirical) and c.corpus_hash is None


def test_bad_arguments_before_any_forward(tiny):
    with pytest.raises(InputError, match="block="):
        compute_signature(tiny, empirical=False)
    with pytest.raises(InputError, match="block must be"):
        compute_signature(tiny, block=tiny.cfg.n_layers, empirical=False)
    with pytest.raises(InputError, match="block must be"):
        compute_signature(tiny, block=True, empirical=False)
    with pytest.raises(InputError, match="fit_method"):
        compute_signature(tiny, block=0, empirical=False, fit_method="real")
    with pytest.raises(InputError, match="reads no text"):
        compute_signature(tiny, TEXTS, block=0, empirical=False)
    with pytest.raises(InputError, match="empty"):
        compute_signature(tiny, ["ok", " "])


def test_no_major_defect_needs_a_block():
    model = tiny_model("llama", seed=3)
    with pytest.raises(InputError, match="no major defect"):
        compute_signature(model, TEXTS[:2])
    sig = compute_signature(model, TEXTS[:2], block=0)
    assert sig.empirical is None and sig.n_major == 0 and sig.corpus_hash is not None


# ---------------------------------------------------------------- angles and matrix

unit_vectors = st.integers(2, 48).flatmap(
    lambda d: st.lists(
        st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=d, max_size=d).filter(
            lambda v: sum(x * x for x in v) > 1e-3
        ),
        min_size=2, max_size=5,
    )
)


@settings(max_examples=40, deadline=None)
@given(vectors=unit_vectors, flips=st.lists(st.booleans(), min_size=5, max_size=5), scale=st.floats(0.1, 100))
def test_angle_matrix_properties(vectors, flips, scale):
    """Symmetric, zero diagonal, in [0, 90], and unchanged by flipping the sign or scaling any signature."""
    vs = [torch.tensor(v) for v in vectors]
    sigs = [_sig(v, v.flip(0), f"m{i}") for i, v in enumerate(vs)]
    flipped = [_sig((-v if f else v) * scale, v.flip(0) * (-1 if f else 1), f"m{i}") for i, (v, f) in enumerate(zip(vs, flips))]
    a, b = angle_matrix(sigs), angle_matrix(flipped)
    for kind in ("empirical", "weights"):
        m = a.matrix(kind)
        assert torch.equal(m, m.T)
        assert torch.all(torch.diagonal(m) == 0)
        assert bool(((m >= 0) & (m <= 90)).all())
        assert torch.allclose(m, b.matrix(kind), atol=1e-3)
        for i in range(len(vs)):
            for j in range(len(vs)):
                assert math.isclose(float(m[i, j]), signature_angle(sigs[i], sigs[j], kind) if i != j else 0.0, abs_tol=1e-9)


def test_known_angles_and_missing_empirical():
    e0, e1 = torch.eye(3)[0], torch.eye(3)[1]
    diag = torch.tensor([1.0, 1.0, 0.0])
    m = angle_matrix([_sig(e0, e0, "a"), _sig(-diag, e1, "b"), _sig(None, e0, "c")])
    assert math.isclose(m.angle("a", "b"), 45.0, abs_tol=1e-9)  # sign-free: -diag is the same line as diag
    assert math.isclose(m.angle("a", "b", "weights"), 90.0, abs_tol=1e-9)
    assert math.isnan(m.angle("a", "c")) and m.angle("a", "c", "weights") == 0.0
    d = m.to_dict()
    assert d["empirical_deg"][0][2] is None and d["weights_deg"][0][1] == 90.0 and d["names"] == ["a", "b", "c"]
    json.dumps(d)
    assert "45.0" in m.table() and "-" in m.table()
    with pytest.raises(InputError, match="no model"):
        m.angle("a", "zzz")
    assert angle_matrix([_sig(e0, e0, "x"), _sig(e0, e0, "x")]).names == ["x", "x #2"]


def test_figure():
    e = torch.eye(4)
    fig = angle_matrix([_sig(e[i], e[(i + 1) % 4], f"model {i}") for i in range(3)]).figure()
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # two heat maps and the colour bar


def test_width_mismatch():
    a, b = _sig(None, torch.ones(4), "four"), _sig(None, torch.ones(6), "six")
    with pytest.raises(InputError, match=r"four \(d_model 4\), six \(d_model 6\)"):
        angle_matrix([a, b])
    with pytest.raises(InputError, match="different widths"):
        signature_angle(a, b, "weights")
    check_widths([("a", 4), ("b", None), ("c", 4)])  # unknown widths are skipped
    with pytest.raises(InputError):
        check_widths([("a", 4), ("b", None), ("c", 5)])
    with pytest.raises(InputError, match="no signature"):
        angle_matrix([])


# ---------------------------------------------------------------- files


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_signature(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="not an sd_lens signature"):
        load_signature(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="cannot read"):
        load_signature(tmp_path / "bad.json")
    path = save_signature(_sig(None, torch.ones(4)), tmp_path / "ok.json")
    data = json.loads(path.read_text())
    data["weights"] = [1.0, 2.0]
    (tmp_path / "short.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="list of 4 numbers"):
        load_signature(tmp_path / "short.json")
    data["weights"], data["format_version"] = [1.0] * 4, 99
    (tmp_path / "new.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="version"):
        load_signature(tmp_path / "new.json")
    assert signature_width(str(path)) == 4


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=40).filter(
    lambda v: any(x != 0 for x in v)))
def test_round_trip_exact(tmp_path_factory, values):
    v = torch.tensor(values, dtype=torch.float32)
    path = save_signature(_sig(v, -v), tmp_path_factory.mktemp("rt") / "s.json")
    back = load_signature(path)
    assert torch.equal(back.empirical, v) and torch.equal(back.weights, -v)


# ---------------------------------------------------------------- rotation control


def _tiny_llama_hf(seed: int = 0, planted: bool = True):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_hf_config("llama", n_layers=3), attn_implementation="eager")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
        if planted:
            hf.model.embed_tokens.weight[1] *= 40.0  # BOS id 1
    return hf


def test_rotation_is_function_preserving_and_signatures_rotate():
    """The rotated model computes the same function; its signatures are Qᵀ times the original's (equivariance)."""
    hf = _tiny_llama_hf()
    rot, Q = rotate_residual(hf, seed=5)
    x = torch.randint(3, 100, (2, 12))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=x).logits, rot(input_ids=x).logits, atol=1e-4)
    assert torch.allclose(Q.double() @ Q.double().T, torch.eye(64, dtype=torch.float64), atol=1e-5)
    base = compute_signature(bridge_from_hf(hf, char_tokenizer(), name="base"), TEXTS)
    turned = compute_signature(bridge_from_hf(rot, char_tokenizer(), name="rotated"), TEXTS)
    assert base.block == turned.block and base.empirical is not None and turned.empirical is not None
    assert float(acute_angle_deg(Q.T @ base.empirical, turned.empirical)) < 0.01
    assert float(acute_angle_deg(Q.T @ base.weights, turned.weights)) < 0.01
    # and the rotated signatures are far from the original ones (random in 64 dims: 90 ± 7 degrees)
    assert signature_angle(base, turned) > 60 and signature_angle(base, turned, "weights") > 60


def test_random_orthogonal_and_unsupported():
    Q = random_orthogonal(16, seed=1)
    assert torch.allclose(Q @ Q.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert torch.equal(Q, random_orthogonal(16, seed=1)) and not torch.equal(Q, random_orthogonal(16, seed=2))
    with pytest.raises(UnsupportedArchitectureError):
        rotate_residual(tiny_model("gpt2").original_model)


def test_fine_tune_helper_moves_weights():
    """The benchmark's fine-tune (used on SmolLM2) lowers the loss and changes the weights of a tiny Llama."""
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from signature_lineage import fine_tune, relative_change

    hf = _tiny_llama_hf(planted=False)
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    seqs = [torch.randint(3, 20, (40,)) for _ in range(8)]  # a small alphabet: easy to learn
    losses = fine_tune(hf, seqs, steps=12, lr=3e-3, batch=4, seq_len=16)
    assert losses[-1] < losses[0] - 0.3
    assert 1e-3 < relative_change(before, hf) < 1.0


# ---------------------------------------------------------------- CLI


def _save_tiny(folder: Path, seed: int, d_model: int = 64) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_hf_config("llama", d_model=d_model), attn_implementation="eager")
    with torch.no_grad():
        hf.model.embed_tokens.weight[1] *= 40.0
    hf.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def test_cli_compute_and_compare(tmp_path, capsys):
    model_dir = _save_tiny(tmp_path / "tiny", seed=0)
    text = tmp_path / "texts.txt"
    text.write_text("\n".join(TEXTS))
    assert signature_main(["--model", str(model_dir), "--text-file", str(text), "--out", str(tmp_path / "a.json")]) == 0
    a = load_signature(tmp_path / "a.json")
    assert a.empirical is not None and a.corpus_hash == corpus_hash(TEXTS, 64)
    capsys.readouterr()
    out_json, out_png = tmp_path / "m.json", tmp_path / "m.png"
    code = signature_main(
        ["compare", str(tmp_path / "a.json"), str(model_dir), "--text-file", str(text), "--json", str(out_json),
         "--figure", str(out_png)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "empirical (deg)" in printed and "weights (deg)" in printed
    data = json.loads(out_json.read_text())
    assert data["names"] == ["a", str(model_dir)] and data["empirical_deg"][0][1] < 1e-3  # the same model twice
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_exits_2_before_loading(tmp_path, capsys, monkeypatch):
    import sd_lens

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sd_lens, "load_model", no_load)
    save_signature(_sig(None, torch.ones(64), "w64"), tmp_path / "w64.json")
    save_signature(_sig(None, torch.ones(32), "w32"), tmp_path / "w32.json")
    narrow = _save_tiny(tmp_path / "narrow", seed=1, d_model=32)
    capsys.readouterr()  # the save's own progress bar
    cases = [
        ["compare", str(tmp_path / "w64.json"), str(tmp_path / "w32.json")],
        ["compare", str(tmp_path / "w64.json"), str(narrow)],  # a model folder: width from its config.json
        ["compare", str(tmp_path / "w64.json"), str(tmp_path / "missing.json")],
        ["compare", str(tmp_path / "w64.json"), "--figure", str(tmp_path / "m.gif")],
        ["compare", str(tmp_path / "w64.json"), "--text-file", str(tmp_path / "none.txt")],
        ["--model", "x", "--threshold", "0.5"],
        ["--model", "x", "--out", str(tmp_path)],
    ]
    for argv in cases:
        assert signature_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("sd-lens: error:") and err.count("\n") == 1, (argv, err)
    assert signature_main(["compare", str(tmp_path / "w64.json"), str(tmp_path / "w32.json")]) == 2
    assert "d_model 64" in capsys.readouterr().err
