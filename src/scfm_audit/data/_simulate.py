"""Synthetic Perturb-seq with planted ground truth: the built-in benchmark.

The simulator draws a gene-regulatory network, protein-complex modules, cell states,
donors and a pooled CRISPR screen, then samples UMI counts. Everything the later
analyses must recover (which TF regulates which gene, with what sign, in which cell
state; which genes respond to which perturbation, by how much) is returned beside the
counts, so that recovery can be checked exactly.

Generative model (natural-log scale; ``T`` TFs, ``G`` genes, ``S`` states)
-----------------------------------------------------------------------
Structure (drawn once):

* ``b_g ~ N(0, expression_sd²)``: baseline log-expression of gene ``g``.
* TFs are split into ``n_tiers`` tiers. A tier-``k`` TF regulates ``~Poisson(targets_per_tf)``
  (at least one) genes drawn without replacement from the non-TF genes and the TFs of tiers
  ``> k`` (so the network is a DAG), with probability ``∝ exp(2.5 · gene_level_predictability
  · z(b_g))``: at 0 targets are uniform, at 1 they are strongly enriched among highly
  expressed genes, so that gene-level statistics alone predict responders.
* Edge effect ``w_rg = ±U(0.3, 0.9) · regulation_strength`` (``−`` with probability
  ``frac_repression``). A fraction ``state_specificity`` of edges is active in only a random
  non-empty proper subset of states; an inactive edge contributes nothing in that state.
* ``n_modules`` disjoint modules of ``module_size`` genes share a latent factor (PPI-like
  complexes; every member pair is an undirected ``ppi`` edge).
* State programs ``P_sg ~ N(0, state_program_strength²)`` on a random fraction
  ``state_program_genes`` of genes (0 elsewhere); donor effects ``D_dg ~ N(0, batch_strength²)``;
  state proportions ``π ~ Dirichlet(state_balance)`` (or given explicitly).

Per cell ``i`` in state ``s``, donor ``d``, perturbed gene ``j`` (controls: none):

* Exogenous input ``u_ig = σ_g ε_ig + module_strength · f_{i,m(g)} + a_i [g = j]`` with
  ``σ_g = tf_noise_sd`` for TFs (so their targets co-vary with them) and ``gene_noise_sd``
  otherwise, ``ε, f ~ N(0, 1)``, and the perturbation shift ``a_i = log(1 − knockdown)``
  (CRISPRi) or ``log(activation)`` (CRISPRa).
* Deviation propagated through the active edges of state ``s``, tier by tier:
  ``δ_i = u_i + δ_i W_s`` (exact solution of the DAG, ``δ = u (I − W_s)⁻¹``), so a perturbed
  TF moves its descendants while a perturbed non-TF moves only itself.
* ``log μ_ig = b_g + P_sg + D_dg + δ_ig``; expression fractions ``p_i = softmax(log μ_i)``;
  counts ``x_ig ~ NegBin(mean = L_i p_ig, var = m + dispersion · m²)`` with library size
  ``L_i ~ mean_library_size · LogNormal(−σ²/2, σ = library_size_sd)``; finally every non-zero
  count is set to zero with probability ``dropout`` (technical zero-inflation).

Ground truth: ``true_effects.log2fc`` is the state-averaged (weights ``π``) shift of a gene's
log-mean caused by the perturbation, ``Σ_s π_s [a e_j (I − W_s)⁻¹]_g / ln 2``; observed
fold changes additionally carry the (small) library-composition factor of the softmax.
Genes absent from ``true_effects`` for a perturbation have expected effect 0.

Cells are generated in chunks from one ``numpy.random.Generator(seed)``: identical
``(params, chunk_size)`` give bitwise identical data; with ``out_path`` the chunks are
streamed into an ``.h5ad`` on disk and the result is opened backed, so memory is bounded by
one chunk (about ``24 · chunk_size · n_genes`` bytes) whatever the number of cells: 300,000
cells × 8,000 genes stream with a peak RSS of 3.7 GiB at the default ``chunk_size=20000``.
"""

from __future__ import annotations

import difflib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import sparse

from scfm_audit._io import atomic_path, atomic_write_text
from scfm_audit.data._network import ReferenceNetwork

__all__ = ["SimulatedBenchmark", "SimulationParams", "simulate_perturbseq", "write_benchmark"]

CONTROL_LABEL = "non-targeting"
_PREDICTABILITY_SCALE = 2.5  # exp(2.5 z) at predictability 1: strong enrichment
_EFFECT_RANGE = (0.3, 0.9)  # |w| before regulation_strength


