"""Head-ablation kernels: ablation conditions, the masked-loss readout over many
conditions with the residual stream cached, attention-based perturbation prediction
under an intervention, head entropy, random and entropy-matched head sets, and the
empirical test of a head set against random sets of equal size.

Cost model. A condition that only touches layers ``L``.. cannot change layers below
``L``: for every batch the baseline pass is run once, keeping the hidden state entering
each layer some condition starts at (:meth:`ModelAdapter.residual_cache`); each condition
then runs layers ``L``.. only (:meth:`ModelAdapter.forward_cached`). The baseline losses
and outputs are that one pass, reused by every condition.

The verdict statistic (:func:`set_vs_random`): the degradation of a head set
``D(S) = mean over cells (loss with S ablated − baseline loss)``, compared with
``D(R_1), …, D(R_n)`` of ``n`` random sets of the same size, drawn by the same rule. H0:
the set S is exchangeable with the random sets (its ablation is no more harmful than
ablating a random set of equal size). Rank p ``(1 + #{D(R_i) ≥ D(S)}) / (1 + n)``, and
the two-sided version ``min(1, 2 · min(p_greater, p_less))`` for the four-valued
answer; exact under H0 (the rank of an exchangeable draw is uniform). Its attainable
floor: with every other set of the rule compared (exact enumeration of ``N`` sets), the
share of sets tied at the most extreme D (``1/N`` without ties); with ``n`` i.i.d.
random sets, ``1/(n+1)`` raised by ties at the extreme (doubled two-sided).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import torch

from scfm_audit.models._hooks import site_name
from scfm_audit.models._interventions import Intervention, ablate_heads, zero_mlp
from scfm_audit.models._masked import MaskedBatch, masked_loss_per_cell
from scfm_audit.stats._montecarlo import attainable_floor
from scfm_audit.stats._resampling import bootstrap_ci, empirical_p
from scfm_audit.stats._tests import StatTestResult

if TYPE_CHECKING:
    from anndata import AnnData

    from scfm_audit.models._base import ModelAdapter, ModelOutput, TokenizedBatch
    from scfm_audit.models._hooks import HookContext
    from scfm_audit.models._interventions._ablate import AblationMethod

__all__ = [
    "CHANNELS",
    "SET_VS_RANDOM_H0",
    "Condition",
    "attention_prediction",
    "entropy_matched_sets",
    "every_head_set",
    "head_entropy",
    "masked_loss_conditions",
    "mean_difference_ci",
    "n_head_sets",
    "random_head_sets",
    "random_set_design",
    "set_vs_random",
]

#: head channels (the paper's head masking and uniform attention, plus mean-ablation)
CHANNELS = ("zero", "uniform", "mean")

SET_VS_RANDOM_H0 = (
    "the head set is exchangeable with random head sets of the same size drawn by the same "
    "rule: ablating it raises the masked loss no more than ablating a random set (rank p "
    "against the random-set distribution; two-sided)"
)

Head = tuple[int, int]


@dataclass(frozen=True)
class Condition:
    """One ablation: ``kind`` (``regulatory``, ``top-k``, ``bottom-k``, ``random-k``,
    ``entropy-matched``, ``full-layer``, ``mlp``), ``channel`` (``zero``, ``uniform``,
    ``mean`` or ``mlp``), the ``heads`` ablated or the MLP ``layers`` zeroed, and the set
    ``size``. ``draw`` numbers the random / matched draws (-1 otherwise)."""

    kind: str
    channel: str
    heads: tuple[Head, ...] = ()
    layers: tuple[int, ...] = ()
    draw: int = -1
    label: str = ""

    @property
    def size(self) -> int:
        return len(self.heads) if self.heads else len(self.layers)

    @property
    def name(self) -> str:
        base = self.label or self.kind
        return f"{base}#{self.draw}" if self.draw >= 0 else base

    @property
    def start_layer(self) -> int:
        """The lowest layer the condition touches: layers below it are unchanged."""
        return min(h[0] for h in self.heads) if self.heads else min(self.layers)

    def intervention(
        self, adapter: ModelAdapter, head_means: Mapping[Any, torch.Tensor] | None = None
    ) -> Intervention:
        if self.channel == "mlp":
            return zero_mlp(adapter, list(self.layers))
        method = cast("AblationMethod", self.channel)  # ablate_heads rejects any other name
        return ablate_heads(adapter, list(self.heads), method=method, reference=head_means)


# -- head sets ---------------------------------------------------------------------------
def all_heads(n_layers: int, n_heads: int) -> list[Head]:
    return [(L, h) for L in range(n_layers) for h in range(n_heads)]


def random_head_sets(
    heads: Sequence[Head],
    size: int,
    n_sets: int,
    rng: np.random.Generator,
    *,
    layer_matched: Sequence[Head] | None = None,
) -> list[tuple[Head, ...]]:
    """``n_sets`` sets of ``size`` distinct heads drawn uniformly from ``heads``
    (duplicates of a set across draws allowed: the draws are i.i.d.). With
    ``layer_matched`` (a head set), each draw has the same number of heads per layer as
    it (uniform within those layers)."""
    heads = [(int(h[0]), int(h[1])) for h in heads]
    if not 0 < size <= len(heads):
        raise ValueError(f"set size {size} must lie in 1 … {len(heads)}.")
    out = []
    if layer_matched is not None:
        per = pd.Series([L for L, _ in layer_matched]).value_counts().sort_index()
        pools = {L: [h for h in heads if h[0] == L] for L in per.index}
        for _ in range(n_sets):
            s = []
            for L, c in per.items():
                idx = rng.choice(len(pools[L]), size=int(c), replace=False)
                s += [pools[L][i] for i in idx]
            out.append(tuple(sorted(s)))
        return out
    for _ in range(n_sets):
        idx = rng.choice(len(heads), size=size, replace=False)
        out.append(tuple(sorted(heads[i] for i in idx)))
    return out


def n_head_sets(
    heads: Sequence[Head], size: int, *, layer_matched: Sequence[Head] | None = None
) -> int:
    """How many distinct head sets :func:`random_head_sets` can draw."""
    from math import comb

    if layer_matched is None:
        return comb(len(heads), size)
    per = pd.Series([L for L, _ in layer_matched]).value_counts()
    n = 1
    for L, c in per.items():
        n *= comb(sum(1 for h in heads if h[0] == L), int(c))
    return n


def every_head_set(
    heads: Sequence[Head],
    size: int,
    rng: np.random.Generator,
    *,
    layer_matched: Sequence[Head] | None = None,
    exclude: Sequence[Head] | None = None,
) -> list[tuple[Head, ...]]:
    """Every distinct head set :func:`random_head_sets` could draw (its whole support),
    except ``exclude``, in random order (so that a prefix is a random subset). With
    these as the "random sets", the rank test is the exact permutation test."""
    from itertools import combinations, product

    heads = [(int(h[0]), int(h[1])) for h in heads]
    if layer_matched is None:
        sets = [tuple(sorted(c)) for c in combinations(heads, size)]
    else:
        per = pd.Series([L for L, _ in layer_matched]).value_counts().sort_index()
        parts = [
            list(combinations([h for h in heads if h[0] == L], int(c))) for L, c in per.items()
        ]
        sets = [tuple(sorted(h for part in pick for h in part)) for pick in product(*parts)]
    ex = None if exclude is None else tuple(sorted(tuple(map(int, h)) for h in exclude))
    sets = [s for s in sets if s != ex]
    return [sets[i] for i in rng.permutation(len(sets))]


def random_set_design(
    heads: Sequence[Head],
    selected: Sequence[Head],
    n_random: int,
    rng: np.random.Generator,
    *,
    layer_matched: bool = False,
) -> tuple[list[tuple[Head, ...]], int, bool]:
    """The sets ``selected`` is compared with: ``n_random`` i.i.d. random sets of its size
    (``layer_matched``: as many per layer), or — when at most ``n_random`` other sets
    exist — every other one (the exact permutation test). Returns (sets, number of
    distinct sets the rule can draw, exhaustive)."""
    match = selected if layer_matched else None
    n_distinct = n_head_sets(heads, len(selected), layer_matched=match)
    if n_distinct <= 1:
        return [], n_distinct, True
    if n_distinct - 1 <= n_random:
        sets = every_head_set(heads, len(selected), rng, layer_matched=match, exclude=selected)
        return sets, n_distinct, True
    sets = random_head_sets(heads, len(selected), n_random, rng, layer_matched=match)
    return sets, n_distinct, False


def entropy_matched_sets(
    entropy: pd.Series,
    selected: Sequence[Head],
    n_sets: int,
    rng: np.random.Generator,
    *,
    n_near: int = 3,
) -> list[tuple[Head, ...]]:
    """Random head sets whose attention entropy matches ``selected``: for every selected
    head, one head drawn uniformly among the ``n_near`` heads closest to it in mean
    attention entropy (``entropy`` indexed by ``(layer, head)``), other than itself and
    not yet in the set (the pool widens when needed)."""
    keys = [tuple(map(int, k)) for k in entropy.index]
    vals = entropy.to_numpy(dtype=float)
    pos = {k: i for i, k in enumerate(keys)}
    out = []
    for _ in range(n_sets):
        chosen: list[Head] = []
        for h in selected:
            order = np.argsort(np.abs(vals - vals[pos[tuple(h)]]), kind="stable")
            cand = [keys[i] for i in order if keys[i] != tuple(h) and keys[i] not in chosen]
            if not cand:
                cand = [k for k in keys if k not in chosen]
            pool = cand[: max(1, n_near)]
            chosen.append(pool[int(rng.integers(len(pool)))])
        out.append(tuple(sorted(chosen)))
    return out


def head_entropy(adapter: ModelAdapter, batches: Iterable[TokenizedBatch]) -> pd.Series:
    """Mean attention entropy (nats) of every head over the real query rows of
    ``batches``, indexed by ``(layer, head)``."""
    sums = torch.zeros(adapter.n_layers, adapter.n_heads, dtype=torch.float64)
    n = torch.zeros(adapter.n_layers, dtype=torch.float64)

    def observe(p: torch.Tensor, *, site: str, ctx: HookContext) -> None:
        L = int(site.split(".")[1])
        m = ctx.attention_mask
        m = torch.ones(p.shape[0], p.shape[2], dtype=torch.bool) if m is None else m
        m = m.to(p.device)
        if p.element_size() < 4:  # fp16 / bf16: 1e-30 rounds to 0 and log(0)·0 is NaN
            p = p.float()
        ent = -(p * torch.log(p.clamp(min=1e-30))).sum(-1)  # (B, H, T)
        sums[L] += (ent * m[:, None, :]).sum((0, 2)).double().cpu()
        n[L] += float(m.sum())

    with adapter.hooks([(site_name(L, "attn.pattern"), observe) for L in range(adapter.n_layers)]):
        for b in batches:
            adapter.forward(b)
    ent = (sums / n.clamp(min=1)[:, None]).numpy()
    idx = pd.MultiIndex.from_tuples(all_heads(adapter.n_layers, adapter.n_heads))
    return pd.Series(ent.ravel(), index=idx, name="entropy")


# -- masked loss over conditions ----------------------------------------------------------
def _cos_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    dist: torch.Tensor = 1.0 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-12)
    return dist


def _fidelity(base: ModelOutput, alt: ModelOutput) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: hidden-state cosine distance (mean over real tokens) and output cosine
    distance (value predictions over real tokens; masked-LM logits per real token,
    averaged; else the cell embedding)."""
    m = base.attention_mask.to(base.hidden.device).double()
    tok = _cos_dist(base.hidden, alt.hidden)
    hidden = (tok * m).sum(1) / m.sum(1).clamp(min=1)
    if base.gene_predictions is not None and alt.gene_predictions is not None:
        out = _cos_dist(base.gene_predictions.double() * m, alt.gene_predictions.double() * m)
    elif base.logits is not None and alt.logits is not None:
        t = _cos_dist(base.logits, alt.logits)
        out = (t * m).sum(1) / m.sum(1).clamp(min=1)
    else:
        out = _cos_dist(base.cell_embedding, alt.cell_embedding)
    return hidden.cpu().numpy(), out.cpu().numpy()


