"""Analysis 11 — ``in_silico_perturbation``: do the model's own in-silico perturbations
predict what the screen observed?

Per model × dataset × arm, on a seeded subsample of the arm's **control** cells, every
perturbed gene the model can see is knocked down (``delete``: its token removed; CRISPRi
arms) or overexpressed (``overexpress``: top value / first rank; CRISPRa arms; the mapping
is the parameter ``arm_modes``) with the model's own adapter
(:func:`~scfm_audit.evaluate.in_silico_effects`; the unperturbed forward pass once per
batch). Readouts (see :mod:`scfm_audit.evaluate._in_silico`):

* scGPT — change of the model's reconstructed expression of each gene, **signed**;
* Geneformer (no value head) — 1 − cosine similarity of each gene's embedding before and
  after, as Geneformer's ``InSilicoPerturber`` scores genes, **unsigned**: compared with
  |log2fc|, and sign agreement is n/a (stated in the notes).

``delete`` acts only on cells whose input carries the gene (the others are skipped;
``n_cells`` per perturbation is reported). Perturbed genes outside the model's vocabulary
(or not among the dataset's genes) are listed in the ``skipped`` table, never dropped
silently.

Comparison with the observed DE of the same perturbation (responders and log2fc from the
shared responder definition, :func:`~scfm_audit.analyses._perturbation_common.dataset_responders`):
per perturbation Spearman(predicted, log2fc) over genes, sign agreement on responders and
AUROC of |predicted| for responders, the perturbed genes excluded.

Claim ("the model's in-silico perturbations predict the observed effects", one per
model × dataset; n/a with the reason when nothing could be compared). H0: the prediction made for perturbation j is no more
like j's observed profile than like another perturbation's of the same arm. Statistic:
mean over perturbations of the matched statistic (``verdict_statistic``: Spearman by
default); null: shuffled perturbation labels — predicted profile of j against observed
profile of π(j), π a random within-arm permutation of the perturbations (perturbations are
the independent units; the permutation keeps every gene-level pattern, e.g. "variable genes
move in every perturbation", so such patterns do not count). p: two-sided adaptive
Monte-Carlo (``n_perm``, then ``n_perm_max`` draws while p < 0.05). Effect: matched −
mismatched mean statistic (perturbation specificity, 0 under H0) with the CI that inverts
the same shuffled-label test under a shift model (it covers a null effect at the test's
own level; a percentile bootstrap over perturbations undercovered). The side is read from the test's own tails and its
floor from the Monte-Carlo draws (the kernel's typed result). The other statistics get
the same test, descriptive.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from scfm_audit.analyses._contract import AnalysisContext, AnalysisResult, Unit, register_analysis
from scfm_audit.analyses._perturbation_common import ResponderParams, dataset_responders

STAT_LABEL = {
    "spearman": "Spearman(predicted, observed log2FC)",
    "sign_agreement": "sign agreement on responders",
    "auroc": "AUROC of |predicted| for responders",
}


class InSilicoParams(ResponderParams):
    """Parameters of ``in_silico_perturbation`` (responder definition inherited)."""

    models: list[str] | None = Field(None, description="models to perturb (default: all)")
    datasets: list[str] | None = Field(
        None, description="datasets (default: all with a perturbation column)"
    )
    max_cells: int = Field(
        100,
        ge=1,
        description="control cells per arm the model perturbs (seeded subsample; the same "
        "cells for every model)",
    )
    max_perturbations: int | None = Field(
        60,
        ge=3,
        description="perturbations per arm (seeded subsample of the perturbable ones when "
        "there are more; None: all)",
    )
    arm_modes: dict[str, Literal["delete", "overexpress"]] = Field(
        {"CRISPRi": "delete", "CRISPRa": "overexpress", "all": "delete"},
        description="in-silico mode per DE arm (modality; 'all' when the dataset has none)",
    )
    readout: Literal["auto", "expression", "embedding"] = Field(
        "auto",
        description="'expression' (signed change of the model's expression read-out), "
        "'embedding' (unsigned 1 − cosine of gene embeddings), 'auto': expression when the "
        "model has a value head (scGPT), else embedding (Geneformer)",
    )
    embedding_layer: int | None = Field(
        None,
        le=0,
        description="embedding readout: 0 last layer, -1 the one before (Geneformer's "
        "emb_layer); None: the adapter's own",
    )
    batch_size: int = Field(32, ge=1, description="cells per forward pass")
    verdict_statistic: Literal["spearman", "auroc"] = Field(
        "spearman", description="per-perturbation statistic behind the verdict"
    )
    n_perm: int = Field(999, ge=19, description="first stage of shuffled-label draws")
    n_perm_max: int = Field(
        9999, ge=0, description="draws in total while p < 0.05 (≤ n_perm: one stage)"
    )
    n_boot: int = Field(1000, ge=0, description="bootstrap draws over perturbations (CIs)")


def _model_key(adapter) -> dict | None:
    """What identifies a model's computation (architecture, tokenizer options and a
    digest of the weights), or None when it cannot be fingerprinted (then no cache)."""
    import hashlib

    import torch

    module = getattr(adapter, "module", None)
    if module is None or not hasattr(module, "state_dict"):
        return None
    h = hashlib.blake2b(digest_size=16)
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return {"describe": {k: str(v) for k, v in adapter.describe().items()}, "w": h.hexdigest()}


def _stages(p: InSilicoParams) -> tuple[int, ...]:
    return (p.n_perm, p.n_perm_max) if p.n_perm_max > p.n_perm else (p.n_perm,)


def _demo(*, quick: bool, models: bool) -> dict | None:
    """The models' own in-silico knock-downs (~15 s of CPU per demo model)."""
    if not models:
        return None
    return {
        "in_silico_perturbation": {
            "datasets": ["sim"],
            "max_cells": 60 if quick else 100,
            "n_boot": 500 if quick else 1000,
        }
    }


