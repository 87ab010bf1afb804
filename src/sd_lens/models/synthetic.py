"""Random-init models of any registered family at any shape, with a *planted* singular defect.

:func:`synthetic_model` builds a model in memory from a ``transformers`` config (no hub, no download):
any family of :data:`FAMILIES` at a named research shape (:data:`SHAPES`: ``"1b"``, ``"7b"``,
``"8b"`` with grouped-query attention, ``"70b"``) or an explicit one, in any dtype, on any device —
``"meta"`` included, for a dry run (:func:`sd_lens.models.dry_run.dry_run`) that allocates nothing.

**The planted defect** follows the mechanism the papers describe (Sun et al. 2024, §3; An et al.
2025, §4; Wang et al. 2025): at block ``block`` one FFN neuron fires only on the initial token and
its down-projection row has a single non-zero weight, ``W_out[neuron, channel]``, so the initial
token's residual state explodes along ``channel``; at ``decay_block`` a second neuron, which fires
only on that exploded state, writes the opposite value into the same channel and the state is
ordinary again. Everything else is random. How the two neurons single out their token:

* **Init.** Reading weights (``W_Q``, ``W_K``, ``W_V``, ``W_in``, ``W_gate``) are ``N(0, 1/fan_in)``;
  writing weights (``W_O``, ``W_out``) are the same divided by ``sqrt(2 n_layers)``, so every block
  adds about as much as the embedding holds and no ordinary token grows high-norm; biases are zero,
  norm scales one. Token embeddings are ``N(0, 1)`` plus a shared mean direction ``μ`` (``‖μ‖ =
  sqrt(d_model)``; trained embeddings share a mean too); the BOS embedding lacks ``μ``.
* **Trigger.** The first forward measures, at the FFN input of the block (``ln2.hook_normalized``),
  the initial token's state ``z₀`` and those of ordinary tokens of a fixed random calibration text.
  The neuron reads ``r = ẑ₀ − λ m̂`` (``m̂`` the ordinary tokens' mean direction, ``λ`` the value that
  puts every calibration token furthest on the negative side), scaled so the initial token's
  pre-activation is ``P``: a SiLU/GELU neuron then gives about ``P²`` (gated) or ``P`` to the
  initial token and ~0 to every ordinary one. ``P`` is chosen so that the activation is a massive
  activation of the down-projection input (≥ 2 000 × the block's median, ≥ 200).
* **Explosion.** ``W_out[neuron]`` is zero but for ``channel``, which gets ``M / h₀`` (``h₀`` the
  measured activation, ``M`` = 3 000 × the block's median ``|resid_post|``, at least 300): a massive
  activation in the residual stream (Sun et al.'s 1 000× criterion holds with margin).
* **Decay.** At ``decay_block`` a second neuron is built the same way against the exploded state
  (which the mean direction no longer dominates) and its row gets ``−T / h₀``, ``T`` the channel's
  measured value there: the channel is cancelled exactly for the initial token.
* **Post-norms** (Gemma-3): the FFN output is normalised before it is added, so the block's
  post-FFN scale of ``channel`` is set to ``2|T| / sqrt(d_model)`` and the other neurons' weights into
  ``channel`` are zeroed at the two blocks (otherwise that scale would amplify ordinary tokens); the
  planted weight is then solved from the post-norm's formula.

Ordinary tokens stay ordinary: the construction checks, on its calibration text, that no ordinary
token's pre-activation is above ``−P/4`` at either neuron, and raises otherwise (a shape too small
to separate the initial token: use a larger ``d_model``).

The Hugging Face model is built with the ``transformers`` config classes of each family and
wrapped like :func:`sd_lens.models.tiny.tiny_model` (a ``TransformerBridge`` in compatibility mode
under TransformerLens 4); the weights are edited through the TransformerLens names, which alias the
Hugging Face parameters, and measured through :mod:`sd_lens.runtime`. On ``device="meta"`` the
``transformers`` model is returned as it is (TransformerLens refuses to process weights that have no
values), with the defect's coordinates and no measured values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sd_lens.errors import InputError, UnsupportedArchitectureError
from sd_lens.models.registry import get_family
from sd_lens.models.tiny import char_tokenizer

__all__ = [
    "FAMILIES",
    "SHAPES",
    "ModelShape",
    "PlantedDefect",
    "hf_config",
    "resolve_shape",
    "synthetic_model",
]

#: family names :func:`synthetic_model` builds; ``mistral`` and ``qwen2`` are the ``llama`` family's
#: other architectures (Qwen2 with attention biases)
FAMILIES = ("llama", "mistral", "qwen2", "gemma3", "gpt2", "neox")

BOS_ID, EOS_ID, PAD_ID = 1, 2, 0
#: ids the character tokenizer gives to ordinary characters (after ``<pad> <bos> <eos> <unk>``)
_FIRST_ORDINARY, _N_CHARS = 4, 100


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a model: residual width, FFN width, blocks, query heads, key/value heads, vocabulary."""

    d_model: int
    d_mlp: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int

    def __post_init__(self) -> None:
        for name in ("d_model", "d_mlp", "n_layers", "n_heads", "n_kv_heads", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"ModelShape.{name}={value!r}: give a positive integer")
        if self.d_model % self.n_heads:
            raise InputError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise InputError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.vocab_size < _FIRST_ORDINARY + _N_CHARS:
            raise InputError(f"vocab_size={self.vocab_size}: the character tokenizer needs at least 104 ids")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def n_params(self, gated: bool = True, tied: bool = False) -> int:
        """Parameters of a model of this shape (norms and biases left out: < 0.1 %)."""
        d, f, kv = self.d_model, self.d_mlp, self.n_kv_heads * self.d_head
        attn = 2 * d * d + 2 * d * kv
        ffn = (3 if gated else 2) * d * f
        emb = self.vocab_size * d * (1 if tied else 2)
        return self.n_layers * (attn + ffn) + emb


