"""Everything sd_lens says about defects in words: sentences, summaries and the findings tables.

One module holds all of it, so a sentence is changed in one place, whichever way it is read:

* :func:`defects_summary`: the defect finder's result in a few lines (``sd_lens.defects_summary(report)``,
  printed by ``sd-lens analyze`` and ``sd-lens report``);
* :func:`defect_sentences`: each defect's findings in plain sentences
  (``sd_lens.defect_sentences(result)``, also the paragraph under each defect's heading in the report);
* :func:`report_summary`: the opening paragraph of the report;
* :func:`overview_table`, :func:`defect_table`, :func:`decay_table`, :func:`minor_table`: the
  report's tables, as ``(header, rows)``;
* :func:`minor_line`: one minor high-norm group in a line;
* :func:`carrier_note`, :func:`no_decay_note`: the report's remarks on one defect.

Every function takes the typed results and returns plain text (the page escapes it); nothing here
runs a model or draws. The results themselves write no prose about defects: they sit on lower floors
(:mod:`sd_lens.analyses`, :mod:`sd_lens.pipeline`) and may not import this module (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sd_lens.models.metadata import FLOAT16_WARNING

if TYPE_CHECKING:  # pragma: no cover
    from sd_lens.analyses.defects import Defect, DefectReport
    from sd_lens.pipeline import AnalysisResult

__all__ = [
    "Table",
    "carrier_note",
    "decay_table",
    "defect_sentences",
    "defect_table",
    "defects_summary",
    "attribution_table",
    "lever_table",
    "local_checks_table",
    "interventions_table",
    "minor_line",
    "minor_table",
    "sinks_paragraph",
    "no_decay_note",
    "number",
    "outlier_channels_table",
    "overview_table",
    "report_summary",
    "super_weights_sentence",
    "super_weights_table",
]

#: A table for :meth:`~sd_lens.report.page.Page.table`: its header and its rows.
Table = tuple[list[str], list[list[Any]]]


def number(x: float) -> str:
    """A norm for a sentence: thousands separators from 100 up, three significant digits below."""
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def defects_summary(report: DefectReport) -> str:
    """The defects found, one line each, then the minor groups.

    >>> import sd_lens
    >>> model = sd_lens.tiny_model("llama")
    >>> report = sd_lens.find_defects(model, sd_lens.probe_norms(model, ["a b c d"]))
    >>> print(sd_lens.defects_summary(report).split(":")[0])
    tiny-llama
    """
    if not report.all and report.n_high_states == 0:
        return f"{report.model}: no state above {report.threshold}x its block's median norm: no defect."
    lines = [
        f"{report.model}: {len(report.defects)} defect(s) (threshold {report.threshold}x the block median; "
        f"a major defect peaks at {report.major_ratio:g}x or more, spans two blocks or more and has more than "
        "one carrier occurrence)"
    ]
    for d in report.defects:
        lines.append(
            f"  D{d.index}: explodes in block {d.explosion_layer}, high-norm in blocks {d.first_layer}-"
            f"{d.last_layer}, decays in {d.decay_layers or 'no block'}; peak {d.peak_norm:.0f} vs typical "
            f"{d.typical_norm:.0f} at block {d.peak_layer} ({d.peak_ratio:.1f}x); carried by {d.carriers()}; "
            f"states {d.spread_deg:.1f} deg from their block's direction (mean cosine), turning {d.turn_deg:.1f} deg "
            f"from block {min(d.block_directions, default=d.first_layer)} to {max(d.block_directions, default=d.last_layer)}"
        )
    if report.minor:
        lines.append(f"  {len(report.minor)} minor group(s), not analysed further:")
        for d in report.minor:
            lines.append(f"  {minor_line(d)}")
    return "\n".join(lines)


def minor_line(d: Defect) -> str:
    """One minor group in a line: where, how high, carried by what, and why it is minor."""
    blocks = f"block {d.first_layer}" if d.first_layer == d.last_layer else f"blocks {d.first_layer}-{d.last_layer}"
    return (
        f"m{d.index}: {blocks}, peak {number(d.peak_norm)} ({d.peak_ratio:.1f}x the median) at block {d.peak_layer}, "
        f"{d.n_episodes} occurrence(s) of {d.carriers(4)}; minor: {'; '.join(d.minor_reasons)}"
    )


def defect_sentences(result: AnalysisResult) -> list[str]:
    """Each defect's findings in plain sentences (the paragraph under each defect's heading in the report)."""
    out = []
    if not result.defects.defects:
        out.append(
            f"No state rose above {result.defects.threshold}x its block's median norm on this corpus: "
            "no singular defect found."
        )
    for d, f in zip(result.defects, result.findings):
        # a typical token's norm entering the explosion block (the embedding's for block 0)
        before = float(result.probe.typical_norm("resid_pre")[d.explosion_layer])
        c = f.causal
        s = (
            f"Defect D{d.index} is carried by {d.carriers()}. It explodes in block {d.explosion_layer} "
            f"(typical norm entering the block: {before:,.0f}), peaks at {d.peak_norm:,.0f} in block "
            f"{d.peak_layer} (typical there: {d.typical_norm:,.0f}) and stays high through block {d.last_layer}"
        )
        s += f"; it decays in block(s) {', '.join(map(str, d.decay_layers))}." if d.decay_layers else "; it does not decay within the model."
        s += (
            f" The block's leading singular direction is {f.predicted_angle_deg:.1f} deg from it "
            f"(FFN alone: {f.ffn_angle_deg:.1f} deg); the nearest of all blocks is block {f.closest_block}"
            f"{' (the explosion block)' if f.closest_block == d.explosion_layer else ''}."
        )
        if not d.initial_token:
            s += " The causal check acts on the initial token, which does not carry this defect, so it does not test it."
        else:
            s += (
                f" Removing v0 from the FFN input of block {c.layer} takes the initial token from "
                f"{c.norm_before:,.0f} to {c.norm_after:,.0f} (a random direction: {c.random_control_after:,.0f}); "
                f"setting token {c.position} ({c.tokens[c.position]!r})'s v0 coefficient to the initial token's "
                f"takes it from {float(c.norms_clean[c.position]):,.0f} to {float(c.norms_patched[c.position]):,.0f}."
            )
        for k in f.decay_checks:
            sign = "negative, as claim (ii) predicts" if k.rayleigh < 0 else "positive, against claim (ii)"
            s += f" At decay block {k.layer} the Rayleigh quotient along the direction is {k.rayleigh:.1f} ({sign})."
        out.append(s)
    return out


def _dtype_origin(result: AnalysisResult) -> str:
    md = getattr(result, "model_dtype", None)
    return f" forward; the weights are {md}" if md and md != result.dtype else ""


def report_summary(result: AnalysisResult) -> str:
    """The report's opening paragraph: the model, the corpus, the threshold and one clause per defect."""
    n = len(result.defects)
    head = (
        f"{result.model} ({result.architecture}, {result.n_layers} blocks, d_model {result.d_model}, "
        f"{result.dtype}{_dtype_origin(result)}) was probed on "
        f"{len(result.texts)} text(s), {result.probe.n_tokens:,} tokens. A state counts as high-norm when its "
        f"norm exceeds {result.defects.threshold:g} times its block's median norm. "
    )
    if result.dtype == "float16":
        head += "Caution: " + FLOAT16_WARNING + ". "
    corpus = getattr(result, "corpus", None)
    if corpus is not None and corpus.warnings:
        head += "Caution: this corpus may not carry the findings (see Corpus): " + corpus.warnings[0].split(":")[0] + ". "
    if result.dtype_check is not None:
        head += ("" if result.dtype_check.agrees else "Caution: ") + result.dtype_check.summary() + " "
    minor = result.defects.minor
    tail = (
        f" {len(minor)} minor high-norm group(s) (short-lived, barely above the line, or carried by one token) are "
        "listed apart." if minor else ""
    )
    if n == 0:
        if result.defects.n_high_states == 0:
            return head + "No state crossed that line: sd_lens found no singular defect on this corpus."
        return head + "No major singular defect on this corpus." + tail
    parts = [
        f"D{d.index} explodes in block {d.explosion_layer} (peak {number(d.peak_norm)} against a typical "
        f"{number(d.typical_norm)}), "
        + (f"decays in block(s) {', '.join(map(str, d.decay_layers))}" if d.decay_layers else "does not decay")
        + f", and the explosion block's leading singular direction is {f.predicted_angle_deg:.1f}\u00b0 from it"
        for d, f in zip(result.defects, result.findings)
    ]
    return head + f"sd_lens found {n} singular defect(s): " + "; ".join(parts) + "." + tail + super_weights_sentence(result)


