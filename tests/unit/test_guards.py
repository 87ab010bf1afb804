"""The `unchanged` guard of conftest.py catches what it promises to catch (and nothing else)."""

from __future__ import annotations

import pytest
import torch

from conftest import _hook_state  # tests/ is on sys.path (rootdir-relative conftest)
from sd_lens.models.tiny import tiny_model


@pytest.fixture
def model():
    return tiny_model("llama")  # private: these tests modify it


def test_clean_use_passes(model, unchanged):
    with unchanged(model):
        model.run_with_cache("hello", stop_at_layer=1)
        model.run_with_hooks("hello", fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook: a * 1.0)])
        with model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, hook: None)]):
            model("hi")


@pytest.mark.bridge_only(reason="exercises the guard on a bridge's Hugging Face modules")
def test_changed_weight_is_caught(model, unchanged):
    with pytest.raises(AssertionError, match="weight tensor"):
        with unchanged(model):
            with torch.no_grad():
                model.original_model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-6


@pytest.mark.bridge_only(reason="exercises the guard on a bridge's Hugging Face modules")
def test_leaked_transformer_lens_hook_is_caught_and_removed(model, unchanged):
    # hook_resid_post is an alias of the HookPoint blocks.0.hook_out
    with pytest.raises(AssertionError, match=r"hooks differ on 1 module\(s\), e.g. \['blocks.0.hook_out'\]"):
        with unchanged(model):
            model.blocks[0].hook_resid_post.add_hook(lambda a, hook: None)
    assert _hook_state(model) == {}  # cleaned up


@pytest.mark.bridge_only(reason="exercises the guard on a bridge's Hugging Face modules")
def test_leaked_torch_hook_is_caught(model, unchanged):
    layer = model.original_model.model.layers[0]
    with pytest.raises(AssertionError, match="hooks differ"):
        with unchanged(model):
            layer.register_forward_pre_hook(lambda mod, args: None)
    assert _hook_state(model) == {}


@pytest.mark.bridge_only(reason="exercises the guard on a bridge's Hugging Face modules")
def test_behaviour_change_without_weight_change_is_caught(model, unchanged):
    """A changed buffer (rotary frequencies) is caught by the weights and by the output."""
    with pytest.raises(AssertionError, match="reference forward output changed"):
        with unchanged(model):
            model.original_model.model.rotary_emb.inv_freq.mul_(2.0)


def test_exception_of_the_block_propagates_when_the_model_is_intact(model, unchanged):
    with pytest.raises(KeyError, match="boom"):
        with unchanged(model):
            raise KeyError("boom")


def test_model_changed_and_block_raised(model, unchanged):
    with pytest.raises(AssertionError, match="the block raised ValueError") as info:
        with unchanged(model):
            model.blocks[1].hook_resid_pre.add_hook(lambda a, hook: None)
            raise ValueError("half-way")
    assert isinstance(info.value.__cause__, ValueError)
    assert _hook_state(model) == {}


def test_training_flag_is_checked(model, unchanged):
    with pytest.raises(AssertionError, match="training flag"):
        with unchanged(model):
            model.train()
