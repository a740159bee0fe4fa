"""The one claim path, as a specification: the family a claim's q comes from, the side of
an answer, and when a test is too weak to answer at all.

Known answers (the adversarial scenarios a reviewer would try):
(a) a hub whose attention row is high overall but whose true targets score below its
    other candidates: AUROC above 0.5, below the degree-permutation null's centre →
    ``opposite`` (read against 0.5 it would be "yes");
(b) skewed paired differences: many small wins one way, a few large the other way →
    the side of the signed-rank statistic, not of the mean;
(c) many tiny-p descriptive tests beside null claims → the claims' family-wise false
    "yes" rate stays at α; ``per_head`` on or off changes no other source's answer;
(d) a reference whose degree classes are all singletons (the null is a point mass) →
    ``n/a``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scfm_audit.data._network import ReferenceNetwork
from scfm_audit.edges._scores import EdgeScores
from scfm_audit.evaluate._recovery import candidate_pairs, edge_recovery, recovery_result
from scfm_audit.stats import (
    StatTestResult,
    TestRegistry,
    adaptive_mc_pvalue,
    answer_claims,
    answer_result,
    paired_wilcoxon,
)
from scfm_audit.stats._verdict import floor_q


def _claim_frame(p, *, floor=0.0, pg=np.nan, pl=np.nan, direction="two-sided", claimed="greater"):
    n = len(p)
    return pd.DataFrame(
        {
            "p": p,
            "p_floor": np.broadcast_to(floor, n),
            "p_greater": np.broadcast_to(pg, n),
            "p_less": np.broadcast_to(pl, n),
            "effect": 0.7,
            "null_value": 0.5,
            "direction": direction,
            "claimed": claimed,
            "reason": "",
        }
    )


# ------------------------------------------------------------------------ the family


def test_claims_are_corrected_among_claims_only():
    """Descriptive tests never enter a claim's q: 10 claims beside 400 descriptive tests
    of p = 0.9 keep the q BH gives the 10 alone."""
    reg = TestRegistry()
    claim_p = [0.004, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
    for i, p in enumerate(claim_p):
        reg.add(analysis="a", hypothesis=f"c{i}", test="t", null="H0", p=p, family="claim")
    for i in range(400):
        reg.add(analysis="b", hypothesis=f"d{i}", test="t", null="H0", p=0.9)
    df = reg.to_frame()
    claims = df[df["family"] == "claim"]
    assert claims["q"].iloc[0] == pytest.approx(0.04)  # 0.004 × 10 / 1
    assert claims["q_run"].iloc[0] > 0.05  # the run-wide family of the old rule: no "yes"
    desc = df[df["family"] == "descriptive"]
    assert np.allclose(desc["q"], 0.9)


def test_many_tiny_descriptive_p_do_not_inflate_false_claims():
    """(c) 10 claims without effect beside 200 descriptive tests with tiny p, 2,000
    replicates: P(at least one false "yes") is α (0.05) within binomial error; the
    run-wide family of the old rule gives about 0.4."""
    rng = np.random.default_rng(0)
    n_rep, any_yes, any_yes_old = 2000, 0, 0
    for _ in range(n_rep):
        p_claims = rng.random(10)
        desc = rng.random(200) * 1e-4
        claims = _claim_frame(p_claims, pg=p_claims / 2, pl=1 - p_claims / 2)
        any_yes += (answer_claims(claims, alpha=0.05)["answer"] == "yes").any()
        q_old = TestRegistry_q_run(np.r_[p_claims, desc])[:10]
        any_yes_old += (q_old < 0.05).any()
    rate = any_yes / n_rep
    se = np.sqrt(0.05 * 0.95 / n_rep)
    assert rate <= 0.05 + 3 * se, rate
    assert any_yes_old / n_rep > 0.3  # the defect this rule removes


def TestRegistry_q_run(p: np.ndarray) -> np.ndarray:
    from scfm_audit.stats import bh_fdr

    return bh_fdr(p)


# ----------------------------------------------------------------------- the side


def test_side_comes_from_the_tested_statistic_not_the_mean():
    """(b) at the kernel: 27 small wins of a, 3 large wins of b: the mean difference is
    negative, the signed-rank statistic says a; the answer follows the statistic."""
    rng = np.random.default_rng(1)
    d = np.r_[0.01 + rng.random(27) * 1e-3, -np.array([0.1, 0.12, 0.09])]
    res = paired_wilcoxon(d, np.zeros_like(d))
    assert d.mean() < 0 < res.effect and res.p < 0.01
    assert res.side == "greater" and res.p_greater < res.p_less
    assert answer_result(res, claimed="greater")[0] == "yes"
    assert answer_result(res, claimed="less")[0] == "opposite"


def hub_reversal(seed: int = 0) -> tuple[EdgeScores, ReferenceNetwork]:
    """A hub TF (g0, 30 targets) whose attention row is high overall while its true
    targets score lowest in it; 9 small TFs with flat rows."""
    rng = np.random.default_rng(seed)
    n = 120
    genes = pd.Index([f"g{i}" for i in range(n)])
    edges = [("g0", f"g{t}") for t in range(10, 40)]
    for k, s in enumerate(range(1, 10)):
        edges += [(f"g{s}", f"g{40 + 4 * k + j}") for j in range(4)]
    ref = ReferenceNetwork(pd.DataFrame(edges, columns=["source", "target"]), name="hubs")
    m = np.linspace(0.05, 0.55, n)[:, None] + rng.uniform(0, 1e-3, (n, n))
    m[0] = rng.uniform(0.75, 1.0, n)
    m[0, 10:40] = rng.uniform(0.6, 0.7, 30)
    np.fill_diagonal(m, np.nan)
    return EdgeScores(m, genes, method="hub_reversal"), ref


def test_hub_driven_reversal_reads_opposite():
    """(a) AUROC above 0.5 but below the degree-permutation null's own centre, with a
    small p: the scores rank the hub's targets *below* what its degree predicts."""
    es, ref = hub_reversal()
    r = edge_recovery(
        es,
        candidate_pairs(es.genes, ref),
        n_boot=50,
        n_perm=999,
        n_perm_max=9_999,
        transform="raw",
        seed=0,
    )
    res = recovery_result(r)
    assert 0.5 < res.effect < res.null_value
    assert res.p < 0.01 and res.side == "less"
    assert answer_result(res)[0] == "opposite"
    against_half = StatTestResult(
        res.effect, res.p, res.effect, res.n, "t", "AUROC", "AUROC", "two-sided", null_value=0.5
    )
    assert answer_result(against_half)[0] == "yes"  # the defect: the old rule's answer