def minor_table(result: AnalysisResult) -> Table:
    """One row per minor high-norm group, with the reasons it is not a major defect."""
    header = ["group", "blocks", "peak norm", "peak / median", "occurrences", "carried by", "spread (deg)", "why minor"]
    rows: list[list[Any]] = [
        [f"m{d.index}", f"{d.first_layer}\u2013{d.last_layer}", d.peak_norm, round(d.peak_ratio, 2), d.n_episodes,
         d.carriers(4), round(d.spread_deg, 1), "; ".join(d.minor_reasons)]
        for d in result.defects.minor
    ]
    return header, rows


def overview_table(result: AnalysisResult) -> Table:
    """One row per defect: blocks, norms, angles and the ablation's before/after/random control."""
    header = ["defect", "explosion block", "decay blocks", "peak norm", "typical norm", "angle u\u2080(L) (deg)",
              "angle u\u2080(F) (deg)", "ablation before", "after", "random control"]
    rows: list[list[Any]] = [
        [f"D{d.index}", d.explosion_layer, ", ".join(map(str, d.decay_layers)) or "none", d.peak_norm,
         d.typical_norm, f.predicted_angle_deg, f.ffn_angle_deg, f.causal.norm_before, f.causal.norm_after,
         f.causal.random_control_after]
        for d, f in zip(result.defects, result.findings)
    ]
    return header, rows


