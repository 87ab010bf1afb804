"""The model view reproduces each block's own computation, for every family, on tiny and real models."""
from __future__ import annotations

import dataclasses
import functools
import types

import pytest
import torch

from reproduction import TEXT, rel_err, reproduction_errors
from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.models import registry
from sd_lens.models.loading import model_from_hf
from sd_lens.models.registry import Family, get_family, register_family, registered_architectures, registered_families
from sd_lens.models.tiny import FAMILIES, char_tokenizer, tiny_hf_config, tiny_hf_model, tiny_model
from sd_lens.models.view import BlockView, model_view, standard_block_view

TINY_TOL = 1e-5  # float32, d_model 64: measured errors are ~1e-7


# ----------------------------------------------------------------------------- tiny models
def test_view_reproduces_every_block(tiny_variant):
    errors = reproduction_errors(tiny_variant)
    print(type(tiny_variant).__name__, [f"{a:.1e}/{f:.1e}" for a, f in errors])
    assert len(errors) == tiny_variant.cfg.n_layers
    for layer, (attn_err, ffn_err) in enumerate(errors):
        assert attn_err < TINY_TOL, f"block {layer}: first-token attention output off by {attn_err:.2e}"
        assert ffn_err < TINY_TOL, f"block {layer}: FFN output off by {ffn_err:.2e}"