#: named shapes: TinyLlama-1.1B, Llama-2-7B, Llama-3-8B (grouped-query), Llama-2-70B (grouped-query),
#: and ``"small"``, the default, for tests
SHAPES: dict[str, ModelShape] = {
    "small": ModelShape(d_model=128, d_mlp=256, n_layers=6, n_heads=4, n_kv_heads=2, vocab_size=104),
    "1b": ModelShape(d_model=2048, d_mlp=5632, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000),
    "7b": ModelShape(d_model=4096, d_mlp=11008, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000),
    "8b": ModelShape(d_model=4096, d_mlp=14336, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256),
    "70b": ModelShape(d_model=8192, d_mlp=28672, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000),
}


def resolve_shape(shape: str | ModelShape = "small", **sizes: int | None) -> ModelShape:
    """A :class:`ModelShape` from a name of :data:`SHAPES` (or a shape), with ``sizes`` overriding fields."""
    if isinstance(shape, str):
        if shape.lower() not in SHAPES:
            raise InputError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)} or give a ModelShape")
        base = SHAPES[shape.lower()]
    elif isinstance(shape, ModelShape):
        base = shape
    else:
        raise InputError(f"shape must be a name of sd_lens.models.synthetic.SHAPES or a ModelShape, got {shape!r}")
    given = {k: v for k, v in sizes.items() if v is not None}
    unknown = set(given) - set(ModelShape.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown size(s) {', '.join(sorted(unknown))}")
    if "n_heads" in given and "n_kv_heads" not in given:  # keep the grouping valid
        given["n_kv_heads"] = math.gcd(given["n_heads"], base.n_kv_heads)
    return replace(base, **given)


@dataclass(frozen=True)
class PlantedDefect:
    """The ground truth of a :func:`synthetic_model`'s defect.

    ``block``: where the initial token explodes (its FFN adds ``massive_value`` to ``channel``);
    ``channel``: the residual channel; ``neuron``: the FFN neuron whose ``W_out[neuron, channel]`` writes
    it; ``decay_block`` / ``decay_neuron``: where and by which neuron it is cancelled (None: never).
    ``massive_value`` and ``activation`` (the neuron's output ``h``) are measured on the built model in
    float32-accumulated arithmetic; NaN on the meta device.
    """

    block: int
    channel: int
    neuron: int
    decay_block: int | None
    decay_neuron: int | None = None
    massive_value: float = math.nan
    activation: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def hf_config(family: str, shape: ModelShape, *, max_position_embeddings: int = 2048) -> Any:
    """The ``transformers`` config of a ``family`` model of ``shape`` (BOS 1, EOS 2, PAD 0, eager attention)."""
    import transformers as tf

    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    s = shape
    common: dict[str, Any] = dict(
        vocab_size=s.vocab_size, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )
    llama_like = dict(
        hidden_size=s.d_model, intermediate_size=s.d_mlp, num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads, num_key_value_heads=s.n_kv_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=False, **common,
    )
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(sliding_window=None, head_dim=s.d_head, **llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(use_sliding_window=False, **llama_like)
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            hidden_size=s.d_model, intermediate_size=s.d_mlp, num_hidden_layers=s.n_layers,
            num_attention_heads=s.n_heads, num_key_value_heads=s.n_kv_heads, head_dim=s.d_head,
            query_pre_attn_scalar=s.d_head, max_position_embeddings=max_position_embeddings,
            sliding_window=max_position_embeddings, **common,
        )
    if family == "gpt2":
        return tf.GPT2Config(
            n_embd=s.d_model, n_inner=s.d_mlp, n_layer=s.n_layers, n_head=s.n_heads,
            n_positions=max_position_embeddings, tie_word_embeddings=False, **common,
        )
    return tf.GPTNeoXConfig(
        hidden_size=s.d_model, intermediate_size=s.d_mlp, num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads, max_position_embeddings=max_position_embeddings,
        use_parallel_residual=True, rotary_pct=0.25, tie_word_embeddings=False, **common,
    )


# ------------------------------------------------------------------------------------------------
# init
# ------------------------------------------------------------------------------------------------
_WRITERS = ("o_proj", "down_proj", "c_proj", "dense", "dense_4h_to_h")


def _init_weights(hf: Any, family: str, shape: ModelShape, gen: torch.Generator) -> None:
    """The scales of the module docstring, drawn from ``gen`` (on the CPU, in float32, then cast)."""
    from transformers.pytorch_utils import Conv1D

    def draw(t: Tensor, std: float) -> Tensor:
        return (torch.randn(t.shape, generator=gen) * std).to(t.dtype)

    writer_scale = 1.0 / math.sqrt(2 * shape.n_layers)
    with torch.no_grad():
        for name, module in hf.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, (torch.nn.Linear, Conv1D)) and isinstance(weight, Tensor):
                fan_in = weight.shape[0] if isinstance(module, Conv1D) else weight.shape[1]
                std = 1.0 / math.sqrt(fan_in)
                if name.rsplit(".", 1)[-1] in _WRITERS:
                    std *= writer_scale
                weight.copy_(draw(weight, std))
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        emb = hf.get_input_embeddings().weight
        # Gemma multiplies its embeddings by sqrt(d_model): store them that much smaller
        unit = 1.0 / math.sqrt(shape.d_model) if family == "gemma3" else 1.0
        table = torch.randn(emb.shape, generator=gen)
        mu = torch.randn(shape.d_model, generator=gen)
        mu = mu - mu.mean()  # survives a LayerNorm's centring
        mu = mu / mu.norm() * math.sqrt(shape.d_model)
        table += mu
        table[BOS_ID] -= mu  # the initial token does not share the mean direction
        emb.copy_((table * unit).to(emb.dtype))
        wpe = getattr(getattr(hf, "transformer", None), "wpe", None)  # GPT-2's positions: small
        if wpe is not None:
            wpe.weight.copy_(draw(wpe.weight, 0.1))