def defect_table(result: AnalysisResult, k: int) -> Table:
    """Every quantity measured about defect ``k``, one per row."""
    d, f = result.defects[k], result.findings[k]
    c, sub = f.causal, f.subspace
    pos = c.position
    v0_out = max(float(sub.plus_norms[0]), float(sub.minus_norms[0]))
    rows: list[list[Any]] = [
        ["carried by", d.carriers()],
        ["explosion block", d.explosion_layer],
        ["high-norm blocks", f"{d.first_layer}\u2013{d.last_layer}"],
        ["peak norm / block median", round(d.peak_ratio, 2)],
        ["carrier occurrences (episodes) / states", f"{d.n_episodes} / {d.n_states}"],
        ["spread: arccos of the states' mean cosine to their block's direction (deg)", round(d.spread_deg, 2)],
        [f"turn: direction at block {min(d.block_directions, default=d.first_layer)} vs block "
         f"{max(d.block_directions, default=d.last_layer)} (deg)", round(d.turn_deg, 2)],
        ["decay blocks", ", ".join(map(str, d.decay_layers)) or "none within the model"],
        [f"peak norm (block {d.peak_layer})", d.peak_norm],
        [f"typical norm (block {d.peak_layer} median)", d.typical_norm],
        ["angle of u\u2080 of L at the explosion block to the direction (deg)", f.predicted_angle_deg],
        ["angle of u\u2080 of F (FFN alone) there (deg)", f.ffn_angle_deg],
        ["block whose u\u2080 of L is nearest the direction", f.closest_block],
        ["FFN output norm along v\u2080 / random directions (mean)",
         f"{number(v0_out)} / {number(float(sub.random_norms.mean()))}"],
        [f"ablation at block {c.layer}: initial-token norm before", c.norm_before],
        ["ablation: after removing v\u2080", c.norm_after],
        ["ablation: after removing a random direction (control)", c.random_control_after],
        [f"patching at block {c.layer}: token {pos} ({c.tokens[pos] if pos < len(c.tokens) else '?'!r}) norm before",
         float(c.norms_clean[pos])],
        ["patching: after setting its v\u2080 coefficient to the initial token's", float(c.norms_patched[pos])],
    ]
    return ["quantity", "value"], rows