@register_analysis(
    "in_silico_perturbation",
    description="The model's own in-silico knock-down / overexpression of each perturbed "
    "gene on control cells against the observed DE (Spearman, sign agreement, responder "
    "AUROC per perturbation), tested against shuffled perturbation labels",
    params=InSilicoParams,
    version="1.1",
    category="B. Does it predict causal effects?",
    reference="Catalogue 11; Geneformer/scGPT in-silico perturbation vs Perturb-seq",
    quick={
        "datasets": ["sim"],
        "max_cells": 24,
        "max_perturbations": 6,
        "n_perm": 199,
        "n_perm_max": 0,
        "n_boot": 100,
    },
    demo=_demo,
    claims=(
        (
            "<model>'s in-silico perturbations predict the observed effects",
            "specificity (matched − mismatched mean per-perturbation Spearman) against shuffled perturbation labels within arms (keeps every gene-level pattern), adaptive Monte-Carlo, two-sided",
        ),
    ),
)
def run_in_silico_perturbation(ctx: AnalysisContext, p: InSilicoParams) -> AnalysisResult:
    models = p.models if p.models is not None else ctx.model_names()
    datasets = p.datasets or [
        d for d in ctx.dataset_names() if ctx.dataset_spec(d).perturbation is not None
    ]
    notes: list[str] = []
    if not models:
        notes.append("no model in the run: nothing to perturb in silico.")
    if not datasets:
        notes.append("no dataset with a perturbation column: nothing to compare with.")
    per_rows: list[pd.DataFrame] = []
    sum_rows: list[dict[str, Any]] = []
    skip_rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    for ds in datasets:
        if ctx.dataset_spec(ds).perturbation is None:
            notes.append(f"{ds}: no perturbation column; skipped.")
            continue
        de = dataset_responders(ctx, ds, p)
        for m in models:
            out = _one(ctx, p, m, ds, de, notes, skip_rows)
            if out is None:
                ctx.not_assessable(
                    Unit(ds, m),
                    claim=_claim(m),
                    reason="no perturbation could be perturbed in silico and compared (see notes)",
                )
                continue
            table, tests, meta = out
            per_rows.append(table.assign(model=m, dataset=ds))
            _record(ctx, p, m, ds, tests, meta)
            for s, t in tests.items():
                sum_rows.append(
                    {
                        "model": m,
                        "dataset": ds,
                        "statistic": s,
                        "readout": meta["readout"],
                        "signed": meta["signed"],
                        "matched_mean": t.statistic,
                        "matched_ci_low": t.stat_ci_low,
                        "matched_ci_high": t.stat_ci_high,
                        "shuffled_mean": t.null_mean,
                        "specificity": t.effect,
                        "ci_low": t.ci_low,
                        "ci_high": t.ci_high,
                        "p": t.p,
                        "p_greater": t.result.p_greater,
                        "p_less": t.result.p_less,
                        "p_floor": t.p_floor,
                        "n_draws": t.n_draws,
                        "n_perturbations": t.n,
                        "verdict": s == p.verdict_statistic,
                    }
                )
            v = p.verdict_statistic
            t = tests.get(v)
            if meta["panels"]:
                from scfm_audit.plotting import hexbin_figure

                figures[f"predicted_vs_observed_{m}_{ds}"] = hexbin_figure(
                    meta["panels"],
                    xlabel="observed log2FC" if meta["signed"] else "observed |log2FC|",
                    ylabel=f"in-silico shift ({meta['readout']})",
                    title=f"{m} on {ds}: in-silico vs observed, perturbations with the most "
                    "responders (perturbed gene excluded)",
                    gridsize=25,
                )
            if t is not None and t.null.size:
                from scfm_audit.plotting import null_distribution_figure

                figures[f"shuffled_null_{m}_{ds}"] = null_distribution_figure(
                    t.null,
                    t.statistic,
                    p=t.p,
                    direction="two-sided",
                    title=f"{m} on {ds}: mean matched {v} vs shuffled perturbation labels",
                    xlabel=f"mean per-perturbation {STAT_LABEL[v]}",
                )
    tables = {
        k: v
        for k, v in {
            "per_perturbation": _front(pd.concat(per_rows, ignore_index=True))
            if per_rows
            else pd.DataFrame(),
            "summary": pd.DataFrame(sum_rows),
            "skipped": pd.DataFrame(skip_rows),
        }.items()
        if not v.empty
    }
    return AnalysisResult(
        tables=tables,
        figures=figures,
        summary=_summary(pd.DataFrame(sum_rows), p),
        notes=notes,
    )