# ------------------------------------------------------------------------------------------------
# measuring through the runtime
# ------------------------------------------------------------------------------------------------
def _calibration_ids(gen: torch.Generator, n_rows: int = 8, n_pos: int = 48) -> Tensor:
    body = torch.randint(_FIRST_ORDINARY, _FIRST_ORDINARY + _N_CHARS, (n_rows, n_pos), generator=gen)
    return torch.cat([torch.full((n_rows, 1), BOS_ID), body], dim=1)


def _measure(model: Any, ids: Tensor, names: list[str]) -> dict[str, Tensor]:
    from sd_lens.runtime import run
    from sd_lens.runtime.reducers import keep

    out = run(model, ids.to(_device(model)), {n: keep for n in names})
    return {n: out[n].float() for n in names}


def _device(model: Any) -> Any:
    from sd_lens.runtime.tokens import model_device

    return model_device(model)


def _separator(z0: Tensor, ordinary: Tensor, *, min_margin: float = 0.25) -> tuple[Tensor, float]:
    """A direction ``r`` with ``r·z0 = 1`` and every ordinary ``r·z`` as negative as possible: ``(r, worst)``,
    ``worst`` the largest ordinary ``r·z`` (≤ −min_margin, or InputError)."""
    z0_hat = z0 / z0.norm()
    mean = ordinary.mean(dim=0)
    m_hat = mean / mean.norm()
    best: tuple[float, Tensor] | None = None
    for lam in torch.linspace(0.0, 20.0, 401).tolist():
        r = z0_hat - lam * m_hat
        at0 = float(r @ z0)
        if at0 <= 1e-6:
            continue
        worst = float((ordinary @ r).max()) / at0
        if best is None or worst < best[0]:
            best = (worst, r / at0)
    if best is None or best[0] > -min_margin:
        raise InputError(
            "the planted defect's neuron cannot single out the initial token in this model (the best separating "
            f"direction leaves an ordinary token at {best[0] if best else float('nan'):.2f} of its pre-activation); "
            "use a larger d_model or another seed"
        )
    return best[1], best[0]


