"""The runtime seam: only ``sd_lens.runtime`` runs a model, attaches hooks, tokenises or decodes.

Every other module goes through :mod:`sd_lens.runtime` (``stream``, ``run``, ``forward``,
``temporary_hooks``, ``tokenize``/``encode``, ``decode``). The test reads the source (AST), so it
catches a call whatever the variable holding the model is named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import sd_lens
from sd_lens.errors import UnsupportedArchitectureError
from sd_lens.runtime import act_name, forward, run, stream, temporary_hooks
from sd_lens.runtime.reducers import token_norms

SRC = Path(sd_lens.__file__).parent
RUNTIME = SRC / "runtime"

#: methods whose call runs a model, attaches a hook, tokenises or decodes
FORBIDDEN_METHODS = {
    "run_with_hooks", "run_with_cache", "hooks", "add_hook", "add_perma_hook", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook", "forward", "generate",
    "to_tokens", "to_str_tokens", "to_string", "decode", "batch_decode",
    "encode", "tokenize", "convert_ids_to_tokens", "to_single_token", "tokenizer",
}
#: names a model is held in, whose direct call is a forward
MODEL_NAMES = {"model", "bridge", "hooked", "tl_model"}
#: ... and any variable ending like these (``lm_model``, ``self._model``, ``hf_bridge``)
MODEL_SUFFIXES = ("_model", "_bridge")


def _is_bytes_decode(node: ast.Call) -> bool:
    """``b.decode("ascii")`` / ``s.encode("utf-8")``: a codec name, not token ids or text."""
    return bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)


def _package_functions() -> set[str]:
    """Functions defined in the package (``load_model`` is a call *of* a function, not *of* a model)."""
    return {
        n.name for p in SRC.rglob("*.py") for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


_FUNCTIONS = _package_functions()


def _holds_a_model(name: str) -> bool:
    bare = name.lstrip("_")
    if bare in MODEL_NAMES:
        return True
    # a variable (lower case, not a function of ours) named like a model
    return bare.islower() and ("_" + bare).endswith(MODEL_SUFFIXES) and name not in _FUNCTIONS


def _calls_into_blocks(func: ast.expr) -> bool:
    """``model.blocks[0].mlp(x)``: a module of a block called directly."""
    return any(
        isinstance(n, ast.Subscript) and isinstance(n.value, ast.Attribute) and n.value.attr == "blocks"
        for n in ast.walk(func)
    )


def _violations(path: Path, root: Path = SRC) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    where = path.relative_to(root)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr in FORBIDDEN_METHODS:
            if not (f.attr in ("decode", "encode") and _is_bytes_decode(node)):
                out.append(f"{where}:{node.lineno}: .{f.attr}(...)")
        elif isinstance(f, ast.Name) and (_holds_a_model(f.id) or f.id == "tokenizer"):
            out.append(f"{where}:{node.lineno}: {f.id}(...)")
        elif isinstance(f, ast.Attribute) and _holds_a_model(f.attr):
            out.append(f"{where}:{node.lineno}: .{f.attr}(...)")
        elif _calls_into_blocks(f):
            out.append(f"{where}:{node.lineno}: a block's module called directly")
    return out


def _outside_runtime() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if RUNTIME not in p.parents]


def test_no_forward_hook_or_tokenizer_call_outside_the_runtime():
    files = _outside_runtime()
    assert len(files) > 15  # the scan sees the package
    bad = [v for p in files for v in _violations(p)]
    assert not bad, "calls that belong in sd_lens.runtime:\n" + "\n".join(bad)


def test_the_scan_catches_what_it_should(tmp_path):
    snippet = tmp_path / "x.py"
    snippet.write_text(
        "model(tokens)\nm.run_with_hooks(t)\nwith m.hooks(fwd_hooks=h):\n    pass\n"
        "m.blocks[0].hook_resid_post.add_hook(f)\nself.model(x)\nm.to_tokens('a')\ntok.decode([1])\n"
        "png.decode('ascii')\nlen(x)\n"
        "lm_model(tokens)\nself._model(x)\nmodel.blocks[0].mlp(x)\ntokenizer(text)\nm.tokenizer.encode(text)\n"
        "text.encode('utf-8')\nmodel_view(model)\n"
    )
    found = _violations(snippet, tmp_path)
    lines = sorted((v.split(": ", 1)[0] for v in found), key=lambda s: int(s.split(":")[1]))
    assert lines == [f"x.py:{n}" for n in (1, 2, 3, 5, 6, 7, 8, 11, 12, 13, 14, 15)], found


def test_the_runtime_is_where_the_forward_is():
    assert any(_violations(p) for p in sorted(RUNTIME.rglob("*.py")))


# --------------------------------------------------------------------------------------------
# temporary hooks: exactly ours removed, on success, error and KeyboardInterrupt
# --------------------------------------------------------------------------------------------
def _n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) for hp in set(model.hook_dict.values()))


def _mine(model) -> None:
    pass


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_temporary_hooks_removed_on_error_and_interrupt(tiny, exc):
    model = tiny
    name = act_name("resid_post", 0)
    kept_hook = lambda act, hook: None  # noqa: E731
    with model.hooks(fwd_hooks=[(name, kept_hook)], reset_hooks_end=True):
        before = _n_hooks(model)
        with pytest.raises(type(exc)):
            with temporary_hooks(model, [(name, lambda a, h: None), (act_name("resid_post", 1), lambda a, h: None)]):
                assert _n_hooks(model) == before + 2
                raise exc
        assert _n_hooks(model) == before  # ours gone, the caller's still there
    assert _n_hooks(model) == before - 1


def test_a_hook_that_raises_inside_the_forward_leaves_nothing(tiny):
    model = tiny
    before = _n_hooks(model)

    def bad(act, batch):
        raise KeyboardInterrupt

    tokens = torch.tensor([[1, 2, 3]])
    with pytest.raises(KeyboardInterrupt):
        run(model, tokens, {act_name("resid_post", 0): bad})
    assert _n_hooks(model) == before
    assert torch.equal(forward(model, tokens, return_type="logits"), forward(model, tokens, return_type="logits"))


def test_unknown_hook_names_are_refused_before_anything_is_attached(tiny):
    before = _n_hooks(tiny)
    with pytest.raises(UnsupportedArchitectureError, match="blocks.99.hook_resid_post"):
        run(tiny, torch.tensor([[1, 2]]), {act_name("resid_post", 0): token_norms, "blocks.99.hook_resid_post": token_norms})
    assert _n_hooks(tiny) == before


def test_stream_stops_at_the_deepest_hooked_block_and_pads_exactly(tiny):
    model = tiny
    fired: list[str] = []
    seqs = [torch.tensor([1, 5, 7, 9]), torch.tensor([1, 4]), torch.tensor([1, 8, 2])]
    last = model.cfg.n_layers - 1
    watch = {act_name("resid_post", 0): token_norms}
    spy = [(act_name("resid_post", last), lambda act, hook: fired.append(hook.name))]
    out = list(stream(model, seqs, watch, batch_size=2, fwd_hooks=spy))
    assert not fired  # block `last` never ran: the forward stopped after block 0
    assert [b.index for b, _ in out] == [[1, 2], [0]]  # shortest first
    # a padded row's real positions equal the sequence run alone
    batch, values = out[0]
    alone = run(model, seqs[1], watch)[act_name("resid_post", 0)]
    assert batch.padded and torch.allclose(values[act_name("resid_post", 0)][0, :2], alone[0], atol=1e-5)


def test_right_padding_needs_no_mask_on_causal_models(tiny):
    """The engine's padding policy: real positions of a padded batch equal each sequence run alone,
    with or without the mask passed to the model (why stream() does not pass it by default)."""
    model = tiny
    seqs = [torch.tensor([1, 5, 7, 9, 3, 2]), torch.tensor([1, 4]), torch.tensor([1, 8, 2, 6])]
    names = {act_name("resid_post", layer): token_norms for layer in range(model.cfg.n_layers)}
    for masked in (False, True):
        for batch, out in stream(model, seqs, names, batch_size=3, attention_mask=masked):
            for row, i in enumerate(batch.index):
                alone = run(model, seqs[i], names)
                n = len(seqs[i])
                for name in names:
                    assert torch.allclose(out[name][row, :n], alone[name][0], rtol=1e-5, atol=1e-5), (masked, i, name)



def test_reading_the_last_block_runs_no_final_norm_or_unembedding(tiny):
    """stop_at_layer cannot stop after the last block; the engine ends the forward once every reducer has read."""
    model = tiny
    fired: list[str] = []
    last = act_name("resid_post", model.cfg.n_layers - 1)
    spy = [(name, lambda act, hook: fired.append(hook.name))
           for name in ("ln_final.hook_normalized", "hook_unembed") if name in model.hook_dict]  # HookedTransformer: no hook_unembed
    tokens = torch.tensor([[1, 5, 7, 9]])
    before = _n_hooks(model)
    early = run(model, tokens, {last: token_norms}, fwd_hooks=spy)
    assert not fired and _n_hooks(model) == before
    full = run(model, tokens, {last: token_norms}, fwd_hooks=spy, stop_at_layer=None)
    assert fired  # the whole model ran when asked to: the spies work
    assert torch.equal(early[last], full[last])


def test_passes_sharing_one_stream_give_the_results_of_separate_runs(tiny):
    """run_passes: massive activations and attention sinks from one forward per batch = each run alone."""
    import json

    from sd_lens.analyses.activation_outliers import activation_outliers, activation_outliers_pass
    from sd_lens.analyses.attention_sinks import attention_sinks, attention_sinks_pass
    from sd_lens.runtime import run_passes, tokenize

    texts = ["the cat sat on the mat", "a b c d e f g h", "one, two and three", "x"]
    tok = tokenize(tiny, texts)
    alone_o = activation_outliers(tiny, tok, batch_size=3)
    alone_s = attention_sinks(tiny, tok, batch_size=3)
    o, s = activation_outliers_pass(tiny, tok), attention_sinks_pass(tiny, tok)
    calls: list[int] = []
    import sd_lens.runtime.engine as engine

    real_forward = engine.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return real_forward(*args, **kwargs)

    engine.forward = counting  # type: ignore[assignment]
    try:
        run_passes(tiny, [o, s], batch_size=3)
    finally:
        engine.forward = real_forward  # type: ignore[assignment]
    assert len(calls) == 2  # 4 texts in batches of 3: one forward per batch for both passes
    a, b = o.result().to_dict(), alone_o.to_dict()
    a.pop("seconds", None), b.pop("seconds", None)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert torch.equal(s.result().key_alpha, alone_s.key_alpha)
    c, d = s.result().to_dict(), alone_s.to_dict()
    c.pop("seconds", None), d.pop("seconds", None)
    assert c == d


def test_passes_over_different_sequences_are_refused(tiny):
    from sd_lens.analyses.activation_outliers import activation_outliers_pass
    from sd_lens.runtime import run_passes, tokenize

    a = activation_outliers_pass(tiny, tokenize(tiny, ["one text"]))
    b = activation_outliers_pass(tiny, tokenize(tiny, ["another text"]))
    with pytest.raises(ValueError, match="different sequences"):
        run_passes(tiny, [a, b])


def test_intervention_hooks_see_the_running_batchs_real_positions(tiny):
    """real_mask() is the engine's padding mask during its forwards and None outside them."""
    from sd_lens.runtime.engine import real_mask

    seen = []

    def hook(act, hook):  # an intervention: it edits nothing, it records what it could leave out
        seen.append(real_mask())
        return act

    seqs = [torch.tensor([1, 5, 6, 7]), torch.tensor([1, 8])]
    batches = list(stream(tiny, seqs, {act_name("resid_post", 0): token_norms}, batch_size=2,
                          fwd_hooks=[(act_name("resid_post", 0), hook)]))
    (batch, _), = batches
    assert len(seen) == 1 and torch.equal(seen[0], batch.mask) and seen[0].sum() == 6
    assert real_mask() is None