def _front(df: pd.DataFrame) -> pd.DataFrame:
    first = ["model", "dataset", "arm", "mode", "readout", "perturbation"]
    return df[first + [c for c in df.columns if c not in first]]


def _one(ctx, p: InSilicoParams, m: str, ds: str, de: pd.DataFrame, notes, skip_rows):
    """In-silico effects of model ``m`` on dataset ``ds`` for every arm and their
    comparison with ``de``; None when nothing could be compared."""
    from scfm_audit.data._dataset import control_mask
    from scfm_audit.evaluate._in_silico import compare_in_silico, in_silico_effects, perturbable

    adata, spec = ctx.dataset(ds), ctx.dataset_spec(ds)
    adapter = ctx.model(m)
    ctrl = control_mask(adata, spec)
    has_arm = spec.modality is not None and spec.modality in adata.obs
    arm_col = adata.obs[spec.modality].astype(str).to_numpy() if has_arm else None
    preds, readouts = [], set()
    mkey = _model_key(adapter)
    for arm in sorted(pd.unique(de["arm"].astype(str))):
        if arm not in p.arm_modes:
            raise ValueError(
                f"in_silico_perturbation: dataset {ds} has the arm {arm!r}, which arm_modes "
                f"({sorted(p.arm_modes)}) does not map to 'delete' or 'overexpress'; add it."
            )
        mode = p.arm_modes[arm]
        labels = sorted(pd.unique(de.loc[de["arm"] == arm, "perturbation"].astype(str)))
        pool = np.flatnonzero(ctrl & (arm_col == arm)) if has_arm else np.flatnonzero(ctrl)
        if pool.size == 0:
            notes.append(f"{m}/{ds}/{arm}: no control cell; skipped.")
            continue
        cells = pool
        if pool.size > p.max_cells:
            cells = np.sort(ctx.rng(ds, arm, "cells").choice(pool, p.max_cells, replace=False))
        sub = adata[cells]
        sub = sub.to_memory() if getattr(sub, "isbacked", False) else sub.copy()
        ok, skipped = perturbable(adapter, sub, labels)  # vocabulary from var only
        for g, why in skipped.items():
            skip_rows.append(
                {"model": m, "dataset": ds, "arm": arm, "perturbation": g, "reason": why}
            )
        if skipped:
            notes.append(
                f"{m}/{ds}/{arm}: {len(skipped)} of {len(labels)} perturbed genes cannot be "
                f"perturbed in silico (see the 'skipped' table): {', '.join(list(skipped)[:8])}"
                + (" ..." if len(skipped) > 8 else "")
            )
        if p.max_perturbations is not None and len(ok) > p.max_perturbations:
            rng = ctx.rng(ds, arm, "perturbations")
            keep = set(rng.choice(ok, size=p.max_perturbations, replace=False).tolist())
            for g in ok:
                if g not in keep:
                    skip_rows.append(
                        {
                            "model": m,
                            "dataset": ds,
                            "arm": arm,
                            "perturbation": g,
                            "reason": f"not in the seeded subsample of {p.max_perturbations}",
                        }
                    )
            notes.append(
                f"{m}/{ds}/{arm}: {p.max_perturbations} of {len(ok)} perturbable genes "
                "(seeded subsample; max_perturbations)."
            )
            ok = sorted(keep)
        if not ok:
            notes.append(f"{m}/{ds}/{arm}: no perturbable gene; skipped.")
            continue

        def compute(sub=sub, ok=ok, mode=mode, arm=arm) -> pd.DataFrame:
            return in_silico_effects(
                adapter,
                sub,
                spec,
                perturbations=ok,
                cells=np.arange(sub.n_obs),
                mode=mode,
                batch_size=p.batch_size,
                readout=p.readout,
                embedding_layer=p.embedding_layer,
                progress=lambda it, **kw: ctx.progress(
                    it, description=f"{m} on {ds}/{arm}: {kw['description']}", total=kw["total"]
                ),
            )

        if mkey is None:
            eff = compute()
        else:
            key = {
                "what": "in_silico_effects",
                "dataset": ctx.dataset_fingerprint(ds),
                "model": mkey,
                "cells": [int(c) for c in cells],
                "perturbations": ok,
                "mode": mode,
                "readout": p.readout,
                "embedding_layer": p.embedding_layer,
            }
            eff = ctx.cached(key, compute, kind="in_silico")
        readouts.add((eff.attrs.get("readout"), bool(eff.attrs.get("signed"))))
        n_zero = int((eff.groupby("perturbation")["n_cells"].first() == 0).sum())
        notes.append(
            f"{m}/{ds}/{arm}: in-silico {mode} of {len(ok)} genes on {len(cells)} control "
            f"cells, {eff.attrs.get('readout')} readout "
            f"({'signed' if eff.attrs.get('signed') else 'unsigned'})"
            + (
                f"; {n_zero} genes expressed in none of these cells (not compared)"
                if n_zero
                else ""
            )
        )
        preds.append(eff.assign(arm=arm, mode=mode))
    if not preds:
        return None
    if len(readouts) != 1:
        raise ValueError(f"{m}: arms gave different readouts {sorted(readouts)}")
    readout, signed = readouts.pop()
    pred = pd.concat(preds, ignore_index=True)
    if not signed:
        notes.append(
            f"{m}/{ds}: the {readout} readout has no sign: Spearman is taken against "
            "|log2FC| and sign agreement is n/a."
        )
    table, tests, _ = compare_in_silico(
        pred,
        de,
        signed=signed,
        stages=_stages(p),
        n_boot=p.n_boot,
        seed=ctx.seed_for(m, ds, "shuffle"),
    )
    if table.empty:
        notes.append(f"{m}/{ds}: no perturbation could be compared with its observed profile.")
        return None
    modes = pred.groupby("arm")["mode"].first()
    table.insert(1, "mode", table["arm"].map(modes))
    table.insert(2, "readout", readout)
    meta = {"readout": readout, "signed": signed, "modes": modes.to_dict()}
    meta["panels"] = _scatter_panels(pred, de, table, signed)
    return table, tests, meta