def _act(gated: bool, act_fn: str, pre: float) -> float:
    """The neuron's output for pre-activation ``pre`` (gate and up both ``pre`` when gated)."""
    x = torch.tensor(pre, dtype=torch.float64)
    if act_fn in ("silu", "swish"):
        a = F.silu(x)
    elif act_fn == "relu":
        a = F.relu(x)
    elif act_fn == "gelu":
        a = F.gelu(x)
    else:
        a = F.gelu(x, approximate="tanh")
    return float(a * x) if gated else float(a)


def _set_post_scale(model: Any, layer: int, channel: int, value: float, one_plus: bool) -> None:
    ln = model.blocks[layer].ln2_post
    original = getattr(ln, "original_component", None)
    weight = getattr(original, "weight", None)
    if isinstance(weight, Tensor):  # a bridge: the Hugging Face module's raw weight
        weight[channel] = value - 1.0 if one_plus else value
    else:  # a HookedTransformer's effective scale
        ln.w[channel] = value


def _plant_neuron(
    model: Any, layer: int, channel: int, neuron: int, target: float, calib: Tensor, *,
    gated: bool, post_norm: bool, one_plus: bool, act_fn: str, activation_scale: float,
) -> tuple[float, float]:
    """Make ``neuron`` of block ``layer`` fire on position 0 only and add ``target`` to ``channel`` there.

    The neuron's output row and (with post-norms) the channel's column are zeroed first, then the
    position-0 and calibration states are measured; returns (activation h₀, ``target``).
    """
    from sd_lens.runtime.hooks import act_name

    mlp = model.blocks[layer].mlp
    z_name = act_name("normalized", layer, "ln2")
    h_name = act_name("post", layer)
    with torch.no_grad():
        # the neuron and the channel start silent, so the measurement does not see them
        mlp.W_out[neuron, :] = 0
        if post_norm:
            mlp.W_out[:, channel] = 0
        got = _measure(model, calib, [z_name, h_name])
        z = got[z_name]
        z0, ordinary = z[0, 0], z[:, 1:].reshape(-1, z.shape[-1])
        med_h = float(got[h_name][:, 1:].abs().median())
        r, _worst = _separator(z0, ordinary)
        h_target = max(activation_scale * med_h, 200.0)
        # pre-activation P whose activation is h_target (monotone above 1: bisection)
        lo, hi = 1.0, 1e4
        for _ in range(80):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if _act(gated, act_fn, mid) < h_target else (lo, mid)
        pre = hi
        w = (pre * r).to(mlp.W_in.dtype).to(mlp.W_in.device)
        mlp.W_in[:, neuron] = w
        if gated:
            mlp.W_gate[:, neuron] = w
        b_in = getattr(mlp, "b_in", None)
        if isinstance(b_in, Tensor):
            b_in[neuron] = 0
        h0 = float(_measure(model, calib[:1, :1], [h_name])[h_name][0, 0, neuron])
        if post_norm:
            d = mlp.W_out.shape[1]
            scale = 2.0 * abs(target) / math.sqrt(d)
            _set_post_scale(model, layer, channel, scale, one_plus)
            # y = h @ W_out at position 0 without the neuron: its square norm R (channel is zero there)
            h_all = _measure(model, calib[:1, :1], [h_name])[h_name][0, 0]
            y = h_all @ mlp.W_out.float()
            eps = float(getattr(model.cfg, "eps", 1e-6))
            rest = float((y**2).sum())
            y_ch = math.sqrt((rest + eps * d) / 3.0) * math.copysign(1.0, target)
            mlp.W_out[neuron, channel] = y_ch / h0
        else:
            mlp.W_out[neuron, channel] = target / h0
    return h0, target


