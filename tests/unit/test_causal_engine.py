"""The experiment engine (sd_lens.analyses.causal.engine.sweep): named axes, controls run and summarised
once, and nothing an experiment does survives it, even when it raises."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest
import torch

import sd_lens
from conftest import planted_bos_model
from sd_lens.analyses.attribution import component_attribution
from sd_lens.analyses.causal import Sweep, Trial, engine, random_direction, sweep
from sd_lens.analyses.defects import find_defects
from sd_lens.analyses.probe import probe_norms
from sd_lens.errors import InputError, SdLensError
from sd_lens.interventions import project_out, remove_matched
from sd_lens.models.tiny import tiny_model
from sd_lens.quantize import evaluate
from sd_lens.runtime import act_name, run
from sd_lens.runtime.reducers import first_row, token_norms

TEXT = "The cat sat on the mat."


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny_model("llama")


def _norms(model: Any, hooks: Any = ()) -> torch.Tensor:
    """resid_post norm of every block (position 0 of one text)."""
    names = [act_name("resid_post", layer) for layer in range(model.cfg.n_layers)]
    out = run(model, model.to_tokens(TEXT), {n: first_row(token_norms) for n in names}, fwd_hooks=list(hooks))
    return torch.stack([out[n][0] for n in names])


def _experiment(model: Any, calls: list[str], seeds=(0, 1, 2)) -> Sweep:
    d = int(model.cfg.d_model)
    edits = {"u": random_direction(d, 100), "w": random_direction(d, 101)}

    def intervene(site: int, edit: str) -> Trial:
        removed: list[float] = []
        return Trial([(act_name("resid_post", site), project_out(edits[edit], [0], removed))],
                            record={"removed": removed})

    def control(iv: Trial, seed: int, site: int, edit: str) -> Trial:
        return Trial([(act_name("resid_post", site), remove_matched(random_direction(d, seed),
                                                                           iv.record["removed"][0], [0]))])

    def measure(iv: Trial) -> torch.Tensor:
        calls.append("clean" if not iv.hooks else "run")
        return _norms(model, iv.hooks)

    return sweep(
        model, {"site": (0, 1), "edit": tuple(edits)}, intervene, measure=measure, control=control, seeds=seeds,
        effect=lambda v, clean: 1.0 - float(v[-1]) / float(clean[-1]),
    )


def test_axes_are_named_and_shaped(llama, unchanged):
    calls: list[str] = []
    with unchanged(llama):
        out = _experiment(llama, calls)
    assert out.axes == ("site", "edit") and out.control_axes == ("site", "edit", "seed")
    assert out.coords == {"site": (0, 1), "edit": ("u", "w"), "seed": (0, 1, 2)}
    assert out.effect.shape == (2, 2) and out.control_effect.shape == (2, 2, 3)
    assert out.effect.dtype == torch.float64
    assert out.points == [(0, "u"), (0, "w"), (1, "u"), (1, "w")]
    torch.testing.assert_close(out.value(site=1, edit="w"), out.values[(1, "w")])
    with pytest.raises(InputError):
        out.point(site=1)


def test_controls_run_once_and_their_statistics_are_computed_once(llama):
    calls: list[str] = []
    out = _experiment(llama, calls)
    # one clean forward, one per point, one per point and seed: nothing measured twice
    assert calls.count("clean") == 1 and calls.count("run") == 4 + 4 * 3
    clean = _norms(llama)
    for p in out.points:
        i = out.index(p)
        controls = out.control_values(**dict(zip(out.axes, p)))
        assert len(controls) == 3
        manual = torch.tensor([1.0 - float(c[-1]) / float(clean[-1]) for c in controls], dtype=torch.float64)
        torch.testing.assert_close(out.control_effect[i], manual)
        s = out.stats[p]
        assert (s.mean, s.min, s.max, s.n) == pytest.approx((float(manual.mean()), float(manual.min()), float(manual.max()), 3))
        assert s.specific == (float(out.effect[i]) > float(manual.max()))
        # the control removed exactly the norm the edit removed, along the seed's direction
        assert out.trials[p].record["removed"][0] > 0


def test_the_same_seed_draws_the_same_direction():
    a = random_direction(64, 3)
    torch.randn(10)  # whatever ran before
    assert torch.equal(a, random_direction(64, 3))
    assert torch.equal(a, torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(3)), dim=0))
    assert not torch.equal(a, random_direction(64, 4))


def test_stop_and_choose(llama):
    calls: list[str] = []
    d = int(llama.cfg.d_model)

    def intervene(site: int) -> Trial:
        return Trial([(act_name("resid_post", site), project_out(random_direction(d, 7), [0]))])

    out = sweep(
        llama, {"site": (0, 1)}, intervene, measure=lambda iv: (calls.append("m"), _norms(llama, iv.hooks))[1],
        effect=lambda v, c: 1.0, stop=lambda e: e >= 0.5, control=lambda iv, s, site: intervene(site), seeds=[0, 1],
        choose=lambda effects: [max(effects, key=effects.get)],
    )
    assert out.points == [(0,)] and len(calls) == 1 + 1 + 2  # stopped after the first site
    assert torch.isnan(out.effect[1]) and set(out.stats) == {(0,)}


def test_measure_rows_groups_the_last_axis(llama):
    groups: list[int] = []

    def rows(ivs: list[Trial]) -> list[int]:
        groups.append(len(ivs))
        return [0] * len(ivs)

    out = sweep(
        llama, {"site": (0, 1), "edit": ("a", "b", "c")}, lambda site, edit: Trial(spec=(site, edit)),
        measure_rows=rows, clean=False, control=lambda iv, s, site, edit: Trial(), seeds=[5, 6],
    )
    assert out.clean is None
    assert groups == [3, 3, 6, 6]  # the edits of a site in one call; their controls (edit by seed) in one more


@contextlib.contextmanager
def _scaled_embedding(model: Any) -> Iterator[None]:
    """A weight edit that restores what it changed (as fake_quantize does)."""
    w = model.original_model.get_input_embeddings().weight if hasattr(model, "original_model") else model.embed.W_E
    keep = w.detach().clone()
    with torch.no_grad():
        w.mul_(3.0)
    try:
        yield None
    finally:
        with torch.no_grad():
            w.copy_(keep)


def test_nothing_survives_an_error(llama, unchanged):
    """A measurement that raises mid-sweep: its weight edit is undone and its hooks are gone."""
    d = int(llama.cfg.d_model)

    def measure(iv: Trial) -> torch.Tensor:
        if iv.weights is None and iv.hooks:
            raise RuntimeError("boom")
        return _norms(llama, iv.hooks)

    with unchanged(llama), pytest.raises(RuntimeError, match="boom"):
        sweep(
            llama, {"edit": ("weights", "hook")},
            lambda edit: Trial(weights=lambda: _scaled_embedding(llama)) if edit == "weights" else Trial(
                [(act_name("resid_post", 0), project_out(random_direction(d, 0), [0]))]),
            measure=measure,
        )

    def bad_weights() -> Any:
        @contextlib.contextmanager
        def edit() -> Iterator[None]:
            with _scaled_embedding(llama):
                yield None
                raise AssertionError("never reached")

        return edit()

    def fails(iv: Trial) -> torch.Tensor:
        _norms(llama, iv.hooks)
        raise ValueError("after the edit")

    with unchanged(llama), pytest.raises(ValueError, match="after the edit"):
        sweep(llama, {"edit": ("w",)}, lambda edit: Trial(weights=bad_weights), measure=fails, clean=False)


def test_a_leaked_hook_is_removed_and_reported(llama, unchanged):
    def leaky(iv: Trial) -> int:
        llama.hook_dict[act_name("resid_post", 0)].add_hook(lambda act, hook: None)
        return 0

    with unchanged(llama), pytest.raises(SdLensError, match="left 1 hook"):
        sweep(llama, {"edit": ("x",)}, lambda edit: Trial(), measure=leaky, clean=False)


def test_bad_arguments(llama):
    with pytest.raises(InputError):
        sweep(llama, {"edit": ("x",)}, lambda edit: Trial())
    with pytest.raises(InputError):
        sweep(llama, {"seed": (1,)}, lambda seed: Trial(), measure=lambda iv: 0)
    with pytest.raises(InputError):
        sweep(llama, {"edit": ("x",)}, lambda edit: Trial(), measure=lambda iv: 0, seeds=[1, 1])


@pytest.fixture(scope="module")
def planted() -> Any:
    model = planted_bos_model()
    texts = ["the cat sat on the mat", "a dog ran far away", "hello there world", "one two three four"]
    probe = probe_norms(model, texts)
    report = find_defects(model, probe)
    return model, probe, report, component_attribution(model, report, probe), texts


def test_every_causal_experiment_is_a_specialisation_of_the_engine(planted, monkeypatch, unchanged):
    """verify_trigger, find_lever, local_causal_checks, outlier_intervention and quantization_experiment each
    run through sweep, and leave the model as they found it."""
    model, probe, report, att, texts = planted
    calls: list[tuple[str, ...]] = []

    def counting(*args: Any, **kwargs: Any) -> Sweep:
        calls.append(tuple(args[1]))
        return engine.sweep(*args, **kwargs)

    from sd_lens.analyses.causal import lever, local_checks, massive, trigger

    for mod in (trigger, lever, local_checks, massive, evaluate):
        monkeypatch.setattr(mod, "sweep", counting)
    held = ["an apple fell from the tree", "rain again today"]
    runs = {
        "verify_trigger": lambda: sd_lens.verify_trigger(model, 1, random_direction(int(model.cfg.d_model), 9)),
        "find_lever": lambda: sd_lens.find_lever(model, report, att, n_seeds=2),
        "local_causal_checks": lambda: sd_lens.local_causal_checks(model, report, probe, att, n_seeds=2,
                                                                   kinds=("local_steer",), patch=False),
        "outlier_intervention": lambda: sd_lens.outlier_intervention(
            model, {1: [3]}, held, texts=texts, relative=1.0, absolute=None),
        "quantization_experiment": lambda: evaluate.quantization_experiment(
            model, texts, held, analysis=report, schemes=("rtn",), seeds=(0, 1)),
    }
    expected = {"verify_trigger": ("edit",), "find_lever": ("candidate",), "local_causal_checks": ("carrier", "plan"),
                "outlier_intervention": ("mode",), "quantization_experiment": ("scheme", "kept")}
    for name, fn in runs.items():
        calls.clear()
        with unchanged(model):
            fn()
        assert calls and set(calls) == {expected[name]}, name


def test_the_quantization_experiment_restores_the_weights_when_a_row_fails(planted, monkeypatch, unchanged):
    """The engine leaves fake_quantize's context when the measurement inside it raises."""
    model, _, report, _, texts = planted
    real, n = evaluate.perplexity, [0]

    def failing(*args: Any, **kwargs: Any) -> Any:
        n[0] += 1
        if n[0] == 3:  # inside the second quantized row
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "perplexity", failing)
    with unchanged(model), pytest.raises(RuntimeError, match="out of memory"):
        evaluate.quantization_experiment(model, texts, ["an apple fell from the tree"], analysis=report, schemes=("rtn",))