class SimulationParams(BaseModel):
    """Knobs of the synthetic Perturb-seq benchmark (see the module docstring for the model).

    The defaults give 3,000 cells × 400 genes in about a second. All fields are validated;
    impossible combinations raise ``ValueError`` saying which parameter to change.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- size and screen design -------------------------------------------------------------
    n_cells: int = Field(3000, ge=2, description="Total number of cells.")
    n_genes: int = Field(400, ge=2, description="Number of genes (TFs included).")
    n_tfs: int = Field(40, ge=1, description="Number of transcription factors (regulators).")
    n_perturbations: int = Field(
        30, ge=1, description="Distinct perturbed genes (per modality arm)."
    )
    frac_tf_perturbations: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Fraction of perturbed genes that are TFs (capped at n_tfs; rest non-TFs).",
    )
    control_fraction: float = Field(
        0.3, gt=0, lt=1, description="Fraction of non-targeting control cells in each arm."
    )
    modality: Literal["CRISPRi", "CRISPRa", "both"] = Field(
        "CRISPRi",
        description="Screen type; 'both' splits cells into a CRISPRi and a CRISPRa arm, "
        "each with its own controls and all perturbed genes.",
    )
    knockdown: float = Field(
        0.85, ge=0, lt=1, description="CRISPRi: target mean reduced to (1 - knockdown)."
    )
    activation: float = Field(4.0, ge=1, description="CRISPRa: fold increase of the target mean.")
    # -- regulatory network -----------------------------------------------------------------
    regulation_strength: float = Field(
        1.0, ge=0, description="Scales every TF→target effect; 0 = null simulation."
    )
    targets_per_tf: float = Field(8.0, gt=0, description="Mean out-degree of a TF.")
    n_tiers: int = Field(3, ge=1, description="Depth of the TF hierarchy (DAG tiers).")
    frac_repression: float = Field(0.3, ge=0, le=1, description="Fraction of repressive edges.")
    gene_level_predictability: float = Field(
        0.5,
        ge=0,
        le=1,
        description="0: targets uniform over genes; 1: strongly enriched among highly "
        "expressed genes (gene-level statistics then predict responders).",
    )
    tf_noise_sd: float = Field(
        0.7, ge=0, description="Per-cell latent activity noise of TFs (log scale)."
    )
    gene_noise_sd: float = Field(
        0.15, ge=0, description="Per-cell biological noise of non-TF genes (log scale)."
    )
    # -- modules (PPI-like complexes) -------------------------------------------------------
    n_modules: int = Field(10, ge=0, description="Number of co-regulated modules.")
    module_size: int = Field(6, ge=2, description="Genes per module.")
    module_strength: float = Field(
        0.4, ge=0, description="SD of the shared module factor (log scale)."
    )
    # -- cell states ------------------------------------------------------------------------
    n_states: int = Field(4, ge=1, description="Number of cell states.")
    state_balance: float | list[float] = Field(
        10.0,
        description="Dirichlet concentration for state proportions (small = unbalanced, "
        "heterogeneous) or explicit proportions, one per state.",
    )
    state_specificity: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Fraction of TF edges active in only a subset of states (needs n_states ≥ 2).",
    )
    state_program_strength: float = Field(
        1.0, ge=0, description="SD of state-specific baseline shifts (log scale)."
    )
    state_program_genes: float = Field(
        0.2, ge=0, le=1, description="Fraction of genes shifted by each state program."
    )
    # -- donors, technical noise ------------------------------------------------------------
    n_donors: int = Field(3, ge=1, description="Number of donors / batches.")
    batch_strength: float = Field(0.1, ge=0, description="SD of per-donor gene shifts.")
    expression_sd: float = Field(1.2, gt=0, description="SD of baseline log-expression.")
    mean_library_size: float = Field(3000.0, gt=0, description="Mean UMIs per cell.")
    library_size_sd: float = Field(0.3, ge=0, description="Log-normal SD of library sizes.")
    dispersion: float = Field(
        0.2, ge=0, description="Negative binomial φ (var = μ + φμ²); 0 = Poisson."
    )
    dropout: float = Field(
        0.1, ge=0, lt=1, description="Probability a non-zero count is zeroed (technical)."
    )
    seed: int = Field(0, ge=0, description="Seed of the single numpy Generator.")

    @model_validator(mode="after")
    def _check_consistency(self) -> SimulationParams:
        if self.n_tfs >= self.n_genes:
            raise ValueError(
                f"n_tfs={self.n_tfs} must be smaller than n_genes={self.n_genes}: "
                "lower n_tfs or raise n_genes."
            )
        if self.n_tiers > self.n_tfs:
            raise ValueError(
                f"n_tiers={self.n_tiers} exceeds n_tfs={self.n_tfs}: every tier needs a TF; "
                "lower n_tiers."
            )
        if self.n_perturbations > self.n_genes:
            raise ValueError(
                f"n_perturbations={self.n_perturbations} exceeds n_genes={self.n_genes}; "
                "lower n_perturbations."
            )
        if self.n_modules * self.module_size > self.n_genes:
            raise ValueError(
                f"n_modules × module_size = {self.n_modules * self.module_size} exceeds "
                f"n_genes={self.n_genes} (modules are disjoint); lower n_modules or module_size."
            )
        if isinstance(self.state_balance, list):
            if len(self.state_balance) != self.n_states:
                raise ValueError(
                    f"state_balance has {len(self.state_balance)} proportions but "
                    f"n_states={self.n_states}; give one per state or a single concentration."
                )
            if any(p < 0 for p in self.state_balance) or sum(self.state_balance) <= 0:
                raise ValueError(
                    "state_balance proportions must be non-negative with a positive sum."
                )
        elif self.state_balance <= 0:
            raise ValueError(
                f"state_balance={self.state_balance} must be a positive Dirichlet concentration "
                "(e.g. 10 for balanced states, 0.5 for unbalanced)."
            )
        n_arm = self.n_cells // (2 if self.modality == "both" else 1)
        n_perturbed = n_arm - round(self.control_fraction * n_arm)
        if n_perturbed < self.n_perturbations or round(self.control_fraction * n_arm) < 1:
            raise ValueError(
                f"{n_arm} cells per modality arm cannot hold ≥1 control and ≥1 cell for each "
                f"of {self.n_perturbations} perturbations at control_fraction="
                f"{self.control_fraction}; raise n_cells or lower n_perturbations."
            )
        return self

    @property
    def modalities(self) -> list[str]:
        """Modality of each arm, in order."""
        return ["CRISPRi", "CRISPRa"] if self.modality == "both" else [self.modality]

    @property
    def cells_per_perturbation(self) -> float:
        """Average number of cells per perturbation (per modality arm)."""
        n_arm = self.n_cells / len(self.modalities)
        return (n_arm - round(self.control_fraction * n_arm)) / self.n_perturbations


@dataclass
class SimulatedBenchmark:
    """A simulated Perturb-seq data set and the ground truth that generated it.

    Attributes
    ----------
    adata
        Raw counts (CSR float32, integer-valued) with ``var`` columns ``ensembl_id``,
        ``is_tf``, ``base_mean`` (expected count of a control cell at the mean library size),
        ``tf_tier`` (-1 for non-TFs), ``module`` (-1 if none) and ``obs`` columns
        ``perturbation`` (target symbol or ``non-targeting``), ``modality``, ``cell_state``,
        ``donor``, ``n_counts``; ``uns["simulation"]`` holds the parameters. Opened backed
        (read-only) when simulated with ``out_path``.
    grn
        Directed planted TF→target edges (``sign`` ±1, ``weight`` = |effect|), "sim_grn".
    ppi
        Undirected module edges, "sim_ppi".
    state_edges
        One row per (GRN edge, state): ``source, target, state, active``.
    true_effects
        ``perturbation, modality, gene, log2fc, relation`` (``self``/``direct``/``indirect``):
        expected log2 fold change versus control, state-averaged; absent genes have 0.
    params
        The :class:`SimulationParams` used.
    """

    adata: ad.AnnData
    grn: ReferenceNetwork
    ppi: ReferenceNetwork
    state_edges: pd.DataFrame
    true_effects: pd.DataFrame
    params: SimulationParams


# -- structure -------------------------------------------------------------------------------
@dataclass
class _Truth:
    gene_names: np.ndarray
    baseline: np.ndarray  # (G,)
    tier: np.ndarray  # (G,), -1 for non-TFs
    module: np.ndarray  # (G,), -1 if none
    edge_src: np.ndarray
    edge_tgt: np.ndarray
    edge_w: np.ndarray  # signed effect (0 when regulation_strength = 0)
    edge_sign: np.ndarray  # ±1, kept even in the null simulation
    edge_active: np.ndarray  # (E, S) bool
    programs: np.ndarray  # (S, G)
    donor_effects: np.ndarray  # (D, G)
    state_props: np.ndarray  # (S,)
    weights_by_state: list[sparse.csr_matrix]  # (T, G) per state, active edges only
    perturbed: np.ndarray  # gene indices of perturbed genes


def _gene_names(n_genes: int, n_tfs: int) -> np.ndarray:
    wt = max(3, len(str(n_tfs)))
    wg = max(4, len(str(n_genes - n_tfs)))
    tfs = [f"TF{i:0{wt}d}" for i in range(1, n_tfs + 1)]
    others = [f"G{i:0{wg}d}" for i in range(1, n_genes - n_tfs + 1)]
    return np.array(tfs + others, dtype=object)


def _draw_structure(p: SimulationParams, rng: np.random.Generator) -> _Truth:
    G, T, S = p.n_genes, p.n_tfs, p.n_states
    baseline = rng.normal(0.0, p.expression_sd, G)
    z = (baseline - baseline.mean()) / (baseline.std() + 1e-12)
    target_weight = np.exp(_PREDICTABILITY_SCALE * p.gene_level_predictability * z)

    tier = np.full(G, -1, dtype=np.int64)
    tier[:T] = rng.permutation(np.arange(T) * p.n_tiers // T)

    src: list[np.ndarray] = []
    tgt: list[np.ndarray] = []
    n_targets = np.maximum(1, rng.poisson(p.targets_per_tf, T))
    for r in range(T):
        cand = np.flatnonzero((tier == -1) | (tier > tier[r]))
        k = min(int(n_targets[r]), cand.size)
        w = target_weight[cand]
        chosen = np.sort(rng.choice(cand, size=k, replace=False, p=w / w.sum()))
        src.append(np.full(k, r))
        tgt.append(chosen)
    edge_src = np.concatenate(src)
    edge_tgt = np.concatenate(tgt)
    E = edge_src.size
    sign = np.where(rng.random(E) < p.frac_repression, -1.0, 1.0)
    edge_w = sign * rng.uniform(*_EFFECT_RANGE, E) * p.regulation_strength

    # state-specific edges: active in a random non-empty proper subset of states
    edge_active = np.ones((E, S), dtype=bool)
    specific = rng.random(E) < p.state_specificity
    if S >= 2:
        k_active = rng.integers(1, S, E)  # 1..S-1 active states
        order = np.argsort(rng.random((E, S)), axis=1)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(S)[None, :].repeat(E, 0), axis=1)
        sub = rank < k_active[:, None]
        edge_active[specific] = sub[specific]

    module = np.full(G, -1, dtype=np.int64)
    if p.n_modules:
        members = rng.choice(G, size=p.n_modules * p.module_size, replace=False)
        module[members] = np.repeat(np.arange(p.n_modules), p.module_size)

    mask = rng.random((S, G)) < p.state_program_genes
    programs = mask * rng.normal(0.0, p.state_program_strength, (S, G))
    donor_effects = rng.normal(0.0, p.batch_strength, (p.n_donors, G))
    if isinstance(p.state_balance, list):
        props = np.asarray(p.state_balance, dtype=float)
        props = props / props.sum()
    else:
        props = rng.dirichlet(np.full(S, float(p.state_balance)))

    weights_by_state = [
        sparse.csr_matrix(
            (edge_w[edge_active[:, s]], (edge_src[edge_active[:, s]], edge_tgt[edge_active[:, s]])),
            shape=(T, G),
        )
        for s in range(S)
    ]

    n_tf_pert = min(round(p.frac_tf_perturbations * p.n_perturbations), T)
    n_other = p.n_perturbations - n_tf_pert
    if n_other > G - T:  # too few non-TFs: use more TFs
        n_tf_pert, n_other = p.n_perturbations - (G - T), G - T
    perturbed = np.concatenate(
        [
            np.sort(rng.choice(T, size=n_tf_pert, replace=False)),
            np.sort(rng.choice(np.arange(T, G), size=n_other, replace=False)),
        ]
    ).astype(np.int64)

    return _Truth(
        gene_names=_gene_names(G, T),
        baseline=baseline,
        tier=tier,
        module=module,
        edge_src=edge_src,
        edge_tgt=edge_tgt,
        edge_w=edge_w,
        edge_sign=sign.astype(np.int64),
        edge_active=edge_active,
        programs=programs,
        donor_effects=donor_effects,
        state_props=props,
        weights_by_state=weights_by_state,
        perturbed=perturbed,
    )


def _propagate(u: np.ndarray, w: sparse.csr_matrix, n_tiers: int) -> np.ndarray:
    """Solve ``δ = u + δ W`` on the DAG (``W``: TF rows × all genes), returning ``δ``.

    Only TFs have out-edges, so TF deviations are solved first by ``n_tiers`` fixed-point
    sweeps (exact: paths have at most ``n_tiers - 1`` TF→TF steps), then pushed to all genes.
    """
    T = w.shape[0]
    if w.nnz == 0:
        return u
    w_tt = w[:, :T]
    u_t = u[:, :T]
    d_t = u_t
    for _ in range(n_tiers - 1):
        d_t = u_t + np.asarray(d_t @ w_tt)
    return u + np.asarray(d_t @ w)


def _shift(modality: str, p: SimulationParams) -> float:
    return float(np.log1p(-p.knockdown) if modality == "CRISPRi" else np.log(p.activation))


def _true_effects(p: SimulationParams, t: _Truth) -> pd.DataFrame:
    G, P = p.n_genes, t.perturbed.size
    direct = set(zip(t.edge_src.tolist(), t.edge_tgt.tolist(), strict=True))
    frames = []
    for modality in p.modalities:
        u = np.zeros((P, G))
        u[np.arange(P), t.perturbed] = _shift(modality, p)
        deltas = [_propagate(u, t.weights_by_state[s], p.n_tiers) for s in range(p.n_states)]
        lfc = sum(pi * dl for pi, dl in zip(t.state_props, deltas, strict=True)) / np.log(2.0)
        any_effect = np.any([np.abs(dl) > 1e-12 for dl in deltas], axis=0)
        any_effect[np.arange(P), t.perturbed] = True
        rows, cols = np.nonzero(any_effect)
        pert_gene = t.perturbed[rows]
        relation = np.where(
            pert_gene == cols,
            "self",
            np.where(
                [(a, b) in direct for a, b in zip(pert_gene.tolist(), cols.tolist(), strict=True)],
                "direct",
                "indirect",
            ),
        )
        frames.append(
            pd.DataFrame(
                {
                    "perturbation": t.gene_names[pert_gene],
                    "modality": modality,
                    "gene": t.gene_names[cols],
                    "log2fc": lfc[rows, cols],
                    "relation": relation,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# -- cells -----------------------------------------------------------------------------------
@dataclass
class _Design:
    pert: np.ndarray  # gene index or -1
    arm: np.ndarray  # index into params.modalities
    state: np.ndarray
    donor: np.ndarray
    library: np.ndarray


def _draw_design(p: SimulationParams, t: _Truth, rng: np.random.Generator) -> _Design:
    n_arms = len(p.modalities)
    sizes = [p.n_cells // n_arms + (a < p.n_cells % n_arms) for a in range(n_arms)]
    pert, arm = [], []
    for a, n_arm in enumerate(sizes):
        n_ctrl = round(p.control_fraction * n_arm)
        labels = np.concatenate(
            [np.full(n_ctrl, -1), t.perturbed[np.arange(n_arm - n_ctrl) % t.perturbed.size]]
        )
        pert.append(labels)
        arm.append(np.full(n_arm, a))
    order = rng.permutation(p.n_cells)
    state = rng.choice(p.n_states, size=p.n_cells, p=t.state_props)
    donor = rng.integers(0, p.n_donors, p.n_cells)
    sd = p.library_size_sd
    library = p.mean_library_size * rng.lognormal(-0.5 * sd**2, sd, p.n_cells)
    return _Design(
        pert=np.concatenate(pert)[order],
        arm=np.concatenate(arm)[order],
        state=state,
        donor=donor,
        library=library,
    )


def _simulate_chunk(
    p: SimulationParams, t: _Truth, d: _Design, sl: slice, rng: np.random.Generator
) -> sparse.csr_matrix:
    """Counts of the cells in ``sl`` as CSR float32."""
    T = p.n_tfs
    n = sl.stop - sl.start
    sigma = np.full(p.n_genes, p.gene_noise_sd, dtype=np.float32)
    sigma[:T] = p.tf_noise_sd
    u = rng.standard_normal((n, p.n_genes), dtype=np.float32)
    u *= sigma
    if p.n_modules:
        f = rng.standard_normal((n, p.n_modules), dtype=np.float32)
        members = np.flatnonzero(t.module >= 0)
        u[:, members] += p.module_strength * f[:, t.module[members]]
    pert = d.pert[sl]
    arm = d.arm[sl]
    cells = np.flatnonzero(pert >= 0)
    shifts = np.array([_shift(m, p) for m in p.modalities], dtype=np.float32)
    u[cells, pert[cells]] += shifts[arm[cells]]

    state = d.state[sl]
    log_mu = np.empty_like(u)
    for s in range(p.n_states):
        idx = np.flatnonzero(state == s)
        if idx.size:
            w = t.weights_by_state[s].astype(np.float32)
            log_mu[idx] = _propagate(u[idx], w, p.n_tiers)
    del u
    log_mu += t.programs.astype(np.float32)[state]
    log_mu += t.donor_effects.astype(np.float32)[d.donor[sl]]
    log_mu += t.baseline.astype(np.float32)

    # softmax → expected counts
    log_mu -= log_mu.max(axis=1, keepdims=True)
    np.exp(log_mu, out=log_mu)
    log_mu *= (d.library[sl] / log_mu.sum(axis=1, dtype=np.float64)).astype(np.float32)[:, None]
    if p.dispersion > 0:
        shape = 1.0 / p.dispersion
        log_mu *= rng.standard_gamma(shape, log_mu.shape, dtype=np.float32) / np.float32(shape)
    counts = _dense_to_csr(rng.poisson(log_mu))
    del log_mu
    if p.dropout > 0:
        counts.data[rng.random(counts.nnz) < p.dropout] = 0
        counts.eliminate_zeros()
    return counts


def _dense_to_csr(x: np.ndarray) -> sparse.csr_matrix:
    """Dense integer counts → CSR float32 (several times faster than ``csr_matrix(x)``),
    ``indptr`` and ``indices`` of one dtype (int32 when the non-zeros fit)."""
    flat = np.flatnonzero(x)
    idx_dtype = _index_dtype(flat.size, x.shape[1])
    indptr = np.zeros(x.shape[0] + 1, dtype=idx_dtype)
    np.cumsum(np.count_nonzero(x, axis=1), out=indptr[1:])
    data = x.ravel()[flat].astype(np.float32)
    indices = (flat % x.shape[1]).astype(idx_dtype)
    return sparse.csr_matrix((data, indices, indptr), shape=x.shape)


def _index_dtype(nnz: int, n_cols: int) -> type:
    """int32 when ``nnz`` and ``n_cols`` fit in it, else int64 (for indptr *and* indices)."""
    return np.int32 if max(nnz, n_cols) < np.iinfo(np.int32).max else np.int64


def _set_dtype(grp, name: str, dtype) -> None:
    """Rewrite the dataset ``grp[name]`` with ``dtype`` (after a streamed write whose final
    size decides it), in slices so that memory stays bounded."""
    old = grp[name]
    if old.dtype == dtype:
        return
    tmp = grp.create_dataset(name + "__new", old.shape, dtype=dtype, chunks=old.chunks or True)
    step = 1 << 24
    for a in range(0, old.shape[0], step):
        tmp[a : a + step] = old[a : a + step].astype(dtype)
    del grp[name]
    grp.move(name + "__new", name)


# -- AnnData assembly ------------------------------------------------------------------------
def _var(p: SimulationParams, t: _Truth) -> pd.DataFrame:
    logits = t.baseline[None, :] + t.programs
    frac = np.exp(logits - logits.max(axis=1, keepdims=True))
    frac /= frac.sum(axis=1, keepdims=True)
    base_mean = p.mean_library_size * (t.state_props @ frac)
    return pd.DataFrame(
        {
            "ensembl_id": [f"ENSG9{i:010d}" for i in range(1, p.n_genes + 1)],
            "is_tf": t.tier >= 0,
            "base_mean": base_mean,
            "tf_tier": t.tier,
            "module": t.module,
        },
        index=pd.Index(t.gene_names.astype(str), name="gene"),
    )


def _obs(p: SimulationParams, t: _Truth, d: _Design, n_counts: np.ndarray) -> pd.DataFrame:
    width = len(str(p.n_cells))
    perturbed_names = [str(g) for g in t.gene_names[t.perturbed]]
    labels = np.where(d.pert >= 0, t.gene_names[np.maximum(d.pert, 0)], CONTROL_LABEL)
    return pd.DataFrame(
        {
            "perturbation": pd.Categorical(
                labels.astype(str), categories=[CONTROL_LABEL, *perturbed_names]
            ),
            "modality": pd.Categorical(
                np.asarray(p.modalities)[d.arm], categories=list(p.modalities)
            ),
            "cell_state": pd.Categorical(
                [f"state{s}" for s in d.state], categories=[f"state{s}" for s in range(p.n_states)]
            ),
            "donor": pd.Categorical(
                [f"donor{x}" for x in d.donor], categories=[f"donor{x}" for x in range(p.n_donors)]
            ),
            "n_counts": n_counts.astype(np.float64),
        },
        index=pd.Index([f"cell{i:0{width}d}" for i in range(p.n_cells)], name="cell"),
    )


def _uns(p: SimulationParams) -> dict[str, Any]:
    return {"simulation": json.loads(p.model_dump_json())}


def _stream_to_h5ad(
    path: Path,
    chunks: Any,
    *,
    obs_without_counts: pd.DataFrame,
    var: pd.DataFrame,
    uns: dict[str, Any],
) -> np.ndarray:
    """Write an AnnData skeleton, append CSR chunks to ``X`` on disk, then fill ``n_counts``."""
    ad.AnnData(obs=obs_without_counts, var=var, uns=uns).write_h5ad(path)
    n_counts: list[np.ndarray] = []
    with h5py.File(path, "a") as f:
        grp = f.create_group("X")
        grp.attrs["encoding-type"] = "csr_matrix"
        grp.attrs["encoding-version"] = "0.1.0"
        grp.attrs["shape"] = np.array([len(obs_without_counts), len(var)], dtype=np.int64)
        data = grp.create_dataset("data", (0,), dtype=np.float32, maxshape=(None,), chunks=True)
        indices = grp.create_dataset("indices", (0,), dtype=np.int32, maxshape=(None,), chunks=True)
        indptr = [np.zeros(1, dtype=np.int64)]
        nnz = 0
        for x in chunks:
            for h5_array, arr in ((data, x.data), (indices, x.indices)):
                h5_array.resize((nnz + x.nnz,))
                h5_array[nnz:] = arr
            indptr.append(x.indptr[1:].astype(np.int64) + nnz)
            nnz += x.nnz
            n_counts.append(np.asarray(x.sum(axis=1)).ravel())
        # one index dtype for indptr and indices (int32 when the nnz fit): anndata reads a
        # mixed pair as is, and scipy's kernels behind scanpy's rank_genes_groups refuse it
        idx_dtype = _index_dtype(nnz, len(var))
        _set_dtype(grp, "indices", idx_dtype)
        grp.create_dataset("indptr", data=np.concatenate(indptr).astype(idx_dtype))
        counts = np.concatenate(n_counts)
        obs = obs_without_counts.assign(n_counts=counts.astype(np.float64))
        del f["obs"]
        ad.io.write_elem(f, "obs", obs)
    return counts


def _check_overrides(overrides: dict[str, Any]) -> None:
    known = set(SimulationParams.model_fields)
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown simulation parameter {key!r}.{hint} "
                f"Valid parameters: {', '.join(sorted(known))}."
            )


def simulate_perturbseq(
    params: SimulationParams | None = None,
    /,
    *,
    out_path: str | Path | None = None,
    chunk_size: int = 20000,
    **overrides: Any,
) -> SimulatedBenchmark:
    """Simulate a Perturb-seq screen with a planted regulatory network.

    Parameters
    ----------
    params
        Simulation parameters (defaults when ``None``).
    out_path
        If given, stream the counts chunk by chunk into this ``.h5ad`` (written atomically)
        and return the AnnData opened backed read-only; memory then stays bounded by one
        chunk. Otherwise the AnnData is built in memory.
    chunk_size
        Cells generated per chunk. Results are deterministic for a given
        ``(params, chunk_size)``; changing the chunk size changes the random draws.
    **overrides
        Field values replacing those of ``params`` (e.g. ``n_cells=500``).

    Returns
    -------
    SimulatedBenchmark
        Counts plus the ground truth (GRN, PPI modules, state-specific edges, true effects).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer, e.g. 20000.")
    _check_overrides(overrides)
    try:
        if params is None:
            p = SimulationParams(**overrides)
        else:
            p = SimulationParams(**{**params.model_dump(), **overrides})
    except pydantic.ValidationError as exc:
        raise ValueError(f"Invalid simulation parameters: {exc}") from None

    rng = np.random.default_rng(p.seed)
    truth = _draw_structure(p, rng)
    design = _draw_design(p, truth, rng)
    var = _var(p, truth)
    uns = _uns(p)
    chunks = (
        _simulate_chunk(p, truth, design, slice(a, min(a + chunk_size, p.n_cells)), rng)
        for a in range(0, p.n_cells, chunk_size)
    )

    if out_path is None:
        X = sparse.vstack(list(chunks), format="csr", dtype=np.float32)
        n_counts = np.asarray(X.sum(axis=1)).ravel()
        adata = ad.AnnData(X=X, obs=_obs(p, truth, design, n_counts), var=var, uns=uns)
    else:
        out_path = Path(out_path)
        obs0 = _obs(p, truth, design, np.zeros(p.n_cells))
        with atomic_path(out_path) as tmp:
            _stream_to_h5ad(tmp, chunks, obs_without_counts=obs0, var=var, uns=uns)
        adata = ad.read_h5ad(out_path, backed="r")

    names = truth.gene_names.astype(str)
    grn = ReferenceNetwork(
        pd.DataFrame(
            {
                "source": names[truth.edge_src],
                "target": names[truth.edge_tgt],
                "weight": np.abs(truth.edge_w),
                "sign": truth.edge_sign,
                "evidence": "simulated",
            }
        ),
        name="sim_grn",
        directed=True,
        params={"seed": p.seed, "regulation_strength": p.regulation_strength},
    )
    return SimulatedBenchmark(
        adata=adata,
        grn=grn,
        ppi=_ppi(p, truth),
        state_edges=_state_edges(p, truth),
        true_effects=_true_effects(p, truth),
        params=p,
    )