def _plant(model: Any, family: str, defect: PlantedDefect, gen: torch.Generator) -> PlantedDefect:
    from sd_lens.runtime.hooks import act_name

    fam = get_family(model)
    gated, post_norm = fam.gated, fam.post_norms
    one_plus = float(fam.effective_scale(torch.zeros(1))[0]) == 1.0
    act_fn = str(getattr(model.cfg, "act_fn", "silu"))
    calib = _calibration_ids(gen)
    b, ch = defect.block, defect.channel
    resid_b = act_name("resid_post", b)
    med_resid = float(_measure(model, calib, [resid_b])[resid_b][:, 1:].abs().median())
    massive = max(3000.0 * med_resid, 300.0)
    h0, _ = _plant_neuron(
        model, b, ch, defect.neuron, massive, calib, gated=gated, post_norm=post_norm, one_plus=one_plus,
        act_fn=act_fn, activation_scale=2000.0,
    )
    value = float(_measure(model, calib[:1, :1], [resid_b])[resid_b][0, 0, ch])
    out = replace(defect, massive_value=value, activation=h0)
    if defect.decay_block is not None and defect.decay_neuron is not None:
        c = defect.decay_block
        resid_c = act_name("resid_post", c)
        with torch.no_grad():
            model.blocks[c].mlp.W_out[defect.decay_neuron, :] = 0
            if post_norm:
                model.blocks[c].mlp.W_out[:, ch] = 0
        # what the channel holds after block c without the decay neuron, to be cancelled
        left = float(_measure(model, calib[:1, :1], [resid_c])[resid_c][0, 0, ch])
        _plant_neuron(
            model, c, ch, defect.decay_neuron, -left, calib, gated=gated, post_norm=post_norm, one_plus=one_plus,
            act_fn=act_fn, activation_scale=20.0,
        )
    return out