@dataclass
class ConditionLosses:
    """Per-cell masked losses: ``baseline`` (n_cells,), ``loss`` (n_conditions, n_cells),
    fidelity ``hidden`` / ``output`` (n_conditions, n_cells) cosine distances to the
    baseline, the ``cells`` (obs positions), and the number of layer passes run
    (``layer_passes``) against a full forward per condition (``full_passes``)."""

    conditions: list[Condition]
    baseline: np.ndarray
    loss: np.ndarray
    hidden: np.ndarray
    output: np.ndarray
    cells: np.ndarray
    layer_passes: int = 0
    full_passes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def degradation(self) -> np.ndarray:
        """Mean loss increase over cells per condition (n_conditions,)."""
        mean_increase: np.ndarray = np.nanmean(self.loss - self.baseline[None, :], axis=1)
        return mean_increase


def masked_loss_conditions(
    adapter: ModelAdapter,
    batches: Sequence[MaskedBatch],
    conditions: Sequence[Condition],
    *,
    head_means: Mapping[Any, torch.Tensor] | None = None,
    use_cache: bool = True,
) -> ConditionLosses:
    """Masked loss per cell for the baseline and every condition (same masked inputs).

    ``use_cache``: run each condition from the cached state entering its lowest layer
    (default); False re-runs the full model per condition (the benchmark's reference; the
    results are equal to float tolerance).

    Inside a run with an executor, more than ``CONDITIONS_PER_TASK`` conditions go to it
    in chunks (``evaluate/_ablation_tasks.py``)."""
    # -- executor hook: chunks of conditions as tasks (evaluate/_ablation_tasks.py) ------
    from scfm_audit._executor import current_executor
    from scfm_audit.evaluate._ablation_tasks import CONDITIONS_PER_TASK, distributed_conditions

    executor = current_executor()
    if executor is not None and len(conditions) > CONDITIONS_PER_TASK:
        from scfm_audit.edges._attention_shards import has_active_hooks

        if not has_active_hooks(adapter):  # a worker's model would not carry the hooks
            return distributed_conditions(
                executor, adapter, batches, conditions, head_means=head_means, use_cache=use_cache
            )
    # -- end of executor hook --------------------------------------------------------------
    conditions = list(conditions)
    logits = any(mb.objective == "masked-gene cross-entropy" for mb in batches)
    starts = sorted({c.start_layer for c in conditions}) if use_cache else [0]
    base_parts, loss_parts, hid_parts, out_parts, cells = [], [], [], [], []
    n_layers = adapter.n_layers
    layer_passes = full_passes = 0
    ivs = [c.intervention(adapter, head_means) for c in conditions]
    for mb in batches:
        cache = adapter.residual_cache(mb.batch, starts, return_logits=logits)
        base = cache.output
        base_parts.append(masked_loss_per_cell(base, mb))
        cells.append(np.asarray(mb.batch.cell_index))
        rows_l, rows_h, rows_o = [], [], []
        for c, iv in zip(conditions, ivs):
            start = c.start_layer if use_cache else 0
            with iv:
                out = adapter.forward_cached(cache, start)
            layer_passes += n_layers - start
            full_passes += n_layers
            rows_l.append(masked_loss_per_cell(out, mb))
            h, o = _fidelity(base, out)
            rows_h.append(h)
            rows_o.append(o)
        layer_passes += n_layers  # the baseline pass
        full_passes += n_layers
        loss_parts.append(np.array(rows_l).reshape(len(conditions), -1))
        hid_parts.append(np.array(rows_h).reshape(len(conditions), -1))
        out_parts.append(np.array(rows_o).reshape(len(conditions), -1))
    if not batches:
        raise ValueError("masked_loss_conditions: no batches.")
    return ConditionLosses(
        conditions=conditions,
        baseline=np.concatenate(base_parts),
        loss=np.concatenate(loss_parts, axis=1),
        hidden=np.concatenate(hid_parts, axis=1),
        output=np.concatenate(out_parts, axis=1),
        cells=np.concatenate(cells),
        layer_passes=layer_passes,
        full_passes=full_passes,
    )