def _scatter_panels(pred, de, table, signed, k: int = 4) -> dict:
    """Predicted shift against observed log2FC (|log2FC| for unsigned readouts) over the
    genes compared, for the ``k`` perturbations with the most responders."""
    top = table.sort_values(["n_responders", "perturbation"], ascending=[False, True]).head(k)
    panels = {}
    for arm, pert in zip(top["arm"], top["perturbation"]):
        x = pred[(pred["arm"] == arm) & (pred["perturbation"] == pert)].set_index("gene")
        y = de[(de["arm"] == arm) & (de["perturbation"] == pert)].set_index("gene")["log2fc"]
        both = (
            x["predicted_shift"]
            .dropna()
            .index.intersection(y.dropna().index)
            .drop(pert, errors="ignore")
        )
        obs = y[both].to_numpy(float)
        panels[f"{pert} ({arm})"] = (obs if signed else np.abs(obs), x.loc[both, "predicted_shift"])
    return panels


def _claim(m: str) -> str:
    return f"{m}'s in-silico perturbations predict the observed effects"


def _record(ctx, p: InSilicoParams, m: str, ds: str, tests, meta) -> None:
    """One test per statistic, from the kernel's typed result: the verdict statistic's
    answers the claim, the others are descriptive."""
    from dataclasses import replace

    unit = Unit(ds, m, method=f"in_silico_{meta['readout']}")
    for s in ("spearman", "sign_agreement", "auroc"):
        t = tests.get(s)
        if t is None:
            continue
        label = STAT_LABEL[s]
        if s == "spearman" and not meta["signed"]:
            label = "Spearman(predicted shift, observed |log2FC|)"
        r = replace(
            t.result,
            test=t.result.test.replace("statistic", label),
            statistic_name=f"mean matched {s}",
            effect_name=f"{s}: matched − mismatched",
        )
        hyp = (
            f"{m}'s in-silico perturbations predict the observed effects ({label}, "
            "matched above shuffled perturbations)"
        )
        extra = {
            "shuffled_mean": t.null_mean,
            "matched_ci": [t.stat_ci_low, t.stat_ci_high],
            "modes": meta["modes"],
            "signed": meta["signed"],
        }
        if s == p.verdict_statistic:
            ctx.claim(
                r,
                unit,
                claim=_claim(m),
                hypothesis=hyp,
                direction="greater",
                layer_choice=f"model output ({meta['readout']} readout), no layer selection",
                extra=extra,
            )
        else:
            ctx.describe(r, unit, hypothesis=hyp, extra=extra)


