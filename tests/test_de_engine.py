"""The compiled DE engine (evaluate/_de.py + _de_kernels.py) against scanpy, scipy and the
previous implementation (tests/_de_previous.py): ties, all-zero genes, one-cell groups,
stored zeros, backed and in-memory input, gene blocks, threads, tie_correct on and off,
and the calibration of both tie settings under a null perturbation; and the machinery
that must not change a bit: thread counts, read blocks and their reused buffers, test
blocks, the threads' share of groups, the read-ahead pass and the screen-wide BH."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy import stats as sst

from scfm_audit.data import simulate_perturbseq
from scfm_audit.data._dataset import DatasetSpec
from scfm_audit.evaluate._de import differential_expression

sys.path.insert(0, str(Path(__file__).parent))
import _de_previous as previous

SPEC = DatasetSpec(perturbation="perturbation", modality="modality")
PLAIN = DatasetSpec(perturbation="perturbation")
SMALL = {"n_cells": 1500, "n_genes": 60, "n_tfs": 8, "n_perturbations": 4, "n_modules": 3}


@pytest.fixture(scope="module")
def sim():
    return simulate_perturbseq(**SMALL, seed=7)


def _awkward(seed=0) -> ad.AnnData:
    """Few distinct counts (many ties, also among non-zeros: equal library sizes), an
    all-zero gene, a gene non-zero in one cell only, a one-cell perturbation, a group
    without counts at a gene, and explicitly stored zeros."""
    rng = np.random.default_rng(seed)
    groups = ["non-targeting"] * 60 + ["A"] * 25 + ["B"] * 30 + ["C"] * 1 + ["D"] * 12
    n, G = len(groups), 9
    X = rng.poisson(0.6, (n, G)).astype(np.float32)
    X[:, 0] = 0  # all-zero gene
    X[:, 1] = 0
    X[5, 1] = 3  # one non-zero cell
    X[np.array(groups) == "D", 2] = 0  # a group without counts at gene 2
    X[np.array(groups) == "A", 3] += 2  # a shift
    X[:, 8] = 10 - X[:, :8].sum(axis=1).clip(max=9)  # equal totals → ties among non-zeros
    M = sparse.csr_matrix(X)
    M.data[::7] = 0  # stored zeros stay zeros
    obs = pd.DataFrame({"perturbation": groups}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(M, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))


def _scanpy(adata, method, tie_correct=False):
    import scanpy as sc

    x = adata.copy()
    x.X = sparse.csr_matrix(x.X, dtype=np.float64)
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    size = x.obs["perturbation"].value_counts()
    groups = sorted(set(size.index[size > 1]) - {"non-targeting"})  # scanpy refuses 1 cell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(
            x,
            "perturbation",
            groups=groups,
            reference="non-targeting",
            method=method,
            tie_correct=tie_correct,
        )
    r = x.uns["rank_genes_groups"]
    return {
        g: pd.Series(np.asarray(r["pvals"][g], dtype=float), index=list(r["names"][g]))
        for g in groups
    }


def _compare_p(de, ref, rtol=1e-10):
    """p equal to scanpy's to ``rtol`` where ours is finite (ours is NaN where every value
    ties: scanpy reports p = 1 there) and at least 90 % finite."""
    n_ok = 0
    for pert, d in de.groupby("perturbation"):
        if pert not in ref:
            continue
        mine = d.set_index("gene")["p"]
        theirs = ref[pert].loc[mine.index]
        ok = np.isfinite(mine.to_numpy())
        np.testing.assert_allclose(mine.to_numpy()[ok], theirs.to_numpy()[ok], rtol=rtol)
        assert (theirs.to_numpy()[~ok] == 1).all()
        n_ok += ok.sum()
    return n_ok / len(de)


@pytest.mark.parametrize("tie_correct", [True, False])
@pytest.mark.parametrize(("ours", "theirs"), [("welch", "t-test"), ("wilcoxon", "wilcoxon")])
def test_p_equals_scanpy_to_1e10(sim, ours, theirs, tie_correct):
    de = differential_expression(
        sim.adata, SPEC, method=ours, chunk_size=200, tie_correct=tie_correct
    )
    assert _compare_p(de, _scanpy(sim.adata, theirs, tie_correct)) > 0.9
    if ours == "wilcoxon":
        assert de.attrs["de"]["tie_correct"] is tie_correct
        assert "tie" in de.attrs["de"]["variance"]


@pytest.mark.parametrize("tie_correct", [True, False])
def test_awkward_wilcoxon_equals_scanpy_and_scipy(tie_correct):
    from scfm_audit.evaluate._de import _log_normalise

    a = _awkward()
    de = differential_expression(a, PLAIN, method="wilcoxon", tie_correct=tie_correct)
    _compare_p(de, _scanpy(a, "wilcoxon", tie_correct))
    Y = _log_normalise(a.X).toarray()
    lab = a.obs["perturbation"].to_numpy()
    x0 = Y[lab == "non-targeting"]
    for pert, d in de.groupby("perturbation"):
        x1 = Y[lab == pert]
        u = sst.mannwhitneyu(x1, x0, axis=0, method="asymptotic", use_continuity=False)
        z = d["statistic"].to_numpy()
        n1, n0 = len(x1), len(x0)
        if tie_correct:  # scipy's asymptotic p is the tie-corrected one
            ok = np.isfinite(z)
            np.testing.assert_allclose(d["p"].to_numpy()[ok], u.pvalue[ok], rtol=1e-10)
            const = (Y[np.isin(lab, [pert, "non-targeting"])] == Y[0]).all(axis=0)
            assert (~ok == const).all()  # NaN exactly where every value ties
        else:
            zu = (u.statistic - n1 * n0 / 2) / np.sqrt(n1 * n0 * (n1 + n0 + 1) / 12)
            np.testing.assert_allclose(z, zu, rtol=1e-12, atol=1e-12)
    one = de[de["perturbation"] == "C"]
    assert (one["n_perturbed"] == 1).all() and np.isfinite(one["p"]).any()


@pytest.mark.parametrize("method", ["welch", "wilcoxon"])
def test_equals_previous_implementation(sim, method):
    """Welch as before within float rounding; the Wilcoxon without tie correction too."""
    old = previous.differential_expression(sim.adata, SPEC, method=method, chunk_size=300)
    new = differential_expression(sim.adata, SPEC, method=method, chunk_size=300, tie_correct=False)
    assert list(new.columns) == list(old.columns)
    pd.testing.assert_frame_equal(
        new.drop(columns=["p", "q_within", "q_screen"]),
        old.drop(columns=["p", "q_within", "q_screen"]),
        check_exact=False,
        rtol=1e-11,
    )
    for c in ("p", "q_within", "q_screen"):  # relative error of p grows with |t|
        np.testing.assert_allclose(new[c], old[c], rtol=1e-9, equal_nan=True)


def test_awkward_welch_equals_previous():
    a = _awkward(1)
    old = previous.differential_expression(a, PLAIN, method="welch")
    new = differential_expression(a, PLAIN, method="welch", chunk_size=17)
    pd.testing.assert_frame_equal(new, old, check_exact=False, rtol=1e-11)
    assert new.loc[new["gene"] == "g0", "p"].isna().all()  # all-zero gene: no test
    assert new.loc[new["perturbation"] == "C", "p"].isna().all()  # one cell: no variance


@pytest.mark.parametrize("method", ["welch", "wilcoxon"])
def test_backed_equals_in_memory_and_dense(sim, tmp_path, method):
    mem = differential_expression(sim.adata, SPEC, method=method)
    path = tmp_path / "s.h5ad"
    sim.adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    chunked = differential_expression(backed, SPEC, method=method, chunk_size=97)
    backed.file.close()
    pd.testing.assert_frame_equal(mem, chunked, check_exact=False, rtol=1e-12)
    dense = sim.adata.copy()
    dense.X = dense.X.toarray()
    pd.testing.assert_frame_equal(
        mem, differential_expression(dense, SPEC, method=method, chunk_size=333), rtol=1e-12
    )


def test_gene_blocks_and_threads_do_not_change_ranks(sim):
    import numba

    one = differential_expression(sim.adata, SPEC, method="wilcoxon")
    blocks = differential_expression(sim.adata, SPEC, method="wilcoxon", max_rank_values=500)
    pd.testing.assert_frame_equal(one, blocks)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = differential_expression(sim.adata, SPEC, method="wilcoxon")
    finally:
        numba.set_num_threads(before)
    pd.testing.assert_frame_equal(one, single)


@pytest.mark.parametrize("tie_correct", [True, False])
def test_type_one_error_under_a_null_perturbation(tie_correct):
    """The simulator's 1,800 controls relabelled at random into 25 pseudo-perturbations of
    40 cells (H0 true by construction) against the other 800, 200 genes: the tie-corrected test rejects at
    α = 0.05 within binomial error (4 SE: genes of one perturbation share its cells), the
    uncorrected one at most that (it is conservative with many zeros)."""
    b = simulate_perturbseq(
        n_cells=6000, n_genes=200, n_tfs=20, n_perturbations=2, n_modules=5, seed=11
    )
    a = b.adata[b.adata.obs["perturbation"] == "non-targeting"].copy()
    rng = np.random.default_rng(0)
    lab = np.array(["non-targeting"] * a.n_obs, dtype=object)
    lab[rng.permutation(a.n_obs)[:1000]] = np.repeat([f"P{i}" for i in range(25)], 40)
    a.obs = pd.DataFrame({"perturbation": lab}, index=a.obs_names)
    de = differential_expression(a, PLAIN, method="wilcoxon", tie_correct=tie_correct)
    p = de["p"].dropna().to_numpy()
    rate = float((p < 0.05).mean())
    se = np.sqrt(0.05 * 0.95 / p.size)
    assert rate <= 0.05 + 4 * se
    if tie_correct:
        assert rate >= 0.05 - 4 * se


def test_awkward_welch_equals_scanpy():
    """Welch on few distinct counts (ties), an all-zero gene, a one-non-zero gene, a group
    without counts at a gene and a one-cell group: p equal to scanpy's ``t-test`` to 1e-10
    where both test (scanpy reports p = 1 where the variance is 0, ours NaN; it refuses the
    one-cell group, which has no variance: ours is NaN there)."""
    a = _awkward(2)
    de = differential_expression(a, PLAIN, method="welch", chunk_size=13)
    assert _compare_p(de, _scanpy(a, "t-test")) > 0.5
    assert de.loc[de["gene"] == "g0", "p"].isna().all()
    one = de[de["perturbation"] == "C"]
    assert one["p"].isna().all() and (one["n_perturbed"] == 1).all()
    assert np.isfinite(one["log2fc"]).all()  # a mean and a fold change it has


def _many_groups(seed=0) -> ad.AnnData:
    """300 controls and 25 perturbations of 24 cells, 40 genes: the controls are shared by
    the pass threads, the perturbations dealt to them (``_owners``)."""
    rng = np.random.default_rng(seed)
    groups = ["non-targeting"] * 300 + [f"P{i:02d}" for i in range(25) for _ in range(24)]
    rng.shuffle(groups)
    X = rng.poisson(rng.gamma(0.5, 2.0, 40), (len(groups), 40)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": groups}, index=[f"c{i}" for i in range(len(groups))])
    return ad.AnnData(
        sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(40)])
    )


def _backed(adata, path) -> ad.AnnData:
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


@pytest.mark.parametrize("data", ["sim", "many_groups"])
@pytest.mark.parametrize("method", ["welch", "wilcoxon"])
def test_threads_blocks_and_read_buffers_change_no_bit(sim, tmp_path, monkeypatch, method, data):
    """1, 2 and 3 threads (on the simulator's screen every group is shared by the threads,
    on ``_many_groups`` most are dealt to one); a backed file read in blocks of ≤ 700
    stored values (several blocks per chunk, far more blocks than read buffers, so buffers
    are refilled while other threads still work); tests in blocks of one perturbation: the
    same table bit for bit as the in-memory run on the default settings."""
    from scfm_audit.evaluate import _de

    adata, spec = (sim.adata, SPEC) if data == "sim" else (_many_groups(), PLAIN)
    ref = differential_expression(adata, spec, method=method, tie_correct=True)
    if data == "many_groups":  # its reference run is itself scanpy's test
        assert _compare_p(ref, _scanpy(adata, {"welch": "t-test"}.get(method, method), True)) > 0.9
    backed = _backed(adata, tmp_path / "s.h5ad")
    monkeypatch.setattr(_de, "MAX_BLOCK_NNZ", 700)
    monkeypatch.setattr(_de, "READ_AHEAD", 2)
    monkeypatch.setattr(_de, "TEST_BLOCK", 1)
    try:
        for T in (1, 2, 3):  # the passes' own threads: any number, whatever the cores
            monkeypatch.setattr(_de, "_threads", lambda T=T: T)
            for src in (adata, backed):
                got = differential_expression(src, spec, method=method, chunk_size=250)
                pd.testing.assert_frame_equal(got, ref, check_exact=True)
    finally:
        backed.file.close()


def test_owners_share_only_large_groups_and_balance_the_rest():
    from scfm_audit.evaluate._de import _owners

    n = np.array([3000.0] + [40.0] * 50 + [55.0] * 10)
    assert (_owners(n, 1) == 0).all()
    for T in (2, 3, 4):
        own = _owners(n, T)
        assert own[0] == -1 and (own[1:] >= 0).all() and own.max() == T - 1
        load = np.bincount(own[1:], weights=n[1:], minlength=T)
        assert load.max() - load.min() <= 55  # at most one group apart


def test_parallel_pass_covers_every_block_and_thread_and_respects_the_ring():
    """Every (block, thread) exactly once; block b is asked for only after every thread is
    done with block b − ``ahead``; an error in a thread or in the reader reaches the
    caller (no hang)."""
    import threading

    from scfm_audit.evaluate import _de

    T, B = 3, 40
    seen: list[tuple[int, int]] = []
    finished: dict[int, int] = {}
    lock = threading.Lock()

    def blocks(ahead):
        for b in range(B):
            with lock:
                assert all(finished.get(i, 0) == T for i in range(b - ahead + 1))
            yield (b, None, None, None)

    def work(blk, t):
        with lock:
            seen.append((blk[0], t))
            finished[blk[0]] = finished.get(blk[0], 0) + 1

    for ahead in (1, 3):
        seen.clear()
        finished.clear()
        _de._parallel_pass(blocks(ahead), work, T, ahead)
        assert sorted(seen) == [(b, t) for b in range(B) for t in range(T)]

    def bad_work(blk, t):
        if blk[0] == 5 and t == 1:
            raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        _de._parallel_pass(((b, None, None, None) for b in range(B)), bad_work, T)

    def bad_blocks():
        yield (0, None, None, None)
        raise OSError("read failed")

    with pytest.raises(OSError, match="read failed"):
        _de._parallel_pass(bad_blocks(), lambda blk, t: None, T)


def test_screen_wide_bh_equals_row_bh_bit_for_bit():
    """The radix-sorted BH of ``q_screen`` is ``_bh_rows`` of one row: ties, zeros, NaN, p
    of 1, an all-NaN and an empty input (and inputs that are no p-values: −0.0, < 0)."""
    from scfm_audit.evaluate._de import _bh_flat, _bh_rows

    rng = np.random.default_rng(3)
    p = rng.uniform(size=5000) ** 3
    p[rng.choice(5000, 300)] = np.nan
    p[rng.choice(5000, 300)] = 1.0
    p[rng.choice(5000, 50)] = 0.0
    p[:400] = np.round(p[:400], 2)  # tie blocks
    odd = (np.array([0.5, np.nan, 0.5]), np.array([0.2, -0.0, 0.1]), np.array([-0.5, 0.3]))
    for x in (p, p[:1], np.full(7, np.nan), np.array([]), *odd):  # −0.0, < 0: by _bh_rows
        np.testing.assert_array_equal(_bh_flat(x), _bh_rows(x[None, :])[0])


def _h5(path, **kw):
    import h5py

    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, 20_000).astype(np.float32)
    with h5py.File(path, "w", rdcc_nbytes=0) as f:  # no chunk cache: chunks go out in order
        if kw.pop("resized", False):  # appended in pieces beside another, as CSR is streamed
            d = f.create_dataset("x", (0,), dtype=x.dtype, maxshape=(None,), chunks=(1024,))
            e = f.create_dataset("y", (0,), dtype=np.int32, maxshape=(None,), chunks=(1024,))
            for a in range(0, x.size, 1500):
                for ds in (d, e):
                    ds.resize((min(a + 1500, x.size),))
                    ds[a : a + 1500] = x[a : a + 1500]
        else:
            f.create_dataset("x", data=x.astype(kw.pop("dtype", x.dtype)), **kw)
    return x


@pytest.mark.parametrize(
    ("layout", "direct"),
    [
        ({}, True),  # contiguous
        ({"chunks": (100,)}, True),
        ({"resized": True}, True),  # 1,024-value chunks, in runs between another's
        ({"chunks": (100,), "compression": "gzip"}, False),
        ({"chunks": (100,), "shuffle": True}, False),
        ({"dtype": ">f4"}, False),  # not the native byte order
    ],
)
def test_direct_reads_equal_h5py_or_decline(tmp_path, layout, direct):
    """A dataset whose stored bytes are its values is read by ``pread`` (the same values
    as h5py over ranges that start and end inside chunks); a filtered or byte-swapped one,
    or a file open for writing, is left to h5py."""
    import h5py

    from scfm_audit.evaluate._de_read import direct_reader

    x = _h5(tmp_path / "x.h5", **dict(layout))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        reader = direct_reader(f["x"])
        assert (reader is not None) is direct
        if reader is not None:
            if layout.get("resized"):  # reads do cross gaps between runs of chunks
                assert (np.diff(reader.offsets) != reader.chunk * 4).sum() >= 5
            rng = np.random.default_rng(1)
            n = x.size
            for lo, hi in [(0, n), (0, 1), (n - 1, n), *rng.integers(0, n, (40, 2))]:
                lo, hi = sorted((int(lo), int(hi)))
                out = np.full(hi - lo, -1.0, dtype=np.float32)
                reader.read(lo, hi, out)
                np.testing.assert_array_equal(out, x[lo:hi])
    with h5py.File(tmp_path / "x.h5", "r+") as f:
        assert direct_reader(f["x"]) is None


def test_backed_simulator_file_read_direct_equals_in_memory(tmp_path):
    """The simulator streams its counts to disk in small resizable chunks: read straight
    from the file (the direct reader accepts it), DE equals the in-memory run exactly."""
    from scfm_audit.evaluate import _de
    from scfm_audit.evaluate._de_read import direct_reader

    path = tmp_path / "sim.h5ad"
    simulate_perturbseq(**SMALL, seed=5, out_path=path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        assert direct_reader(backed.X.group["data"]) is not None
        mem = backed.to_memory()
        for method in ("welch", "wilcoxon"):
            got = _de.differential_expression(backed, SPEC, method=method, chunk_size=111)
            pd.testing.assert_frame_equal(
                got, _de.differential_expression(mem, SPEC, method=method), check_exact=True
            )
    finally:
        backed.file.close()


@pytest.mark.parametrize("method", ["welch", "wilcoxon"])
def test_chunk_tasks_equal_the_engine(sim, tmp_path, method):
    """The passes as executor tasks (``_de_tasks``: row chunks, gene blocks; what a Dask
    cluster runs, here in this process) equal the engine's own pass, in memory and backed:
    counts and U exactly, float64 sums to rounding (added per chunk)."""
    from scfm_audit._executor import LocalExecutor, using

    class Tasks(LocalExecutor):  # the task path, without a cluster
        kind = "tasks"

        @property
        def parallelism(self) -> int:
            return 2

    backed = _backed(sim.adata, tmp_path / "s.h5ad")
    try:
        for src in (sim.adata, backed):
            ref = differential_expression(src, SPEC, method=method, chunk_size=300)
            with using(Tasks()):
                got = differential_expression(src, SPEC, method=method, chunk_size=300)
            pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-10)
            np.testing.assert_array_equal(got["n_perturbed"], ref["n_perturbed"])
    finally:
        backed.file.close()