def decay_table(result: AnalysisResult, k: int) -> Table:
    """Defect ``k``'s decay blocks: the eigen-check of R = L − I and how to read its sign."""
    header = ["block", "eigenvalue nearest the direction (real)", "imaginary part",
              "its eigenvector's angle to the direction (deg)", "Rayleigh quotient u\u1d40Ru", "reading"]
    rows: list[list[Any]] = []
    for c in result.findings[k].decay_checks:
        reading = "cancels the state (negative)" if c.rayleigh < 0 else "does not cancel it (positive)"
        rows.append([c.layer, c.eigenvalue, c.eigenvalue_imag, c.eigvec_angle_deg, c.rayleigh, reading])
    return header, rows


def carrier_note(result: AnalysisResult, k: int) -> str | None:
    """A warning when defect ``k`` is not carried by the initial token (the causal check does not test
    it), else None."""
    if result.defects[k].initial_token:
        return None
    label = f"D{result.defects[k].index}"
    return (
        f"Note: {label} is carried only by non-initial tokens, while the causal check below measures the "
        "initial token of the trigger text and patches one token of it: it does not test this defect's "
        "own carriers."
    )


def no_decay_note(result: AnalysisResult, k: int) -> str:
    """What the report says in place of the decay check when defect ``k`` has no decay block."""
    return f"D{result.defects[k].index} does not decay within the model: no decay block to check."


def sinks_paragraph(result: AnalysisResult) -> str:
    """Attention sinks in words: the sink rate, where sinks are, the strongest heads, noninitial sink keys."""
    s = result.sinks
    assert s is not None
    rate = ", ".join(f"{b}: {float(r):.2f}" for b, r in zip(s.blocks, s.block_sink_rate))
    keys = ", ".join(f"{k.token!r} (position {k.position}, {k.n_heads} heads)" for k in s.sink_keys[:6])
    return (
        f"A head sinks on a key when the later queries give it more than {s.epsilon:g} of their attention on "
        f"average (Gu et al.). Sink rate over texts, blocks and heads: {s.sink_rate:.3f}. Fraction of sinking "
        f"(text, head) pairs per block — {rate}. "
        + (f"Noninitial sink keys: {keys}." if keys else "No noninitial token is a sink key.")
    )


def attribution_table(result: AnalysisResult) -> Table:
    """Per defect and block: what attention and the FFN add along the direction (blocks adding ≥ 2 % of the peak)."""
    att = result.attribution
    assert att is not None
    header = ["defect", "block", "attention adds", "FFN adds", "component after the block", "in the explosion set"]
    rows: list[list[Any]] = []
    for d in att:
        peak = max(float(d.component.abs().max()), 1e-12)
        for b in range(len(d.total)):
            if abs(float(d.total[b])) >= 0.02 * peak or b in d.explosion_set:
                rows.append([d.label, b, float(d.attn[b]), float(d.ffn[b]), float(d.component[b]),
                             "yes" if b in d.explosion_set else ""])
    return header, rows


