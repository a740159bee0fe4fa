"""Readouts of ``head_ablation`` besides the masked loss, and what they share: (b) the
model's own in-silico perturbations against observed effects, (c) attention-based
responder prediction, each with every picked condition's intervention active; the seeded
readout cells; the mean change over paired units with its bootstrap CI and the
descriptive Wilcoxon signed-rank test of it."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np
import pandas as pd

from scfm_audit.analyses._perturbation_common import dataset_responders
from scfm_audit.evaluate._ablation import Condition, attention_prediction, mean_difference_ci
from scfm_audit.stats._tests import paired_wilcoxon

CHANNEL_NAMES = {
    "zero": "head masking (output zeroed)",
    "uniform": "uniform attention (values kept)",
    "mean": "mean-ablation (reference mean output)",
    "mlp": "MLP output zeroed",
}


def readout_cells(ctx, ds: str, n: int, m: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Seeded disjoint samples of ``n`` readout and ``m`` reference cells, from the
    controls when the dataset has perturbations."""
    adata = ctx.dataset(ds)
    spec = ctx.dataset_spec(ds)
    pool = np.arange(adata.n_obs)
    what = "all cells"
    if getattr(spec, "perturbation", None) and spec.perturbation in adata.obs:
        ctrl = spec.control if isinstance(spec.control, tuple | list) else (spec.control,)
        is_ctrl = adata.obs[spec.perturbation].astype(str).isin([str(c) for c in ctrl])
        if is_ctrl.sum() >= 4:
            pool, what = np.flatnonzero(is_ctrl.to_numpy()), "control cells"
    perm = ctx.rng(ds, "cells").permutation(pool)
    n_read = min(n, max(2, len(perm) // 2))
    return np.sort(perm[:n_read]), np.sort(perm[n_read : n_read + m]), what


def change(ctx, unit, a, b, *, n_boot: int, seed: int, hypothesis: str, extra: dict) -> dict:
    """Mean change ``a − b`` over paired units (cells or perturbations) with its
    bootstrap CI, and the Wilcoxon signed-rank test of the change, recorded as
    descriptive (its side is that of the signed ranks, not of the mean)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d, lo, hi = mean_difference_ci(a, b, n_boot=n_boot, seed=seed)
    ok = np.isfinite(a) & np.isfinite(b)
    r = paired_wilcoxon(a, b, zero_method="zsplit")
    if not r.h0:  # paired_wilcoxon's all-zero return states no H0
        r = replace(r, h0="paired differences symmetric about 0")
    ctx.describe(r, unit, hypothesis=hypothesis, extra=extra)
    nan = float("nan")
    return {
        "baseline": float(np.mean(b[ok])) if ok.any() else nan,
        "ablated": float(np.mean(a[ok])) if ok.any() else nan,
        "change": d,
        "ci_low": lo,
        "ci_high": hi,
        "n_perturbations": int(ok.sum()),
        "p": r.p,
    }


def readout_conditions(conds: list[Condition]) -> list[Condition]:
    """The conditions readouts (b) and (c) run: the regulatory set in every channel, the
    smallest bottom-k, the full layer and the MLP conditions."""
    picked = [c for c in conds if c.kind in ("regulatory", "bottom-k", "full-layer", "mlp")]
    k_min = min((c.size for c in picked if c.kind == "bottom-k"), default=0)
    return [c for c in picked if c.kind != "bottom-k" or c.size == k_min]


def responders(ctx, p, ds):
    """The dataset's responder table, or None without perturbations / responders."""
    spec, adata = ctx.dataset_spec(ds), ctx.dataset(ds)
    if not getattr(spec, "perturbation", None) or spec.perturbation not in adata.obs:
        return None
    de = dataset_responders(ctx, ds, p)
    return de if len(de) and de["responder"].any() else None


def in_silico_readout(ctx, p, unit, adapter, picked, means):
    """Readout (b): the model's own in-silico perturbation (``evaluate/_in_silico``:
    delete for CRISPRi / no modality, overexpress for CRISPRa) of up to
    ``in_silico_perturbations`` perturbed genes per arm on ``in_silico_cells`` control
    cells, each condition's intervention active during both passes; per perturbation the
    AUROC of |predicted shift| for its observed responders and the Spearman with the
    observed profile, against the unablated model. Every condition is upstream of it."""
    from scfm_audit.analyses.in_silico_perturbation import InSilicoParams
    from scfm_audit.data._dataset import control_mask
    from scfm_audit.evaluate._in_silico import cross_scores, in_silico_effects, perturbable
    from scfm_audit.models._interventions import check_intervention_order

    ds, mname = unit.dataset, unit.model
    de = responders(ctx, p, ds)
    if de is None:
        return None
    spec, adata = ctx.dataset_spec(ds), ctx.dataset(ds)
    modes = InSilicoParams().arm_modes
    ctrl = control_mask(adata, spec)
    has_arm = spec.modality is not None and spec.modality in adata.obs
    arm_col = adata.obs[spec.modality].astype(str).to_numpy() if has_arm else None
    jobs = []  # (arm, mode, cells, perturbations)
    for arm in sorted(pd.unique(de["arm"].astype(str))):
        pool = np.flatnonzero(ctrl & (arm_col == arm)) if has_arm else np.flatnonzero(ctrl)
        labels = sorted(pd.unique(de.loc[de["arm"] == arm, "perturbation"].astype(str)))
        ok, _ = perturbable(adapter, adata, labels)
        if arm not in modes or not pool.size or not ok:
            continue
        rng = ctx.rng(ds, mname, arm, "in silico")
        cells = np.sort(rng.choice(pool, min(p.in_silico_cells, pool.size), replace=False))
        if len(ok) > p.in_silico_perturbations:
            ok = sorted(rng.choice(ok, p.in_silico_perturbations, replace=False).tolist())
        jobs.append((arm, modes[arm], cells, ok))
    if not jobs:
        return None

    def effects(iv) -> pd.DataFrame:
        parts = []
        for arm, mode, cells, ok in jobs:
            sub = adata[cells].to_memory() if adata.isbacked else adata[cells].copy()
            with iv if iv is not None else contextlib.nullcontext():
                eff = in_silico_effects(
                    adapter,
                    sub,
                    spec,
                    perturbations=ok,
                    cells=np.arange(sub.n_obs),
                    mode=mode,
                    batch_size=p.batch_size,
                )
            parts.append(eff.assign(arm=arm))
        out = pd.concat(parts, ignore_index=True)
        out.attrs.update(parts[0].attrs)
        return out

    def keyed(cs, stat) -> pd.Series:
        units = cs.units[["arm", "perturbation"]].astype(str).agg("/".join, axis=1)
        return pd.Series(cs.diagonal(stat), index=units.to_numpy())

    base_eff = effects(None)
    signed = bool(base_eff.attrs.get("signed"))
    base = cross_scores(base_eff, de, signed=signed)
    rows = []
    for c in picked:
        iv = c.intervention(adapter, means)
        order = check_intervention_order(adapter, iv, None)
        alt = cross_scores(effects(iv), de, signed=signed)
        for stat in ("auroc", "spearman"):
            b = keyed(base, stat)
            a = keyed(alt, stat).reindex(b.index)
            r = change(
                ctx,
                replace(unit, method=f"in silico ({c.channel})"),
                a.to_numpy(float),
                b.to_numpy(float),
                n_boot=p.n_boot,
                seed=ctx.seed_for(ds, mname, "isp", c.name, stat),
                hypothesis=f"{c.name} ({CHANNEL_NAMES[c.channel]}) changes the agreement of "
                f"{mname}'s in-silico perturbations with observed effects ({stat})",
                extra={"condition": c.name, "statistic": stat},
            )
            rows.append(
                {
                    "dataset": ds,
                    "model": mname,
                    "reference": unit.reference,
                    "readout": f"(b) in-silico {stat} with observed effects "
                    f"({base_eff.attrs.get('readout')} readout)",
                    "statistic": stat,
                    "condition": c.name,
                    "kind": c.kind,
                    "channel": c.channel,
                    "size": c.size,
                    "order": order.message,
                    "structurally_unable": not order.can_affect,
                    **r,
                }
            )
    return pd.DataFrame(rows)


def prediction_readout(ctx, p, unit, adapter, picked, means):
    """Readout (c): attention-based perturbation prediction at ``prediction_layer``."""
    from scfm_audit.models._interventions import check_intervention_order

    ds, mname = unit.dataset, unit.model
    adata = ctx.dataset(ds)
    resp = responders(ctx, p, ds)
    resp = None if resp is None else resp[resp["perturbation"].astype(str).isin(adata.var_names)]
    if resp is None or not resp["responder"].any():
        return None
    resp = resp.assign(perturbation=resp["perturbation"].astype(str))
    labels = resp["perturbation"].unique()
    R = int(p.prediction_layer) % adapter.n_layers
    cells, _, _ = readout_cells(ctx, ds, p.prediction_cells, 0)
    kw = dict(
        cells=cells,
        layer=R,
        targets=pd.Series(labels, index=labels),
        responders=resp,
        batch_size=p.batch_size,
    )
    base = attention_prediction(adapter, adata, **kw)
    rows = []
    for c in picked:
        iv = c.intervention(adapter, means)
        order = check_intervention_order(adapter, iv, R, readout_site="attn.pattern")
        row = {
            "dataset": ds,
            "model": mname,
            "reference": unit.reference,
            "readout": f"(c) attention AUROC for responders, layer {R}",
            "condition": c.name,
            "kind": c.kind,
            "channel": c.channel,
            "size": c.size,
            "order": order.message,
            "structurally_unable": not order.can_affect,
            "same_site": bool(order.same_site),
        }
        if not order.can_affect and not order.same_site:
            rows.append({**row, "auroc_baseline": float(np.nanmean(base["auroc"]))})
            continue
        alt = attention_prediction(adapter, adata, intervention=iv, **kw)
        by_construction = order.same_site and not order.upstream
        r = change(
            ctx,
            replace(unit, method=f"attention layer {R} ({c.channel})", layer=R),
            alt["auroc"].to_numpy(float),
            base["auroc"].to_numpy(float),
            n_boot=p.n_boot,
            seed=ctx.seed_for(ds, mname, "pred", c.name),
            hypothesis=f"{c.name} ({CHANNEL_NAMES[c.channel]}) changes {mname}'s attention-"
            f"based prediction of responders at layer {R}"
            + ("; same-site: a change by construction" if by_construction else ""),
            extra={"condition": c.name},
        )
        r["auroc_baseline"], r["auroc"] = r.pop("baseline"), r.pop("ablated")
        rows.append({**row, **r})
    return pd.DataFrame(rows)