def _ppi(p: SimulationParams, t: _Truth) -> ReferenceNetwork:
    names = t.gene_names.astype(str)
    rows = []
    for m in range(p.n_modules):
        members = np.flatnonzero(t.module == m)
        a, b = np.triu_indices(members.size, k=1)
        rows.append(
            pd.DataFrame(
                {
                    "source": names[members[a]],
                    "target": names[members[b]],
                    "weight": p.module_strength,
                    "sign": 0,
                    "evidence": f"module{m}",
                }
            )
        )
    edges = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["source", "target", "weight", "sign", "evidence"])
    )
    return ReferenceNetwork(edges, name="sim_ppi", directed=False, params={"seed": p.seed})


def _state_edges(p: SimulationParams, t: _Truth) -> pd.DataFrame:
    names = t.gene_names.astype(str)
    E, S = t.edge_active.shape
    return pd.DataFrame(
        {
            "source": np.repeat(names[t.edge_src], S),
            "target": np.repeat(names[t.edge_tgt], S),
            "state": np.tile([f"state{s}" for s in range(S)], E),
            "active": t.edge_active.ravel(),
        }
    )


def write_benchmark(bench: SimulatedBenchmark, out_dir: str | Path) -> dict[str, Path]:
    """Write a benchmark to ``out_dir``, every file atomically.

    Parameters
    ----------
    bench
        Output of :func:`simulate_perturbseq` (in memory or backed).
    out_dir
        Folder to write into (created if missing).

    Returns
    -------
    dict[str, Path]
        Paths keyed ``adata`` (``perturbseq.h5ad``), ``grn`` (``grn.tsv``), ``ppi``
        (``ppi.tsv``), ``true_effects`` (``true_effects.tsv``), ``state_edges``
        (``state_edges.tsv``) and ``params`` (``params.json``). The network TSVs are
        :meth:`ReferenceNetwork.to_tsv` tables.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "adata": out_dir / "perturbseq.h5ad",
        "grn": out_dir / "grn.tsv",
        "ppi": out_dir / "ppi.tsv",
        "true_effects": out_dir / "true_effects.tsv",
        "state_edges": out_dir / "state_edges.tsv",
        "params": out_dir / "params.json",
    }
    adata = bench.adata
    if adata.isbacked:
        src = Path(adata.filename).resolve()
        if src != paths["adata"].resolve():
            with atomic_path(paths["adata"]) as tmp:
                shutil.copyfile(src, tmp)
    else:
        with atomic_path(paths["adata"]) as tmp:
            adata.write_h5ad(tmp)
    bench.grn.to_tsv(paths["grn"])
    bench.ppi.to_tsv(paths["ppi"])
    atomic_write_text(paths["true_effects"], bench.true_effects.to_csv(sep="\t", index=False))
    atomic_write_text(paths["state_edges"], bench.state_edges.to_csv(sep="\t", index=False))
    atomic_write_text(paths["params"], bench.params.model_dump_json(indent=2) + "\n")
    return paths