def _summary(df: pd.DataFrame, p: InSilicoParams) -> str:
    if df.empty:
        return "No model × dataset could be evaluated (see notes)."
    parts = [
        f"{r.model} on {r.dataset} ({r.readout}): mean matched {r.statistic} "
        f"{r.matched_mean:.3f} vs shuffled {r.shuffled_mean:.3f}, specificity "
        f"{r.specificity:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], p = {r.p:.3g} "
        f"({r.n_perturbations} perturbations)"
        for r in df[df["verdict"]].itertuples()
    ]
    return "; ".join(parts) + "."


# ---------------------------------------------------------------------------- calibration
# The verdict test (compare_in_silico: matched vs shuffled perturbation labels) on
# synthetic predicted-shift matrices made from a simulated screen, so no model is needed.
# The observed side is the real pipeline (simulated counts → Welch DE → responders). The
# predicted profile of every perturbation carries a gene-level pattern: the z-scored log
# variance of each gene in the control cells ("variable genes move in every
# perturbation"), plus independent noise. Nulls: that alone, on a screen whose responders
# concentrate on hub targets of highly expressed genes (``gene_level_predictability`` 1:
# the pattern does predict responders, but not perturbation-specifically), and on a screen
# without regulation. Planted: + strength × the perturbation's own true effect profile
# (the simulator's ``true_effects``, z-scored), at two strengths; signed and unsigned.

CALIBRATION_SIM: dict[str, Any] = {
    "n_cells": 1200,
    "n_genes": 120,
    "n_tfs": 24,
    "n_perturbations": 16,
    "frac_tf_perturbations": 1.0,
}