# -- statistics -----------------------------------------------------------------------------
def mean_difference_ci(
    a: np.ndarray, b: np.ndarray, *, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a − b`` over paired units with a percentile bootstrap CI over the units
    (cells or perturbations). NaN pairs are dropped."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    if d.size < 2:
        return float(np.mean(d)) if d.size else float("nan"), float("nan"), float("nan")
    r = bootstrap_ci(np.mean, d, n_boot=n_boot, ci=level, seed=seed)
    return float(np.mean(d)), float(r.ci_low), float(r.ci_high)


def _quantile(d: float, null: np.ndarray) -> float:
    """Mid-rank quantile of ``d`` among ``null`` (0.5 in expectation under exchangeability)."""
    return float(np.mean(null < d) + 0.5 * np.mean(null == d))


def set_vs_random(
    loss_set: np.ndarray,
    loss_random: np.ndarray,
    baseline: np.ndarray,
    *,
    n_boot: int = 0,
    seed: int = 0,
    exact: bool = False,
    against: str = "random head sets",
    h0: str = SET_VS_RANDOM_H0,
) -> dict[str, Any]:
    """The empirical test of a head set against random sets of equal size.

    ``loss_set`` (n_cells,) per-cell loss with the set ablated; ``loss_random``
    (n_random, n_cells) the same for each random set; ``baseline`` (n_cells,). Returns
    the set's degradation ``degradation`` = D (mean loss increase), the random sets'
    mean and 95th percentile, rank p-values (``p_greater``, ``p_less``, ``p``
    two-sided), ``excess`` = D − mean D(random), and the effect ``quantile``: D's
    mid-rank quantile among the random sets (0.5 expected under H0; > 0.5: more harmful
    than random sets), with a percentile bootstrap CI over cells (``ci_low``,
    ``ci_high``: the same cells resampled for the set and every random set, so the CI
    shows the uncertainty from the readout cells, not from the finite number of random
    sets; ``n_boot`` = 0: no CI). ``p_floor``: the smallest two-sided p attainable
    (``exact``: the random sets are every other set of the rule, see the module
    docstring); ``result``: all of it as a typed
    :class:`~scfm_audit.stats._tests.StatTestResult` (effect: the quantile, whose null
    centre is 0.5; the tested side from the tails) named with ``against`` and ``h0``.
    """
    base = np.asarray(baseline, float)
    ls = np.asarray(loss_set, float)
    lr = np.asarray(loss_random, float)
    ok = np.isfinite(base) & np.isfinite(ls) & np.isfinite(lr).all(0)
    base, ls, lr = base[ok], ls[ok], lr[:, ok]
    d_set = float(np.mean(ls - base))
    d_rand = (lr - base[None, :]).mean(1)
    out: dict[str, Any] = {
        "degradation": d_set,
        "random_mean": float(np.mean(d_rand)),
        "random_q95": float(np.quantile(d_rand, 0.95)),
        "quantile": _quantile(d_set, d_rand),
        "p_greater": empirical_p(d_set, d_rand, alternative="greater"),
        "p_less": empirical_p(d_set, d_rand, alternative="less"),
        "p": empirical_p(d_set, d_rand, alternative="two-sided"),
        "excess": d_set - float(np.mean(d_rand)),
        "n_random": len(d_rand),
        "n_cells": int(ok.sum()),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
    }
    if n_boot and ok.sum() >= 2:
        rng = np.random.default_rng(seed)
        n = len(base)
        ds, dr = ls - base, lr - base[None, :]
        draws = np.empty(n_boot)
        for i in range(n_boot):
            idx = rng.integers(0, n, n)
            draws[i] = _quantile(ds[idx].mean(), dr[:, idx].mean(1))
        out["ci_low"], out["ci_high"] = (float(x) for x in np.quantile(draws, [0.025, 0.975]))
    out["p_floor"] = _set_floor(d_set, d_rand, exact=exact)
    kind = f"all {len(d_rand)} other" if exact else f"{len(d_rand)}"
    out["result"] = StatTestResult(
        statistic=d_set,
        p=out["p"],
        effect=out["quantile"],
        n=out["n_cells"],
        test=f"rank of the mean masked-loss increase among {kind} {against}; two-sided"
        + (" (exact permutation test)" if exact else ""),
        statistic_name="mean masked-loss increase",
        effect_name="quantile of the increase among the compared sets",
        alternative="two-sided",
        ci_low=out["ci_low"],
        ci_high=out["ci_high"],
        p_greater=out["p_greater"],
        p_less=out["p_less"],
        null_value=0.5,
        p_floor=out["p_floor"],
        h0=h0,
        null_name=against.replace(" ", "_"),
    )
    return out


def _set_floor(d_set: float, d_rand: np.ndarray, *, exact: bool) -> float:
    """The smallest two-sided p of :func:`set_vs_random`: exact enumeration — the share
    of the ``N`` sets tied at the most extreme D (``1/N`` without ties); i.i.d. random
    sets — the Monte-Carlo floor ``1/(n+1)``, raised by ties at the extreme."""
    if not exact:
        return attainable_floor(np.asarray(d_rand, float), "two-sided")
    d = np.append(np.asarray(d_rand, float), d_set)
    d = d[np.isfinite(d)]
    tol = 100 * np.finfo(np.float64).eps * max(1.0, float(np.abs(d).max()))
    up = np.sum(d >= d.max() - tol) / d.size
    lo = np.sum(d <= d.min() + tol) / d.size
    return float(min(1.0, 2 * min(up, lo)))


# -- attention-based perturbation prediction ---------------------------------------------------
def attention_prediction(
    adapter: ModelAdapter,
    adata: AnnData,
    *,
    cells: np.ndarray,
    layer: int,
    targets: pd.Series,
    responders: pd.DataFrame,
    intervention: Intervention | None = None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Per perturbation: AUROC of the head-mean attention from the perturbed gene (query
    row, softmax relative to uniform) at ``layer`` over the control ``cells``, for its
    responders among the other genes, with ``intervention`` active.

    ``targets``: perturbation label → perturbed gene (a ``var_names`` entry);
    ``responders``: long table (``perturbation``, ``gene``, bool ``responder``; per
    ``arm`` when present).
    Perturbations whose gene was never tokenised or with no responder / non-responder
    among the covered candidates get AUROC NaN."""
    from scfm_audit.edges._attention import extract_attention_edges
    from scfm_audit.stats._metrics import auroc

    with intervention if intervention is not None else contextlib.nullcontext():
        es = extract_attention_edges(
            adapter,
            adata,
            cells=cells,
            layers=[layer],
            per_head=False,
            score="softmax_relative",
            batch_size=batch_size,
            progress=False,
        )[0]
    genes = es.genes
    S = es.dense()
    rows = []
    arm_col = "arm" if "arm" in responders.columns else None
    for key, r in responders.groupby([arm_col, "perturbation"] if arm_col else ["perturbation"]):
        arm, pert = key if arm_col else ("all", key[0])
        if pert not in targets.index:
            continue
        gene = str(targets[pert])
        i = genes.get_indexer([gene])[0]
        auc = float("nan")
        n_pos = int(r["responder"].sum())
        if i >= 0 and n_pos:
            lab = pd.Series(r["responder"].to_numpy(bool), index=r["gene"].astype(str))
            cand = genes[(genes != gene) & genes.isin(lab.index)]
            s = S[i, genes.get_indexer(cand)]
            y = lab.reindex(cand).to_numpy(bool)
            keep = np.isfinite(s)
            if keep.any() and 0 < y[keep].sum() < keep.sum():
                auc = float(auroc(y[keep], s[keep]))
        rows.append(
            {"arm": arm, "perturbation": pert, "gene": gene, "auroc": auc, "n_responders": n_pos}
        )
    return pd.DataFrame(rows)