# ---------------------------------------------------------------------- the floor


def singleton_reference() -> tuple[EdgeScores, ReferenceNetwork]:
    """A staircase: source s_k regulates t_1..t_k, so every source has its own
    out-degree and every target its own in-degree (all degree classes singletons)."""
    genes = pd.Index(
        [f"s{k}" for k in range(1, 6)]
        + [f"t{j}" for j in range(1, 6)]
        + [f"o{i}" for i in range(20)]
    )
    edges = [(f"s{k}", f"t{j}") for k in range(1, 6) for j in range(1, k + 1)]
    ref = ReferenceNetwork(pd.DataFrame(edges, columns=["source", "target"]), name="stairs")
    m = np.random.default_rng(0).random((len(genes), len(genes)))
    return EdgeScores(m, genes, method="random"), ref


def test_degenerate_null_is_not_assessable():
    """(d) every degree class is a singleton: each relabelling gives the observed AUROC,
    p = 1 and nothing smaller is attainable → n/a, not "no evidence"."""
    es, ref = singleton_reference()
    r = edge_recovery(es, candidate_pairs(es.genes, ref), n_boot=20, n_perm=99, seed=0)
    res = recovery_result(r)
    assert res.p == 1.0 and res.p_floor == 1.0
    answer, reason = answer_result(res)
    assert answer == "n/a" and "cannot reach significance" in reason


def test_atom_at_the_extreme_raises_the_floor():
    """A null with 5 distinct values: no p below the share of draws at its extreme."""
    mc = adaptive_mc_pvalue(
        lambda k, rng: rng.integers(0, 5, k).astype(float),
        4.0,
        stages=(999,),
        alternative="greater",
        seed=0,
    )
    share = np.mean(mc.null == 4.0)
    assert mc.p_floor == pytest.approx(share * 999 / 1000, rel=1e-9)
    assert mc.p >= mc.p_floor


def test_exact_floor_decides_n_a_from_the_family():
    """A test whose smallest attainable p (0.125: an exact test over 8 outcomes) cannot
    reach α answers n/a with the reason; the same p with floor 0 reads no evidence."""
    claims = _claim_frame([0.125, 0.5], floor=np.array([0.125, 0.0]), pg=np.nan)
    out = answer_claims(claims, alpha=0.05)
    assert out["answer"].tolist() == ["n/a", "no evidence"]
    assert "0.125" in out["reason"].iloc[0]
    # the floor is judged in the family: q at the floor, other claims as observed
    q = floor_q(np.array([0.01, 0.02, 0.03]), np.array([0.02, 0.0, 0.0]))
    assert q[0] == pytest.approx(0.03)


def test_one_sided_test_says_opposite_was_not_tested():
    res = StatTestResult(
        0.01, 0.4, 0.01, 50, "bootstrap", "dAUROC", "dAUROC", "greater", p_greater=0.4
    )
    answer, reason = answer_result(res)
    assert answer == "no evidence" and "opposite not tested" in reason
    sig = StatTestResult(
        0.01, 0.001, 0.01, 50, "bootstrap", "dAUROC", "dAUROC", "greater", p_greater=0.001
    )
    assert answer_result(sig)[0] == "yes"


# ------------------------------------------------------------------- through a run


def test_per_head_tests_change_no_answer(tmp_path, tiny_bench):
    """(c) in a run: turning ``per_head`` on adds descriptive tests (one per head and
    layer) and changes no claim's q or answer, the attention claim's included."""
    from conftest import tiny_config
    from scfm_audit.models import build_scgpt_checkpoint
    from scfm_audit.pipeline import config_from_dict, run_audit

    build_scgpt_checkpoint(tmp_path / "scgpt", list(tiny_bench.adata.var_names), seed=0)
    boards, n_tests = [], []
    for per_head in (False, True):
        cfg = tiny_config(tmp_path / f"out_{per_head}")
        cfg["models"] = {"tiny": {"family": "scgpt", "path": str(tmp_path / "scgpt")}}
        cfg["edges"]["attn"] = {
            "scorer": "attention",
            "model": "tiny",
            "max_cells": 40,
            "per_head": True,
        }
        cfg["analyses"]["grn_recovery"].update(per_head=per_head, n_rewire=0, n_perm=99)
        cfg["analyses"]["grn_recovery@null"].update(n_rewire=0, n_perm=99)
        run = run_audit(config_from_dict(cfg), quiet=True)
        assert not run.errors, run.errors
        boards.append(run.verdicts().set_index(["analysis", "claim", "dataset"]).sort_index())
        n_tests.append(len(run.tests))
    assert n_tests[1] > n_tests[0] + 10  # the heads' tests are there ...
    off, on = boards
    assert off.index.equals(on.index)
    pd.testing.assert_series_equal(off["answer"], on["answer"])
    pd.testing.assert_series_equal(off["q"], on["q"])  # ... and answer nothing