def _calibration_scenarios():
    from scfm_audit.analyses._calibration import Scenario

    out = [
        Scenario(
            "hub_null_variance_pattern",
            "null",
            "responders concentrated on hub targets among highly expressed genes; every "
            "prediction = control-cell variance pattern + noise (gene-level only)",
            truth=0.0,
            params={"predictability": 1.0, "regulation": 1.0, "strength": 0.0},
        ),
        Scenario(
            "null_no_regulation",
            "null",
            "screen without regulation; prediction = variance pattern + noise",
            truth=0.0,
            params={"predictability": 0.5, "regulation": 0.0, "strength": 0.0},
        ),
    ]
    for k in (0.15, 0.4):
        out.append(
            Scenario(
                f"planted_true_effects_{k}",
                "planted",
                f"prediction = variance pattern + noise + {k} × z-scored true effects",
                strength=k,
                params={"predictability": 1.0, "regulation": 1.0, "strength": k},
            )
        )
    out.append(
        Scenario(
            "planted_unsigned_2.0",
            "planted",
            "unsigned readout: |variance pattern + noise + 2.0 × z-scored true effects|, "
            "compared with |log2FC|",
            strength=None,  # another scale than the signed ones (not in the demo's smoke)
            params={"predictability": 1.0, "regulation": 1.0, "strength": 2.0, "signed": False},
        )
    )
    return out


def calibration_profiles(params: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predicted long table, observed DE with responders) of one calibration replicate:
    see the comment above :data:`CALIBRATION_SIM`."""
    from scfm_audit.data import simulate_perturbseq
    from scfm_audit.data._dataset import DatasetSpec, control_mask
    from scfm_audit.evaluate._de import differential_expression, responder_labels

    bench = simulate_perturbseq(
        **CALIBRATION_SIM,
        gene_level_predictability=params["predictability"],
        regulation_strength=params["regulation"],
        seed=seed,
    )
    ad = bench.adata
    spec = DatasetSpec(perturbation="perturbation", modality="modality")
    de = responder_labels(differential_expression(ad, spec))
    X = ad.X[control_mask(ad, spec)]
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    Y = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    lv = np.log(Y.var(0) + 1e-3)
    pattern = (lv - lv.mean()) / (lv.std() or 1.0)
    genes = pd.Index(ad.var_names.astype(str))
    perts = sorted(pd.unique(de["perturbation"].astype(str)))
    te = bench.true_effects
    T = np.zeros((len(perts), len(genes)))
    r = pd.Index(perts).get_indexer(te["perturbation"].astype(str))
    c = genes.get_indexer(te["gene"].astype(str))
    ok = (r >= 0) & (c >= 0) & (te["gene"] != te["perturbation"]).to_numpy()
    T[r[ok], c[ok]] = te["log2fc"].to_numpy()[ok]
    sd = T.std(axis=1, keepdims=True)
    Tz = np.divide(T, sd, out=np.zeros_like(T), where=sd > 0)
    rng = np.random.default_rng([seed, 11])
    pred = pattern[None, :] + rng.standard_normal(T.shape) + params["strength"] * Tz
    if not params.get("signed", True):
        pred = np.abs(pred)
    predicted = pd.DataFrame(
        {
            "arm": de["arm"].iloc[0],
            "perturbation": np.repeat(perts, len(genes)),
            "gene": np.tile(np.asarray(genes), len(perts)),
            "predicted_shift": pred.ravel(),
        }
    )
    return predicted, de


def _calibration_replicate(sc, seed: int, *, n_perm: int = 499, n_boot: int = 200):
    from scfm_audit.analyses._calibration import ReplicateOutcome
    from scfm_audit.evaluate._in_silico import compare_in_silico

    predicted, de = calibration_profiles(sc.params, seed)
    _, tests, _ = compare_in_silico(
        predicted,
        de,
        signed=sc.params.get("signed", True),
        stages=(n_perm,),
        n_boot=n_boot,
        seed=seed,
    )
    r = tests["spearman"].result  # the claim's own result: its side is the tested side
    return ReplicateOutcome(
        p=r.p,
        estimate=r.effect,
        ci_low=r.ci_low,
        ci_high=r.ci_high,
        null_value=r.null_value,
        extra={"auroc": tests["auroc"].p},
    )


def _register_calibration() -> None:
    from scfm_audit.analyses._calibration import register_calibration

    register_calibration("in_silico_perturbation", _calibration_scenarios())(_calibration_replicate)


_register_calibration()
