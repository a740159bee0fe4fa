"""In-silico perturbation by the model itself, and its comparison with observed effects.

Two pure kernels (used by the ``in_silico_perturbation`` analysis and, as a readout, by
``head_ablation``):

:func:`in_silico_effects`
    Knock down (``delete``) or overexpress each perturbed gene in the model's input for a
    set of cells (control cells in the analysis) and read, per other gene, how the
    model's output moves. The unperturbed forward pass is computed **once per batch** and
    reused for every perturbation. Readouts:

    * ``expression`` (scGPT; any model with a value head, ``ModelOutput.gene_predictions``):
      change of the model's reconstructed expression value of gene g (perturbed − baseline,
      on the model's input-value scale, e.g. scGPT's bins), averaged over the cells where g
      has a token both before and after the perturbation. **Signed.**
    * ``embedding`` (Geneformer; models without a value head): ``1 − cos(h_g, h'_g)``
      between gene g's contextual embedding before and after the perturbation, averaged
      the same way — the gene-embedding shift of Geneformer's ``InSilicoPerturber``
      (``emb_mode`` gene, cosine similarity of each gene's embedding, reported there as
      the similarity; here as 1 − similarity so that larger means "moved more").
      **Unsigned**: it cannot say whether a gene goes up or down.

    ``delete`` can only act on cells whose input carries the gene: other cells are skipped
    (not forwarded) and ``n_cells`` says how many were used. ``overexpress`` acts on every
    cell (scGPT: value set to the top bin, token appended where absent; Geneformer: token
    moved to the first rank).

:func:`compare_in_silico`
    Per perturbation, predicted shifts against the observed DE profile of the same
    perturbation: Spearman(predicted, log2fc) over genes (unsigned readouts: against
    |log2fc|), sign agreement on responders (signed readouts only; NaN otherwise),
    AUROC of |predicted| for responders. The perturbed genes of the pair are excluded
    from every comparison (a knock-down's own fall is not a prediction).
    Every statistic is computed for every (predicted j, observed k) pair of one arm
    (:func:`cross_scores`), so that the **shuffled-perturbation-label null** — predicted
    profile of j compared with the observed profile of π(j), π a random permutation of
    the arm's perturbations — costs one gather per draw. Permuting perturbations keeps
    every gene-level pattern (e.g. "variable genes move in every perturbation") in the
    null, so such patterns do not count as perturbation-specific prediction.
    Perturbations are the independent units: p-values come from permutations of
    perturbations, CIs from a bootstrap over perturbations.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = [
    "CROSS_STATISTICS",
    "InSilicoTest",
    "compare_in_silico",
    "cross_scores",
    "in_silico_effects",
    "in_silico_test",
    "perturbable",
]

Mode = Literal["delete", "overexpress"]
Readout = Literal["auto", "expression", "embedding"]
#: the per-pair statistics :func:`cross_scores` computes
CROSS_STATISTICS = ("spearman", "sign_agreement", "auroc")

EFFECT_COLUMNS = ["perturbation", "gene", "predicted_shift", "n_cells", "n_cells_gene"]


# ----------------------------------------------------------------------------- effects
def perturbable(adapter, adata, perturbations: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """Split ``perturbations`` (labels naming ``var_names``) into those ``adapter`` can
    perturb and the others, with the reason (not a gene of the dataset / not in the
    model's vocabulary). Nothing is dropped silently: the caller reports the second."""
    report = adapter.vocabulary_report(adata)
    missing = set(map(str, report.missing))
    var = pd.Index(adata.var_names).astype(str)
    ok, skipped = [], {}
    for g in dict.fromkeys(map(str, perturbations)):
        if g not in var:
            skipped[g] = "not a gene of the dataset (var_names)"
        elif g in missing:
            skipped[g] = f"not in the vocabulary of {adapter.name}"
        else:
            ok.append(g)
    return ok, skipped


def _take_rows(batch, rows: np.ndarray):
    """The cells ``rows`` of a TokenizedBatch, trailing all-padding columns cut."""
    import torch

    from scfm_audit.models._base import TokenizedBatch

    r = np.asarray(rows)
    tr = torch.as_tensor(r, device=batch.input_ids.device)
    mask = batch.attention_mask[tr]
    T = int(mask.sum(1).max().item()) if len(r) else 0
    T = max(T, 1)
    return TokenizedBatch(
        input_ids=batch.input_ids[tr, :T],
        attention_mask=mask[:, :T],
        gene_index=batch.gene_index[tr, :T],
        cell_index=np.asarray(batch.cell_index)[r],
        values=None if batch.values is None else batch.values[tr, :T],
    )


def _positions(batch, n_genes: int) -> np.ndarray:
    """(B, G) token position of each dataset gene in each cell (-1 where absent)."""
    gidx = batch.gene_index.detach().cpu().numpy()
    mask = batch.attention_mask.detach().cpu().numpy().astype(bool)
    pos = np.full((gidx.shape[0], n_genes), -1, dtype=np.int64)
    b, t = np.nonzero(mask & (gidx >= 0))
    pos[b, gidx[b, t]] = t
    return pos


class _Reader:
    """Runs the forward pass and returns the readout tensor of a batch: (B, T) predicted
    values (expression) or (B, T, D) gene embeddings of the chosen layer (embedding)."""

    def __init__(self, adapter, readout: Readout, embedding_layer: int | None) -> None:
        self.adapter = adapter
        self.readout = readout
        emb = getattr(adapter, "emb_layer", 0) if embedding_layer is None else embedding_layer
        n = adapter.n_layers
        if not -n < int(emb) <= 0:
            raise ValueError(
                f"embedding_layer={emb} must lie in [-{n - 1}, 0] (0: last layer, -1: the "
                "one before, as Geneformer's emb_layer)"
            )
        self.site = None if int(emb) == 0 else f"layers.{n + int(emb) - 1}.resid_post"
        self.embedding_layer = int(emb)

    def __call__(self, batch) -> np.ndarray:
        if self.readout == "expression":
            out = self.adapter.forward(batch)
            if out.gene_predictions is None:
                raise ValueError(
                    f"{self.adapter.name} has no expression read-out (gene_predictions); "
                    "use readout='embedding'."
                )
            return out.gene_predictions.detach().float().cpu().numpy()
        if self.site is None:
            return self.adapter.forward(batch).hidden.detach().float().cpu().numpy()
        seen = {}

        def grab(x, *, site, ctx):
            seen["x"] = x.detach()

        with self.adapter.hooks({self.site: grab}):
            self.adapter.forward(batch)
        return seen["x"].float().cpu().numpy()


def _shift(
    base: np.ndarray, pert: np.ndarray, pos_b: np.ndarray, pos_p: np.ndarray, signed: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per gene: sum over cells of the readout change and the number of cells, over the
    (cell, gene) pairs present before and after."""
    G = pos_b.shape[1]
    b, g = np.nonzero((pos_b >= 0) & (pos_p >= 0))
    if b.size == 0:
        return np.zeros(G), np.zeros(G, dtype=np.int64)
    x0, x1 = base[b, pos_b[b, g]], pert[b, pos_p[b, g]]
    if signed:
        d = x1.astype(np.float64) - x0
    else:
        num = np.sum(x0 * x1, axis=-1, dtype=np.float64)
        den = np.linalg.norm(x0, axis=-1) * np.linalg.norm(x1, axis=-1)
        d = 1.0 - np.divide(num, den, out=np.ones_like(num), where=den > 0)
    return np.bincount(g, weights=d, minlength=G), np.bincount(g, minlength=G)


def in_silico_effects(
    adapter,
    adata,
    spec=None,
    *,
    perturbations: Sequence[str],
    cells: np.ndarray,
    mode: Mode = "delete",
    batch_size: int = 32,
    readout: Readout = "auto",
    embedding_layer: int | None = None,
    progress: Callable[..., Iterable] | None = None,
) -> pd.DataFrame:
    """The model's own in-silico perturbation of each gene of ``perturbations``.

    Inputs: a model ``adapter`` (:class:`~scfm_audit.models.ModelAdapter`), ``adata`` with
    raw counts where ``spec`` says (``spec.counts``; default ``X``), ``perturbations``
    (gene names in ``var_names`` the model can perturb, see :func:`perturbable`),
    ``cells`` (obs positions, e.g. a seeded subsample of control cells), ``mode``
    (``delete`` / ``overexpress``), ``readout`` (``auto``: ``expression`` when the model
    has a value head, else ``embedding``; see the module docstring), ``embedding_layer``
    (embedding readout: 0 last layer, −1 the one before; default the adapter's
    ``emb_layer``), ``progress(iterable, description=, total=)`` (optional).

    Output: long DataFrame, one row per (perturbation, gene of ``var_names``):
    ``predicted_shift`` (mean over the cells where the gene was read before and after;
    NaN where none, e.g. the deleted gene itself), ``n_cells`` (cells perturbed: for
    ``delete`` those whose input carries the gene), ``n_cells_gene`` (cells behind this
    gene's mean). ``attrs`` records mode, readout, ``signed``, embedding layer, model,
    number of cells and batch size.
    """
    if mode not in ("delete", "overexpress"):
        raise ValueError(f"mode must be 'delete' or 'overexpress', got {mode!r}")
    if readout not in ("auto", "expression", "embedding"):
        raise ValueError(f"readout must be 'auto', 'expression' or 'embedding', got {readout!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    counts = getattr(spec, "counts", "X") if spec is not None else "X"
    cells = np.asarray(cells, dtype=np.int64)
    var = pd.Index(adata.var_names).astype(str)
    perts = [str(g) for g in perturbations]
    pos_of = var.get_indexer(pd.Index(perts))
    if (pos_of < 0).any():
        bad = [g for g, i in zip(perts, pos_of) if i < 0]
        raise ValueError(
            f"perturbations not among the dataset's genes: {bad[:10]}; pass var_names "
            "(perturbable() says which labels the model can perturb)."
        )
    G, P = len(var), len(perts)
    sums = np.zeros((P, G))
    counts_g = np.zeros((P, G), dtype=np.int64)
    n_cells = np.zeros(P, dtype=np.int64)
    reader = None
    batches = list(range(0, len(cells), batch_size))
    steps = ((b, j) for b in batches for j in range(P))
    if progress is not None:
        steps = progress(steps, description=f"in-silico {mode} ({P} genes)", total=len(batches) * P)
    cur, base, pos_b = None, None, None
    for start, j in steps:
        if cur != start:  # baseline once per batch, reused for every perturbation
            batch = adapter.tokenize(adata, cells[start : start + batch_size], counts=counts)
            batch = batch.to(adapter.device)
            if reader is None:
                if readout == "auto":
                    probe = adapter.forward(_take_rows(batch, np.arange(min(1, len(batch)))))
                    readout = "expression" if probe.gene_predictions is not None else "embedding"
                reader = _Reader(adapter, readout, embedding_layer)
            base = reader(batch)
            pos_b = _positions(batch, G)
            cur = start
        rows = np.arange(len(batch))
        if mode == "delete":
            rows = np.flatnonzero(pos_b[:, pos_of[j]] >= 0)
            if rows.size == 0:
                continue
        sub = batch if rows.size == len(batch) else _take_rows(batch, rows)
        pert = adapter.perturb(sub, int(pos_of[j]), mode=mode)
        s, c = _shift(
            base[rows], reader(pert), pos_b[rows], _positions(pert, G), readout == "expression"
        )
        sums[j] += s
        counts_g[j] += c
        n_cells[j] += rows.size
    if reader is None:
        readout = "expression" if readout == "auto" else readout
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts_g > 0, sums / np.maximum(counts_g, 1), np.nan)
    out = pd.DataFrame(
        {
            "perturbation": np.repeat(np.asarray(perts, dtype=object), G),
            "gene": np.tile(np.asarray(var, dtype=object), P),
            "predicted_shift": mean.ravel(),
            "n_cells": np.repeat(n_cells, G),
            "n_cells_gene": counts_g.ravel(),
        }
    )
    out.attrs.update(
        mode=mode,
        readout=readout,
        signed=readout == "expression",
        embedding_layer=None if reader is None else reader.embedding_layer,
        model=getattr(adapter, "name", None),
        n_cells_total=len(cells),
        batch_size=int(batch_size),
    )
    return out


# -------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class CrossScores:
    """Every statistic for every (predicted j, observed k) pair of perturbations of one
    arm. ``units``: one row per perturbation (``arm``, ``perturbation``, ``n_genes`` genes
    compared on the diagonal, ``n_responders``); ``matrices[name]`` (n, n): row j the
    predicted profile of unit j, column k the observed profile of unit k, NaN across arms
    and where a statistic is undefined; ``signed`` whether the readout has a sign."""

    units: pd.DataFrame
    matrices: dict[str, np.ndarray]
    signed: bool

    @property
    def arms(self) -> np.ndarray:
        return self.units["arm"].to_numpy()

    def diagonal(self, name: str) -> np.ndarray:
        return np.diag(self.matrices[name]).copy()

    def off_diagonal_mean(self, name: str) -> np.ndarray:
        """Per row j: mean of the statistic over the other perturbations of its arm
        (what the prediction of j scores against profiles it was not made for)."""
        M = self.matrices[name].copy()
        np.fill_diagonal(M, np.nan)
        with np.errstate(invalid="ignore"), _quiet():
            return np.nanmean(M, axis=1)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's "mean of empty slice" warnings (NaN is the intended answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _row_ranks(X: np.ndarray) -> np.ndarray:
    """Average ranks along rows, NaN kept as NaN (and not ranked)."""
    from scipy.stats import rankdata

    return rankdata(X, axis=1, nan_policy="omit")


def _row_pearson(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pearson correlation per row over the entries finite in both (NaN elsewhere);
    NaN for rows with fewer than 3 entries or no variance."""
    ok = np.isfinite(X) & np.isfinite(Y)
    n = ok.sum(1)
    X, Y = np.where(ok, X, 0.0), np.where(ok, Y, 0.0)
    nn = np.maximum(n, 1)
    xm = X - (X.sum(1) / nn)[:, None]
    ym = Y - (Y.sum(1) / nn)[:, None]
    xm, ym = np.where(ok, xm, 0.0), np.where(ok, ym, 0.0)
    sxy = (xm * ym).sum(1)
    sxx, syy = (xm * xm).sum(1), (ym * ym).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    r[(n < 3) | ~(sxx > 0) | ~(syy > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _arm_matrices(P, Obs, R, gene_pos, signed):
    """The (n, n) statistic matrices of one arm (see :func:`cross_scores`)."""
    n, G = P.shape
    S = np.full((n, n), np.nan)
    A = np.full((n, n), np.nan)
    Z = np.full((n, n), np.nan)
    n_genes = np.zeros(n, dtype=np.int64)
    Oy = Obs if signed else np.abs(Obs)
    finite_o = np.isfinite(Obs)
    excl = np.zeros((n, G), dtype=bool)  # column k's own target
    has = gene_pos >= 0
    excl[np.flatnonzero(has), gene_pos[has]] = True
    for j in range(n):
        m = finite_o & np.isfinite(P[j])[None, :] & ~excl
        if gene_pos[j] >= 0:
            m[:, gene_pos[j]] = False  # row j's own target
        n_genes[j] = m[j].sum()
        X = np.where(m, P[j][None, :], np.nan)
        S[j] = _row_pearson(_row_ranks(X), _row_ranks(np.where(m, Oy, np.nan)))
        # AUROC of |predicted| for the responders of k (Mann–Whitney from mid-ranks)
        lab = R & m
        n1 = lab.sum(1)
        n0 = m.sum(1) - n1
        rk = _row_ranks(np.abs(X))
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.where(lab, rk, 0.0).sum(1) - n1 * (n1 + 1) / 2.0
            A[j] = np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)
        if signed:
            pj = np.sign(P[j])[None, :]
            use = lab & (pj != 0)
            k_use = use.sum(1)
            agree = (use & (pj == np.sign(Obs))).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                Z[j] = np.where(k_use > 0, agree / np.maximum(k_use, 1), np.nan)
    return {"spearman": S, "sign_agreement": Z, "auroc": A}, n_genes


def _dense(df: pd.DataFrame, rows: pd.Index, cols: pd.Index, value: str) -> np.ndarray:
    """(len(rows), len(cols)) matrix of ``value`` from a long table (NaN where absent)."""
    out = np.full((len(rows), len(cols)), np.nan)
    r = rows.get_indexer(df["perturbation"].astype(str))
    c = cols.get_indexer(df["gene"].astype(str))
    ok = (r >= 0) & (c >= 0)
    out[r[ok], c[ok]] = df[value].to_numpy(dtype=float)[ok]
    return out


def cross_scores(predicted: pd.DataFrame, observed: pd.DataFrame, *, signed: bool) -> CrossScores:
    """Spearman, sign agreement and AUROC for every (predicted j, observed k) pair of
    perturbations within each arm.

    Inputs: ``predicted`` long (``arm``, ``perturbation``, ``gene``, ``predicted_shift``);
    ``observed`` long DE (``arm``, ``perturbation``, ``gene``, ``log2fc``, ``responder``), as
    :func:`~scfm_audit.evaluate._de.responder_labels` returns; ``signed``: whether the
    predicted shift has a sign (expression readout) or not (embedding shift).

    Per pair, over the genes with a finite prediction of j and a finite log2fc of k, the
    perturbed genes of j and of k excluded:

    * ``spearman``: Spearman(predicted_j, log2fc_k) (unsigned: against |log2fc_k|);
    * ``sign_agreement``: among k's responders with a non-zero prediction, the fraction
      where sign(predicted_j) = sign(log2fc_k); NaN for unsigned readouts;
    * ``auroc``: AUROC of |predicted_j| for k's responders against its other genes.

    Units are the perturbations present in both tables with at least one finite
    prediction; entries across arms are NaN.
    """
    need_p = {"arm", "perturbation", "gene", "predicted_shift"}
    need_o = {"arm", "perturbation", "gene", "log2fc", "responder"}
    for name, df, need in (("predicted", predicted, need_p), ("observed", observed, need_o)):
        miss = need - set(df.columns)
        if miss:
            raise ValueError(f"{name} lacks columns {sorted(miss)}; it needs {sorted(need)}")
    units_rows, blocks = [], []
    genes = pd.Index(pd.unique(observed["gene"].astype(str)))
    for arm in sorted(set(predicted["arm"].astype(str)) & set(observed["arm"].astype(str))):
        pr = predicted[predicted["arm"].astype(str) == arm]
        ob = observed[observed["arm"].astype(str) == arm]
        pert_names = pd.Index(pd.unique(pr["perturbation"].astype(str)))
        P = _dense(pr, pert_names, genes, "predicted_shift")
        keep = np.isfinite(P).any(axis=1) & pert_names.isin(ob["perturbation"].astype(str))
        perts = list(pert_names[keep])
        if not perts:
            continue
        P = P[keep]
        idx = pd.Index(perts)
        Obs = _dense(ob, idx, genes, "log2fc")
        R = _dense(ob.assign(responder=ob["responder"].astype(float)), idx, genes, "responder")
        R = np.nan_to_num(R) > 0
        gene_pos = genes.get_indexer(idx)
        mats, n_genes = _arm_matrices(P, Obs, R, gene_pos, signed)
        blocks.append(mats)
        own = np.zeros_like(R)
        own[np.flatnonzero(gene_pos >= 0), gene_pos[gene_pos >= 0]] = True
        units_rows.append(
            pd.DataFrame(
                {
                    "arm": arm,
                    "perturbation": perts,
                    "n_genes": n_genes,
                    "n_responders": (R & ~own).sum(1),
                }
            )
        )
    units = (
        pd.concat(units_rows, ignore_index=True)
        if units_rows
        else pd.DataFrame(columns=["arm", "perturbation", "n_genes", "n_responders"])
    )
    n = len(units)
    mats = {k: np.full((n, n), np.nan) for k in CROSS_STATISTICS}
    at = 0
    for b in blocks:
        m = len(b["spearman"])
        for k in CROSS_STATISTICS:
            mats[k][at : at + m, at : at + m] = b[k]
        at += m
    return CrossScores(units=units, matrices=mats, signed=signed)


@dataclass(frozen=True)
class InSilicoTest:
    """The shuffled-perturbation-label test of one statistic.

    ``statistic``: mean over perturbations of the matched (diagonal) statistic;
    ``null_mean``: its mean over the permutation draws; ``effect``: the perturbation
    specificity, mean matched − mean mismatched (off-diagonal, same arm) statistic, 0
    under H0, with a percentile bootstrap CI over perturbations (``ci_low``,
    ``ci_high``) and the CI of the statistic itself (``stat_ci_low``, ``stat_ci_high``);
    ``p`` two-sided adaptive Monte-Carlo p (``p_floor``, ``n_draws``); ``n`` perturbations
    with a defined matched statistic; ``null`` the draws."""

    statistic: float
    null_mean: float
    effect: float
    ci_low: float
    ci_high: float
    stat_ci_low: float
    stat_ci_high: float
    p: float
    p_floor: float
    n_draws: int
    n: int
    null: np.ndarray


def _specificity(M: np.ndarray, idx: np.ndarray, arms: np.ndarray) -> tuple[float, float]:
    """(mean matched, mean matched − mean mismatched within arm) over units ``idx``
    (with repeats: pairs of a unit with itself count as matched only)."""
    sub = M[np.ix_(idx, idx)]
    same_unit = idx[:, None] == idx[None, :]
    same_arm = arms[idx][:, None] == arms[idx][None, :]
    d = M[idx, idx]
    off = sub[same_arm & ~same_unit]
    with _quiet():
        dm = float(np.nanmean(d)) if np.isfinite(d).any() else np.nan
        om = float(np.nanmean(off)) if np.isfinite(off).any() else np.nan
    return dm, dm - om


def in_silico_test(
    M: np.ndarray,
    arms: np.ndarray,
    *,
    stages: Sequence[int] = (999, 9_999),
    n_boot: int = 1000,
    seed: int | Sequence[int] = 0,
    min_units: int = 3,
) -> InSilicoTest:
    """Shuffled-perturbation-label test on a cross matrix ``M`` (n × n, see
    :func:`cross_scores`) with the units' ``arms``.

    H0: the prediction made for perturbation j is no more like j's observed profile than
    like the profile of another perturbation of the same arm (the pairing of predicted and
    observed profiles is exchangeable). Statistic: mean over units of M[j, j]; null draws:
    mean of M[j, π(j)] for random within-arm permutations π
    (:func:`~scfm_audit.stats.permute_within_classes`), p two-sided and adaptive
    (:func:`~scfm_audit.stats.adaptive_mc_pvalue`). Effect and CIs: see
    :class:`InSilicoTest`; the bootstrap resamples perturbations within arms.
    """
    from scfm_audit.stats._montecarlo import adaptive_mc_pvalue, permute_within_classes

    M = np.asarray(M, dtype=float)
    arms = np.asarray(arms)
    n = M.shape[0]
    nan = float("nan")
    d = np.diag(M)
    n_def = int(np.isfinite(d).sum())
    if n < min_units or n_def < min_units:
        return InSilicoTest(nan, nan, nan, nan, nan, nan, nan, nan, nan, 0, n_def, np.empty(0))
    rows = np.arange(n)
    with _quiet():
        observed = float(np.nanmean(d))

    def draw(k: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(k)
        for s in range(0, k, 2000):
            perms = permute_within_classes(arms, min(2000, k - s), rng)
            with _quiet():
                out[s : s + len(perms)] = np.nanmean(M[rows[None, :], perms], axis=1)
        return out

    ss = np.random.SeedSequence(np.atleast_1d(np.asarray(seed, dtype=np.int64)).tolist())
    s_test, s_boot = ss.spawn(2)
    mc = adaptive_mc_pvalue(
        draw,
        observed,
        stages=stages,
        alternative="two-sided",
        seed=np.random.default_rng(s_test),
    )
    stat, eff = _specificity(M, rows, arms)
    rng = np.random.default_rng(s_boot)
    groups = [np.flatnonzero(arms == a) for a in pd.unique(arms)]
    boots = np.empty((n_boot, 2))
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
        boots[b] = _specificity(M, idx, arms)
    with _quiet():
        lo_s, hi_s = np.nanquantile(boots[:, 0], [0.025, 0.975]) if n_boot else (nan, nan)
        lo_e, hi_e = np.nanquantile(boots[:, 1], [0.025, 0.975]) if n_boot else (nan, nan)
    return InSilicoTest(
        statistic=stat,
        null_mean=float(np.nanmean(mc.null)) if mc.null.size else nan,
        effect=eff,
        ci_low=float(lo_e),
        ci_high=float(hi_e),
        stat_ci_low=float(lo_s),
        stat_ci_high=float(hi_s),
        p=float(mc.p),
        p_floor=float(mc.p_floor),
        n_draws=int(mc.n_draws),
        n=n_def,
        null=mc.null,
    )


def compare_in_silico(
    predicted: pd.DataFrame,
    observed: pd.DataFrame,
    *,
    signed: bool,
    stages: Sequence[int] = (999, 9_999),
    n_boot: int = 1000,
    seed: int | Sequence[int] = 0,
) -> tuple[pd.DataFrame, dict[str, InSilicoTest], CrossScores]:
    """Predicted in-silico shifts against observed effects, per perturbation and overall.

    Inputs: as :func:`cross_scores` (``predicted`` may carry ``n_cells``), plus the
    Monte-Carlo ``stages``, ``n_boot`` and ``seed`` of :func:`in_silico_test`.

    Output: (per-perturbation table — ``arm, perturbation, n_genes, n_responders,
    n_cells`` and per statistic its matched value and ``<stat>_mismatched`` the mean over
    the arm's other observed profiles —, {statistic: :class:`InSilicoTest`} for every
    statistic defined for this readout (sign agreement only when ``signed``), the
    :class:`CrossScores`).
    """
    cs = cross_scores(predicted, observed, signed=signed)
    table = cs.units.copy()
    if "n_cells" in predicted.columns and len(table):
        nc = predicted.groupby(["arm", "perturbation"], observed=True)["n_cells"].max()
        table["n_cells"] = [
            int(nc.get((a, p), 0)) for a, p in zip(table["arm"], table["perturbation"])
        ]
    stats = [s for s in CROSS_STATISTICS if signed or s != "sign_agreement"]
    for s in CROSS_STATISTICS:
        table[s] = cs.diagonal(s)
        table[f"{s}_mismatched"] = cs.off_diagonal_mean(s)
    tests = {}
    for i, s in enumerate(stats):
        sd = np.random.SeedSequence(np.atleast_1d(np.asarray(seed, dtype=np.int64)).tolist())
        tests[s] = in_silico_test(
            cs.matrices[s],
            cs.arms,
            stages=stages,
            n_boot=n_boot,
            seed=[int(x) for x in sd.spawn(len(stats))[i].generate_state(2)],
        )
    return table, tests, cs