def test_reproduction_check_can_fail(tiny):
    """Negative controls: the same error measure flags a token that attends to others and wrong weights."""
    view = model_view(tiny)
    blk, other = view.block(0), view.block(1)
    with torch.no_grad():
        _, cache = tiny.run_with_cache(tiny.to_tokens(TEXT))
    resid_pre = cache["blocks.0.hook_resid_pre"][0]
    ref_attn = cache["blocks.0.hook_attn_out"][0]
    n = blk.normalize(resid_pre)
    # Position 5 attends to 6 tokens: the self-only formula must not match it.
    assert rel_err(blk.post_norm(blk.self_attention_out(n[5]), blk.attn_post_scale), ref_attn[5]) > 1e-2
    # Another block's value weights: wrong.
    wrong = dataclasses.replace(blk, W_V=other.W_V, b_V=other.b_V)
    assert rel_err(wrong.post_norm(wrong.self_attention_out(n[0]), wrong.attn_post_scale), ref_attn[0]) > 1e-2
    ffn_in = resid_pre if blk.parallel else cache["blocks.0.hook_resid_mid"][0]
    wrong = dataclasses.replace(blk, W_out=other.W_out)
    ffn = wrong.post_norm(wrong.ffn_out(wrong.normalize(ffn_in)), wrong.mlp_post_scale)
    assert rel_err(ffn, cache["blocks.0.hook_mlp_out"][0]) > 1e-2


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_grouped_query_heads_are_expanded(family):
    model = tiny_model(family)
    n_heads, n_kv = model.cfg.n_heads, tiny_hf_config(family).num_key_value_heads
    assert n_kv < n_heads  # the tiny configs do use GQA
    blk = model_view(model).block(1)
    assert blk.W_V.shape == (n_heads, model.cfg.d_model, model.cfg.d_head)
    assert blk.W_O.shape == (n_heads, model.cfg.d_head, model.cfg.d_model)
    group = n_heads // n_kv
    for h in range(n_heads):  # heads of one group share their value head (repeat_interleave)
        assert torch.equal(blk.W_V[h], blk.W_V[(h // group) * group])
    assert not torch.equal(blk.W_V[0], blk.W_V[n_heads - 1]) or n_kv == 1


def test_gqa_expansion_matches_hf_value_projection():
    """Raw mode: head h of the view is the HF v_proj rows of kv-head h // group, times gamma_1."""
    model = tiny_model("llama", compatibility_mode=False)
    hf = tiny_hf_model("llama")  # the Hugging Face model it was built from
    hf_attn = hf.model.layers[0].self_attn
    cfg = hf.config
    blk = model_view(model).block(0)
    d_head, group = model.cfg.d_head, cfg.num_attention_heads // cfg.num_key_value_heads
    v_proj = hf_attn.v_proj.weight.detach()  # (n_kv * d_head, d_model)
    for h in range(cfg.num_attention_heads):
        kv = h // group
        torch.testing.assert_close(blk.W_V[h], v_proj[kv * d_head : (kv + 1) * d_head].T, rtol=0, atol=0)


def test_norm_scales_folded_in_compatibility_mode():
    compat = model_view(tiny_model("llama")).block(0)
    raw_model = tiny_model("llama", compatibility_mode=False)
    raw = model_view(raw_model).block(0)
    assert compat.ln1_folded and compat.ln2_folded
    assert not raw.ln1_folded and not raw.ln2_folded
    gamma1 = tiny_hf_model("llama").model.layers[0].input_layernorm.weight.detach()
    torch.testing.assert_close(raw.ln1_scale, gamma1, rtol=0, atol=0)
    # Folding moves gamma_1 into W_V: same A either way.
    torch.testing.assert_close(compat.attn_ov(), raw.attn_ov(), rtol=1e-5, atol=1e-6)


def test_gemma_norm_scale_is_one_plus_weight():
    model = tiny_model("gemma3", compatibility_mode=False)
    layer = tiny_hf_model("gemma3").model.layers[0]  # the Hugging Face model it was built from
    blk = model_view(model).block(0)
    torch.testing.assert_close(blk.ln1_scale, 1.0 + layer.input_layernorm.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(blk.ln2_scale, 1.0 + layer.pre_feedforward_layernorm.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(
        blk.attn_post_scale, 1.0 + layer.post_attention_layernorm.weight.detach(), rtol=0, atol=0
    )
    torch.testing.assert_close(
        blk.mlp_post_scale, 1.0 + layer.post_feedforward_layernorm.weight.detach(), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    "family,norm,parallel,gated,post_norms",
    [
        ("llama", "rms", False, True, False),
        ("gemma3", "rms", False, True, True),
        ("gpt2", "layer", False, False, False),
        ("neox", "layer", True, False, False),
    ],
)
def test_block_layout(family, norm, parallel, gated, post_norms):
    view = model_view(tiny_model(family))
    assert view.family == family and len(view) == 2 and view.parallel is parallel
    for blk in view:
        assert blk.norm == norm
        assert blk.parallel is parallel
        assert (blk.W_gate is not None) is gated
        assert (blk.attn_post_scale is not None) is post_norms
        assert (blk.mlp_post_scale is not None) is post_norms
        assert blk.W_in.shape == (view.d_model, view.d_mlp) and blk.W_out.shape == (view.d_mlp, view.d_model)


def test_view_is_a_copy(tiny, unchanged):
    """Mutating every tensor of a view leaves the model's weights and forward untouched."""
    view = model_view(tiny)
    blk = view.block(0)
    param_ptrs = {p.data_ptr() for p in tiny.parameters()}
    with unchanged(tiny):
        for name, value in vars(blk).items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.float32
                assert value.data_ptr() not in param_ptrs, f"{name} aliases a model parameter"
                value.add_(1.0)
    # The cached block is the mutated copy; a fresh view reads the model again.
    assert not torch.equal(model_view(tiny).block(0).W_V, blk.W_V)


def test_attn_ov_is_the_linear_part(tiny):
    """A @ n equals the self-attention output minus its constant (bias) terms, on normalised n."""
    torch.manual_seed(1)
    for blk in model_view(tiny):
        n = blk.normalize(torch.randn(5, blk.d_model) * 7.0)
        A = blk.attn_ov()
        constant = blk.self_attention_out(torch.zeros(blk.d_model))
        # The constant from the view's fields: (beta_1 W_V + b_V) W_O summed over heads, plus b_O.
        explicit = torch.zeros(blk.d_model)
        v_const = torch.zeros(blk.W_V.shape[0], blk.W_V.shape[-1])
        if blk.ln1_bias is not None:
            v_const = v_const + torch.einsum("d,hdk->hk", blk.ln1_bias, blk.W_V)
        if blk.b_V is not None:
            v_const = v_const + blk.b_V
        explicit = explicit + torch.einsum("hk,hkd->d", v_const, blk.W_O)
        if blk.b_O is not None:
            explicit = explicit + blk.b_O
        torch.testing.assert_close(constant, explicit, rtol=1e-5, atol=1e-5)
        linear = (A @ n.T).T
        assert rel_err(linear, blk.self_attention_out(n) - constant) < 1e-5
        assert torch.allclose(A, blk.attn_ov_per_head().sum(0))
        if model_view(tiny).family in ("gpt2", "neox"):
            assert constant.norm() > 0  # these families have biases: the subtraction was not vacuous


def test_attn_ov_centring_matches_its_matrix_form(tiny_variant):
    """A_h = (W_V W_O)^T diag(gamma_1) (I - 11^T/d for LayerNorm), with the mean removal done in place."""
    for blk in model_view(tiny_variant):
        ov = torch.einsum("hdk,hke->hed", blk.W_V, blk.W_O) * blk.ln1_scale
        torch.testing.assert_close(blk.attn_ov_per_head(), ov @ blk.centering(), rtol=1e-5, atol=1e-6)
        if blk.norm == "layer":  # the mean removal annihilates the all-ones direction
            assert blk.attn_ov().sum(-1).abs().max() < 1e-5 * blk.attn_ov().abs().max()


def test_block_index_errors(tiny):
    view = model_view(tiny)
    assert view.block(-1) is view.block(view.n_layers - 1)
    with pytest.raises(InputError, match="blocks 0..1"):
        view.block(2)
    with pytest.raises(InputError):
        view.block("0")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- unsupported
class FakeArchForCausalLM:
    pass


def test_unknown_architecture_names_the_supported_ones():
    fake = types.SimpleNamespace(original_model=FakeArchForCausalLM(), cfg=types.SimpleNamespace())
    with pytest.raises(UnsupportedArchitectureError) as info:
        model_view(fake)
    message = str(info.value)
    assert "FakeArchForCausalLM" in message
    for name, family in registered_families().items():
        assert name in message
        for arch in family.architectures:
            assert arch in message
    assert "register_family" in message and "Adding a model family" in message  # says how to add one


def test_architecture_transformer_lens_supports_but_sd_lens_does_not():
    """OPT boots as a TransformerBridge (or converts to a HookedTransformer), but sd_lens has no adapter for its blocks."""
    import transformers as tf

    cfg = tf.OPTConfig(
        vocab_size=104, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
        max_position_embeddings=64, word_embed_proj_dim=32, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    bridge = model_from_hf(tf.AutoModelForCausalLM.from_config(cfg), char_tokenizer(), name="tiny-opt")
    with pytest.raises(UnsupportedArchitectureError, match="OPTForCausalLM") as info:
        model_view(bridge)
    assert "LlamaForCausalLM" in str(info.value) and "Gemma3ForCausalLM" in str(info.value)


def test_architecture_transformer_lens_does_not_support():
    import transformers as tf

    cfg = tf.CTRLConfig(vocab_size=104, n_embd=32, n_layer=1, n_head=2, dff=64, n_positions=64)
    with pytest.raises(UnsupportedArchitectureError, match="CTRLLMHeadModel") as info:
        model_from_hf(tf.AutoModelForCausalLM.from_config(cfg), char_tokenizer())
    assert "LlamaForCausalLM" in str(info.value)


def test_tiny_families_are_the_supported_ones():
    assert set(FAMILIES) == set(registered_families())


# ----------------------------------------------------------------------------- the family registry
@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by the test are undone afterwards."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_BY_ARCHITECTURE", dict(registry._BY_ARCHITECTURE))


@functools.cache
def new_architecture_class():
    """A Hugging Face class of a name sd_lens has no family for: Llama's blocks, renamed."""
    import transformers as tf

    return type("SdLensTestLlamaForCausalLM", (tf.LlamaForCausalLM,), {})


def llama_pair():
    """Two tiny raw-mode bridges of the same random weights: a Llama and a :func:`new_architecture_class`.

    TransformerLens picks its adapter from ``config.architectures`` (Llama for both); sd_lens reads
    the architecture from the model's class name.
    """
    import transformers as tf

    cfg = tiny_hf_config("llama")
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    llama = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in llama.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    renamed = new_architecture_class()(cfg)
    renamed.load_state_dict(llama.state_dict())
    return tuple(model_from_hf(m, char_tokenizer(), compatibility_mode=False) for m in (llama, renamed))


@pytest.mark.bridge_only(reason="a bridge keeps the Hugging Face class (a renamed Llama); TransformerLens 2.x converts by architecture name")
def test_registered_family_is_used_by_model_view(clean_registry):
    reference, model = llama_pair()
    with pytest.raises(UnsupportedArchitectureError, match="SdLensTestLlamaForCausalLM"):
        model_view(model)

    calls = []

    def builder(model, layer, family):  # a custom builder: here the standard one, counted
        calls.append(layer)
        return standard_block_view(model, layer, family)

    family = dataclasses.replace(
        get_family("llama"), name="test-llama", architectures=("SdLensTestLlamaForCausalLM",), block_view=builder
    )
    assert register_family(family) is family
    assert get_family(model) is family and get_family("test-llama") is family
    assert "SdLensTestLlamaForCausalLM" in registered_architectures()

    view, ref = model_view(model), model_view(reference)
    assert view.family == "test-llama" and view.architecture == "SdLensTestLlamaForCausalLM"
    for blk, ref_blk in zip(view, ref):
        assert blk.family == "test-llama"
        for field in dataclasses.fields(BlockView):
            mine, theirs = getattr(blk, field.name), getattr(ref_blk, field.name)
            if isinstance(mine, torch.Tensor):
                assert torch.equal(mine, theirs), field.name
            elif field.name != "family":
                assert mine == theirs, field.name
    assert calls == [0, 1]
    assert model_view(reference).family == "llama"  # the built-in family is untouched


@pytest.mark.bridge_only(reason="a bridge keeps the Hugging Face class (a renamed Llama); TransformerLens 2.x converts by architecture name")
def test_family_that_misdescribes_the_model_is_refused(clean_registry):
    model = llama_pair()[1]
    wrong = dataclasses.replace(get_family("llama"), name="wrong", architectures=("SdLensTestLlamaForCausalLM",))
    register_family(dataclasses.replace(wrong, gated=False))
    with pytest.raises(UnsupportedArchitectureError, match="declares gated=False"):
        model_view(model).block(0)
    register_family(dataclasses.replace(wrong, norm="layer"), override=True)
    with pytest.raises(UnsupportedArchitectureError, match="declares norm='layer'"):
        model_view(model).block(0)
    register_family(dataclasses.replace(wrong, post_norms=True), override=True)
    with pytest.raises(UnsupportedArchitectureError, match="declares post_norms=True"):
        model_view(model).block(0)


def test_duplicate_registration_is_refused(clean_registry):
    llama = get_family("llama")
    with pytest.raises(InputError, match="a family named 'llama'.*override=True"):
        register_family(dataclasses.replace(llama, architectures=("SomethingNewForCausalLM",)))
    with pytest.raises(InputError, match="LlamaForCausalLM \\(family 'llama'\\)"):
        register_family(dataclasses.replace(llama, name="llama-again"))
    assert get_family("LlamaForCausalLM") is llama and "llama-again" not in registered_families()


def test_override_replaces_and_moves_architectures(clean_registry):
    llama = get_family("llama")
    qwen = register_family(dataclasses.replace(llama, name="qwen2", architectures=("Qwen2ForCausalLM",)), override=True)
    assert get_family("Qwen2ForCausalLM") is qwen
    assert registered_families()["llama"].architectures == ("LlamaForCausalLM", "MistralForCausalLM")
    narrower = register_family(dataclasses.replace(llama, architectures=("LlamaForCausalLM",)), override=True)
    assert get_family("llama") is narrower
    with pytest.raises(UnsupportedArchitectureError, match="MistralForCausalLM"):
        get_family("MistralForCausalLM")


def test_family_fields_are_checked():
    with pytest.raises(InputError, match="norm must be"):
        Family(name="x", architectures=("XForCausalLM",), norm="batch", gated=False)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="at least one architecture"):
        Family(name="x", architectures=(), norm="rms", gated=False)
    single = Family(name="x", architectures="XForCausalLM", norm="rms", gated=False)  # type: ignore[arg-type]
    assert single.architectures == ("XForCausalLM",)
    with pytest.raises(InputError, match="expects a sd_lens.models.Family"):
        register_family("llama")  # type: ignore[arg-type]