def synthetic_model(
    family: str = "llama",
    shape: str | ModelShape = "small",
    *,
    d_model: int | None = None,
    d_mlp: int | None = None,
    n_layers: int | None = None,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
    vocab_size: int | None = None,
    block: int | None = None,
    channel: int | None = None,
    neuron: int | None = None,
    decay_block: int | None | str = "auto",
    plant: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
    compatibility_mode: bool = True,
) -> tuple[Any, PlantedDefect | None]:
    """A random-init model of ``family`` and ``shape`` with a planted defect: ``(model, PlantedDefect)``.

    Args:
        family: one of :data:`FAMILIES` (``llama``, ``mistral``, ``qwen2``, ``gemma3``, ``gpt2``, ``neox``).
        shape: a name of :data:`SHAPES` (``"small"``, ``"1b"``, ``"7b"``, ``"8b"``, ``"70b"``) or a
            :class:`ModelShape`; ``d_model`` ... ``vocab_size`` override its fields.
        block, channel, neuron: where the initial token explodes, along which residual channel, by which
            FFN neuron; default: block 1 (0 in a model of fewer than 3 blocks), channel and neuron drawn
            from ``seed``.
        decay_block: the block that cancels it; ``"auto"``: ``n_layers - 2`` (``None``: never cancelled).
            Its neuron is drawn from ``seed``.
        plant: False for the random model alone (the second value is then None).
        seed: seeds every weight, the calibration text and the default coordinates.
        dtype, device: of the weights; ``device="meta"`` returns the ``transformers`` model with nothing
            allocated (and the defect's coordinates, unmeasured).
        compatibility_mode: as :func:`sd_lens.models.tiny.tiny_model` (the analyses need it on).

    Raises:
        InputError: an unknown family or shape, coordinates outside the model, or a shape too small for
            the planted neuron to single out the initial token (see the module docstring).
    """
    from transformers import AutoModelForCausalLM

    s = resolve_shape(
        shape, d_model=d_model, d_mlp=d_mlp, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        vocab_size=vocab_size,
    )
    if family == "gpt2" or family == "neox":
        s = replace(s, n_kv_heads=s.n_heads)  # no grouped-query attention in these architectures
    cfg = hf_config(family, s)
    gen = torch.Generator().manual_seed(seed)
    L = s.n_layers
    b = (1 if L >= 3 else 0) if block is None else block
    c: int | None = (L - 2 if L - 2 > b else None) if decay_block == "auto" else decay_block  # type: ignore[assignment]
    ch = int(torch.randint(s.d_model, (1,), generator=gen)) if channel is None else channel
    n = int(torch.randint(s.d_mlp, (1,), generator=gen)) if neuron is None else neuron
    n2 = int(torch.randint(s.d_mlp, (1,), generator=gen))
    if not 0 <= b < L:
        raise InputError(f"block={b}: the model has blocks 0..{L - 1}")
    if c is not None and not b < c < L:
        raise InputError(f"decay_block={c}: give a block after block={b} and before {L}")
    if not 0 <= ch < s.d_model or not 0 <= n < s.d_mlp:
        raise InputError(f"channel={ch} / neuron={n}: the model has {s.d_model} channels and {s.d_mlp} neurons")
    defect = PlantedDefect(block=b, channel=ch, neuron=n, decay_block=c, decay_neuron=None if c is None else n2)
    if str(device) != "meta":
        from sd_lens.models.hooked import backend, tl_version

        if backend() != "bridge":
            raise UnsupportedArchitectureError(
                f"synthetic_model plants its defect through TransformerLens 4's TransformerBridge; this is "
                f"TransformerLens {'.'.join(map(str, tl_version()))}, whose converted config of a synthetic shape "
                "disagrees with its weights. Install transformer-lens>=4.3 (device='meta' for a dry run works here)"
            )
    if str(device) == "meta":
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype), (
                defect if plant else None
            )
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    _init_weights(hf, family, s, gen)
    from sd_lens.models.loading import model_from_hf

    # planted in float32, then cast: the measured values hold for the float32 model, within the dtype's
    # rounding for the cast one
    model = model_from_hf(
        hf.eval(), char_tokenizer(), name=f"synthetic-{family}", device=device, dtype=torch.float32,
        compatibility_mode=compatibility_mode,
    )
    # every text starts with BOS, whatever TransformerLens assumes for the architecture (Qwen2 and
    # GPT-NeoX checkpoints have none): position 0 is then the same token in every text
    model.cfg.default_prepend_bos = True
    if plant:
        defect = _plant(model, family, defect, gen)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model, defect if plant else None