def lever_table(result: AnalysisResult) -> Table:
    """The lever chosen per defect from the attribution, against its size-matched random control."""
    rep = result.lever
    assert rep is not None
    header = ["defect", "intervention", "peak before", "after", "reduction", "matched random control (mean [min, max])",
              "specific"]
    rows: list[list[Any]] = []
    for lv in rep.levers:
        ctrl = lv.control_reductions
        rows.append([lv.label, lv.name, lv.peak_clean, lv.peak_intervened, f"{lv.reduction:.1%}",
                     f"{float(ctrl.mean()):.1%} [{float(ctrl.min()):.1%}, {float(ctrl.max()):.1%}] over {len(lv.seeds)} seeds",
                     "yes" if lv.specific else "no"])
    return header, rows


def local_checks_table(result: AnalysisResult) -> Table:
    """FFN-input interventions per defect (Gaussian v0 and the local Jacobian's), against matched controls.

    Per defect: every kind at the whole explosion set (cancel edits at full size), then the intervention
    that reduces the peak most among the specific ones, when it is not already listed.
    """
    rep = result.local
    assert rep is not None
    header = ["defect", "intervention", "blocks", "edit / |n|", "peak before", "after", "reduction",
              "matched random control (mean [min, max])", "specific"]
    rows: list[list[Any]] = []
    for chk in rep:
        shown = [x for x in chk.interventions if x.blocks == chk.blocks and x.fraction == 1.0]
        best = chk.best()
        if best is not None and best not in shown:
            shown.append(best)
        for x in shown:
            cr = x.control_reductions
            name = x.kind.replace("_", " ") + ("" if x.fraction == 1.0 else f" x{x.fraction:g}")
            rows.append([chk.label, name, _blocks_text(x.blocks), f"{max(x.relative_size, default=0.0):.3f}",
                         x.peak_clean, x.peak_intervened, f"{x.reduction:.1%}",
                         f"{float(cr.mean()):.1%} [{float(cr.min()):.1%}, {float(cr.max()):.1%}] over {len(x.seeds)} seeds",
                         "yes" if x.specific else "no"])
    return header, rows


def interventions_table(result: AnalysisResult) -> Table:
    """Perplexity on held-out text: clean, and with the massive activations set to zero / to their mean."""
    rep = result.interventions
    assert rep is not None
    header = ["run", "perplexity", "x clean", "KL to clean (nats/token)", "entries set (initial / other)"]
    rows: list[list[Any]] = [["clean", f"{rep.clean.perplexity:.2f}", "1", "0", ""]]
    for mode, p in rep.runs.items():
        n = rep.n_set.get(mode, {})
        kl = "" if p.kl is None else f"{p.kl:.4g}"
        rows.append([f"{mode}", f"{p.perplexity:.4g}", f"{rep.ratio(mode):.3g}", kl,
                     f"{n.get('initial', 0)} / {n.get('other', 0)}"])
    return header, rows


