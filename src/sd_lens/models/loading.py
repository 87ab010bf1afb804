"""Get a real LLM into TransformerLens hooks without a model hub: `load_model`, the public entry point.

`load_model` returns a TransformerLens ``TransformerBridge`` in HookedTransformer-compatible
mode (the hook names ``blocks.{l}.hook_resid_post``, ``blocks.{l}.ln2.hook_normalized`` ... that
TransformerLens 2.x used). It asks the model sources (:mod:`sd_lens.models.sources`: a bundled name,
a ``.gguf`` file, a local Hugging Face directory, a Hugging Face model id) which one a name belongs
to, has that source locate the model's Hugging Face directory (built-in models come from packages
that ship GGUF weights, dequantized once into a cache; hub ids are read from the local hub cache,
downloaded first when online and not cached), and boots the directory as a TransformerLens model.
The names callers import from here (`BUNDLED`, `cache_root`, `hub_model_dir`, `model_name`...) live
in the sources and in :mod:`sd_lens.models.metadata`; this module re-exports them.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import torch

# ``name as name``: re-exported for the callers that import it from here (it lives in its source module,
# or in metadata; the API reference shows it there)
from sd_lens.errors import (
    InputError,
    MissingDependencyError,
    UnknownModelError,
    UnsupportedArchitectureError,
)
from sd_lens.models.metadata import FLOAT16_WARNING as FLOAT16_WARNING
from sd_lens.models.metadata import model_dtype as model_dtype
from sd_lens.models.metadata import model_name as model_name
from sd_lens.models.registry import registered_architectures
from sd_lens.models.sources import SOURCES, source_of
from sd_lens.models.sources import ModelSource as ModelSource
from sd_lens.models.sources.bundled import BUNDLED as BUNDLED
from sd_lens.models.sources.bundled import DEFAULT_MODEL as DEFAULT_MODEL
from sd_lens.models.sources.bundled import BundledModel as BundledModel
from sd_lens.models.sources.bundled import converted_model_dir as converted_model_dir
from sd_lens.models.sources.bundled import known_models
from sd_lens.models.sources.gguf_file import CACHE_ENV as CACHE_ENV
from sd_lens.models.sources.gguf_file import cache_root as cache_root
from sd_lens.models.sources.hub import hub_model_dir as hub_model_dir
from sd_lens.models.sources.hub import is_hub_id as is_hub_id
from sd_lens.types import HookedModel


def _is_transformer_lens_model(obj: Any) -> bool:
    cls_names = {c.__name__ for c in type(obj).__mro__}
    return bool(cls_names & {"TransformerBridge", "HookedTransformer"})


def load_model(
    name: Any = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = True,
    device_map: str | dict[str, Any] | None = None,
) -> HookedModel:
    """Load a model as a TransformerLens model with HookedTransformer hook names: a ``TransformerBridge``
    in compatibility mode (TransformerLens 4), or a ``HookedTransformer`` under TransformerLens 2.x
    (docs/models.md, "What loads how").

    Args:
        name: a built-in name (``"smollm2-135m-instruct"``, ``"gemma-3-270m"``), a local Hugging
            Face model directory, a ``.gguf`` file, a Hugging Face model id (``"gpt2"``,
            ``"org/name"``; see :func:`hub_model_dir`), or an already-built TransformerLens model
            (``TransformerBridge`` or TL 2.x ``HookedTransformer``), which is returned unchanged.
        device: torch device for the weights.
        dtype: weight dtype, and the dtype the model's forward runs in: sd_lens computes its statistics
            in float32, but the activations are those of this dtype. ``torch.float16`` can move high
            norms by tens of percent or overflow (:func:`sd_lens.pipeline.run_analysis` warns, and
            records the dtype in its JSON); ``torch.bfloat16`` keeps float32's range.
        compatibility_mode: call ``enable_compatibility_mode()`` (norm scales folded into the
            following weights, legacy hook names). Leave on unless you know why not.
        device_map: split the model over several devices (accelerate's ``device_map``:
            ``"auto"``, ``"balanced"``, ``"sequential"`` or ``{module name: device}``) for a model too
            big for one; overrides ``device``. Every module must sit on an accelerator or every one on
            the CPU: sd_lens reads weights directly, and accelerate's CPU/disk offloading leaves them
            as placeholders. The analyses follow each block's device (docs/models.md).

    Raises:
        UnknownModelError: ``name`` is neither built in, nor an existing path, nor a hub id that is
            in the local hub cache or can be downloaded.
        MissingDependencyError: the package holding the weights is not installed.
        UnsupportedArchitectureError: TransformerLens has no adapter for the checkpoint.
    """
    if _is_transformer_lens_model(name):
        return name
    check_device_map(device_map)
    if not isinstance(name, (str, os.PathLike)):
        raise UnknownModelError(
            f"load_model expects a model name, a path or a TransformerLens model, got {type(name).__name__}. "
            f"Known names: {', '.join(known_models())}."
        )
    kind = source_of(name)
    if kind is None:
        key = str(name)
        path = Path(key).expanduser()
        what = (
            f"{path} exists but is neither a model directory (with config.json) nor a .gguf file"
            if path.exists()
            else "not a built-in name, no such model directory (with config.json) or .gguf file, "
            "and not a Hugging Face model id (org/name)"
        )
        raise UnknownModelError(f"Unknown model {key!r}: {what}. Known names: {', '.join(known_models())}.")
    model_dir, label = SOURCES[kind].locate(name)
    return _boot(
        model_dir, label, device=device, dtype=dtype, compatibility_mode=compatibility_mode, device_map=device_map
    )


#: accelerate's named placements
DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: Any) -> None:
    """Raise :class:`InputError` for a ``device_map`` sd_lens cannot analyse (before anything loads)."""
    if device_map is None:
        return
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_NAMES:
            raise InputError(
                f"device_map {device_map!r}: give one of {', '.join(DEVICE_MAP_NAMES)} or a dict {{module name: device}}"
            )
    elif isinstance(device_map, dict) and device_map:
        places = []
        for key, where in device_map.items():
            if not isinstance(key, str):
                raise InputError(f"device_map keys are module names (strings), got {key!r}")
            if isinstance(where, bool) or not isinstance(where, (int, str, torch.device)):
                raise InputError(f"device_map[{key!r}] = {where!r}: give a device (\"cuda:0\", 0, \"cpu\")")
            try:
                places.append(_place(where))
            except (RuntimeError, ValueError) as exc:
                raise InputError(f"device_map[{key!r}] = {where!r} is not a device torch knows") from exc
        _check_offload(places)
    else:
        raise InputError(f"device_map must be a name ({', '.join(DEVICE_MAP_NAMES)}) or a non-empty dict, got {device_map!r}")
    if importlib.util.find_spec("accelerate") is None:
        raise MissingDependencyError("device_map needs accelerate: pip install accelerate")


def _on_the_cpu_only(device_map: Any) -> bool:
    """True when ``device_map`` places everything on the CPU (or there is no accelerator for a named one).

    Such a model loads as a plain CPU model: accelerate would otherwise "offload" it to the CPU,
    leaving placeholder weights.
    """
    if device_map is None:
        return True
    if isinstance(device_map, str):
        return not torch.cuda.is_available()
    return all(_place(v) == "cpu" for v in device_map.values())


def _place(where: Any) -> str:
    """The kind of place a device_map value names: ``"cuda"``, ``"cpu"``, ``"disk"``..."""
    if where == "disk":
        return "disk"
    return torch.device(f"cuda:{where}" if isinstance(where, int) else where).type


def _check_offload(places: list[str]) -> None:
    if "disk" in places or ("cpu" in places and any(p != "cpu" for p in places)):
        raise InputError(
            "the device_map offloads modules to the CPU or disk next to accelerators: accelerate then keeps their "
            "weights as placeholders that sd_lens cannot read. Put every module on an accelerator (give "
            "max_memory or more devices), or load the whole model on the CPU"
        )


def _boot(
    model_dir: Path, label: str, *, device: Any, dtype: torch.dtype, compatibility_mode: bool,
    device_map: str | dict[str, Any] | None = None,
) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            extra = {} if _on_the_cpu_only(device_map) else {"device_map": device_map}
            hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **extra)
            # add_bos_token=True up front: TransformerLens would otherwise load the tokenizer a second time
            tok = AutoTokenizer.from_pretrained(model_dir, add_bos_token=True)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "does not recognize this architecture" in str(exc):
            raise UnsupportedArchitectureError(
                f"{model_dir} is not a causal language model transformers can load as one ({str(exc)[:120]}...); "
                f"sd_lens analyses decoder-only LMs: {', '.join(registered_architectures())}"
            ) from exc
        raise InputError(f"cannot load the model in {model_dir}: {str(exc)[:200]}") from exc
    except OSError as exc:
        raise InputError(
            f"cannot load the model in {model_dir}: {str(exc).splitlines()[0][:200]}. A model folder needs "
            "config.json, its weights (*.safetensors or pytorch_model.bin) and the tokenizer files."
        ) from exc
    return model_from_hf(hf, tok, name=label, device=device, dtype=dtype, compatibility_mode=compatibility_mode)


def model_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str = "model",
    device: Any = "cpu",
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = True,
) -> Any:
    """A loaded Hugging Face causal LM as a TransformerLens model: a ``TransformerBridge``
    (TransformerLens 4) or, where TransformerLens has no bridge (2.x), a ``HookedTransformer``
    built by :func:`sd_lens.models.hooked.hooked_from_hf`."""
    from sd_lens.models.hooked import backend, hooked_from_hf

    if backend() != "bridge" and getattr(hf_model, "hf_device_map", None):
        raise InputError(
            "a model split over devices (device_map) needs TransformerLens 4's TransformerBridge; with "
            "TransformerLens 2.x load it on one device (HookedTransformer's own n_devices splits it by blocks)"
        )
    build = bridge_from_hf if backend() == "bridge" else hooked_from_hf
    return build(hf_model, tokenizer, name=name, device=device, dtype=dtype, compatibility_mode=compatibility_mode)


def bridge_from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str = "model",
    device: Any = "cpu",
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = True,
) -> Any:
    """Wrap an already-loaded Hugging Face causal LM in a TransformerLens bridge.

    A model accelerate dispatched over several devices (``hf_device_map``) stays where it is: the
    bridge's inputs go to the device of its embedding.
    """
    from transformer_lens.model_bridge import TransformerBridge

    split = getattr(hf_model, "hf_device_map", None)
    if split:
        places = [_place(v) for v in split.values()]
        _check_offload(places + (["disk"] if "cpu" in places else []))  # dispatched to the CPU: offloaded
        device = hf_model.get_input_embeddings().weight.device
        hf_model = hf_model.eval()
    else:
        hf_model = hf_model.to(device).eval()
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [type(hf_model).__name__]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(
                name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
            )
    except (ValueError, NotImplementedError, KeyError) as exc:
        if "architecture" in str(exc).lower() or "support" in str(exc).lower():
            raise UnsupportedArchitectureError(
                f"TransformerLens has no adapter for {type(hf_model).__name__}; sd_lens supports "
                f"{', '.join(registered_architectures())}. ({str(exc)[:200]}...)"
            ) from exc
        raise
    if compatibility_mode:
        # Folding value biases copies every weight once more; skip it when there are none.
        has_v_bias = any(
            getattr(m, "bias", None) is not None for n, m in hf_model.named_modules() if n.endswith(("v_proj", "c_attn", "query_key_value"))
        )
        bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=has_v_bias)
    bridge.eval()
    bridge.sd_lens_name = name  # the label analyses report as `model`
    return bridge