def _blocks_text(blocks: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0–2, 5, 7–8"``."""
    runs: list[list[int]] = []
    for b in sorted(blocks):
        if runs and b == runs[-1][-1] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return ", ".join(f"{r[0]}\u2013{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "none"


def outlier_channels_table(result: AnalysisResult) -> Table:
    """One row per residual-stream massive-activation channel: its defect, blocks, size, carriers, and the norms
    that mask it before the FFN or amplify it after."""
    out, weights = result.outliers, result.weights
    assert out is not None
    owners = out.channel_defects(result.defects)
    header = ["channel", "defect (share of its direction)", "blocks", "largest |value|", "carried by",
              "masked before the FFN in blocks", "post-FFN gain ≥ 20× median in blocks"]
    rows: list[list[Any]] = []
    for c in out.channels("resid_post"):
        entries = [e for e in out.entries if e.site == "resid_post" and e.channel == c]
        top = max(entries, key=lambda e: abs(e.value))
        classes = sorted({e.token_class for e in entries})
        masked = amplified = "—"
        if weights is not None:
            masked = _blocks_text([b for b in range(result.n_layers) if weights.masked_before_ffn(b, c)])
            amp = [b for b in range(result.n_layers) if weights.is_amplified(b, c, "mlp_post")] if "mlp_post" in weights.norm_names else []
            amplified = _blocks_text(amp) if "mlp_post" in weights.norm_names else "no post-FFN norm"
        owner = owners.get(c)
        rows.append([c, f"{owner[0]} ({owner[1]:.2f})" if owner else "—", _blocks_text(out.blocks_of(c)),
                     abs(top.value), f"{', '.join(classes)} (e.g. {top.token!r})", masked, amplified])
    return header, rows


def outlier_tokens_paragraph(result: AnalysisResult) -> str:
    """PrefixQuant's outlier tokens in words: how many, which tokens, where, and which defects they carry."""
    ot = result.outlier_tokens
    assert ot is not None
    toks = ", ".join(f"{s!r} (id {i}) ×{n}" for s, i, n in ot.tokens()[:8])
    where = _blocks_text([b for b, n in enumerate(ot.n_by_block) if n])
    top = int(ot.max_ratio.argmax())
    text = (
        f"A token is an outlier token at a block (PrefixQuant) when its largest |value| at the FFN down-projection "
        f"input is more than {ot.eta:g} times the median of that maximum over its text's tokens. On {ot.n_texts} texts: "
        f"{len(ot)} outlier tokens ({len(ot.initial)} initial, {len(ot.later)} later)"
        + (f" — {toks} — in blocks {where}" if len(ot) else "")
        + f". The largest ratio is {float(ot.max_ratio.max()):.1f} (block {top})."
    )
    if ot.defects_checked and len(ot):
        text += f" {ot.carriers} of them carry a defect."
    return text


def prefix_table(result: AnalysisResult) -> Table:
    """The prefix intervention: per context, the later-position outlier tokens and the perplexity of the text."""
    ot = result.outlier_tokens
    assert ot is not None and ot.baseline is not None
    base = ot.baseline
    header = ["prefix", "context before the text", "later outlier tokens", "largest later ratio", "outliers in the context",
              "perplexity", "x no prefix"]
    rows: list[list[Any]] = []
    for t in [base, *ot.trials]:
        rows.append([
            "none" if t is base else t.name, " ".join(repr(s) for s in t.prefix_strings) or "(the tokenizer's own)",
            t.later_outliers, f"{t.later_max_ratio:.1f}", t.context_outliers, f"{t.perplexity.perplexity:.2f}",
            f"{t.perplexity.perplexity / base.perplexity.perplexity:.3f}",
        ])
    return header, rows


# --------------------------------------------------------------------------------------------
# rotation check and causal ranking (issue #23 items 4 and 5)
# --------------------------------------------------------------------------------------------
def rotation_sentence(result: AnalysisResult) -> str:
    """One sentence on the rotation check: do the defects survive and the massive channels vanish?"""
    rc = result.rotation
    if rc is None:
        return ""
    parts = []
    for r in rc.runs:
        dev = max((abs(d.norm_ratio - 1) for d in r.defects), default=0.0)
        parts.append(
            f"{r.kind} (logits within {r.logits_max_error:.1g}): defect norms x1 within {dev:.1g}, massive entries "
            f"{r.massive_before} -> {r.massive_after}"
        )
    verdict = ("every defect survives and every massive channel vanishes: the defects are directions, not channels"
               if rc.separates else "the rotation does not separate defects from channels on this model (see Rotation)")
    return f"Under an orthogonal change of the residual basis ({'; '.join(parts)}) {verdict}."


def ranking_sentence(result: AnalysisResult) -> str:
    """One sentence on the causal ranking: the order, and which findings are massive but inert."""
    cr = result.ranking
    if cr is None or not len(cr):
        return ""
    order = ", ".join(f"{f.name} (KL {f.score.kl:.3g})" for f in cr)
    inert = [f.name for f in cr.inert]
    tail = (f"; massive but inert (KL below {cr.inert_kl:g} nats): {', '.join(inert)}" if inert
            else "; none is inert")
    return f"Removed one at a time, the findings rank {order}{tail}."


def findings_summary(result: AnalysisResult) -> str:
    """The rotation and ranking sentences (empty when neither ran): the report's summary and the CLI print them."""
    return " ".join(s for s in (rotation_sentence(result), ranking_sentence(result)) if s)


def rotation_table(result: AnalysisResult) -> Table:
    """One row per (rotation, defect or massive channel)."""
    header = ["rotation", "finding", "block", "before", "after", "verdict"]
    rows: list[list[Any]] = []
    rc = result.rotation
    for r in rc.runs if rc is not None else ():
        for d in r.defects:
            rows.append([r.kind, f"{d.label} (norm)", d.block, "1", f"x{d.norm_ratio:.6f}",
                         "survives" if d.survives else "changed"])
        for c in r.channels:
            rows.append([r.kind, f"channel {c.channel} (max / median)", c.block, round(c.before, 1), round(c.after, 1),
                         "vanishes" if c.vanishes else "stays"])
    return header, rows


def ranking_table(result: AnalysisResult) -> Table:
    """One row per finding, in causal order."""
    header = ["rank", "finding", "kind", "blocks", "KL (nats/token)", "perplexity x", "control KL", "label"]
    cr = result.ranking
    rows: list[list[Any]] = [
        [i, f.name, f.kind, ", ".join(map(str, f.blocks)), round(f.score.kl, 4), number(f.score.ppl_ratio),
         "" if f.score.control_kl is None else round(f.score.control_kl, 4), f.label]
        for i, f in enumerate(cr if cr is not None else (), 1)
    ]
    return header, rows


def super_weights_sentence(result: AnalysisResult) -> str:
    """One sentence on the super weights (``super_weights=True``; empty otherwise): each defect's super weight,
    what zeroing it does, and whether it sits in the defect's channel and explosion block."""
    sw = getattr(result, "super_weights", None)
    if sw is None or not len(sw):
        return ""
    parts = []
    for d in sw:
        w = d.super_weight
        if w is None:
            parts.append(f"{d.label} has no single writing weight")
            continue
        text = f"{d.label}'s is {w.name}"
        if w.score is not None:
            text += f" (zeroed: perplexity x{w.score.ppl_ratio:.3g}, {w.score.label})"
        text += "; " + d.consistency.summary()
        parts.append(text)
    return " Super weights (Yu et al. 2024): " + "; ".join(parts) + "."


def super_weights_table(result: AnalysisResult) -> Table:
    """One row per super weight (emitters and cancellers of every defect): where, how large, what it writes, and
    what zeroing it does against its controls."""
    sw = result.super_weights
    assert sw is not None
    header = ["defect", "role", "W_down[row, col] @ block", "value", "input spike", "post-FFN gain", "writes",
              "share of block's change", "zeroed: x perplexity (KL)", "random same-size: x perplexity",
              "activation restored: x perplexity"]
    rows: list[list[Any]] = []
    for d in sw:
        for w in d.weights:
            v = w.verification
            rows.append([
                d.label, w.role if w.iteration == 0 else f"emerges (round {w.iteration})", w.name, f"{w.value:.4g}",
                f"{w.spike:.4g}", "—" if w.norm_scale is None else f"{w.gain:.4g}", f"{w.effective:.4g}",
                f"{100 * w.share:.0f}%",
                "" if v is None else f"{v.score.ppl_ratio:.4g} ({v.score.kl:.3g})",
                "" if v is None else f"{v.score.control_ppl_ratio or 1.0:.4g}",
                "" if v is None else f"{v.restore_ppl_ratio:.4g}",
            ])
    return header, rows
