"""Interventions change what they should and nothing else, and always detach."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _toy_model import ToyAdapter, toy_adata
from scfm_audit.models._interventions import (
    Intervention,
    ablate_heads,
    check_intervention_order,
    compose,
    compute_head_means,
    fidelity,
    fidelity_per_cell,
    intervention_order,
    parse_heads,
    zero_mlp,
)

N_LAYERS, N_HEADS = 3, 4


@pytest.fixture(scope="module")
def adata():
    return toy_adata(n_cells=10, n_genes=25, seed=2)


@pytest.fixture(scope="module")
def model(adata):
    return ToyAdapter(adata.var_names, n_layers=N_LAYERS, n_heads=N_HEADS, d_model=16, seed=4)


@pytest.fixture(scope="module")
def batch(model, adata):
    return model.tokenize(adata, np.arange(adata.n_obs))  # padded: cells differ in length


def run(model, batch, sites=("layers.*.attn.pattern", "layers.*.attn.z", "layers.*.mlp.out")):
    """Forward pass capturing every layer's tensors at ``sites`` (observers attached last,
    so they see what the interventions produced)."""
    seen: dict[str, torch.Tensor] = {}

    def grab(x, *, site, ctx):
        seen[site] = x.clone()

    with model.hooks([(s, grab) for s in sites]):
        out = model.forward(batch)
    return out, seen


def no_hooks(model) -> bool:
    return not any(hp.active for hp in model.hook_points.values())


# -- head ablation -----------------------------------------------------------------------------
def test_zero_head_changes_only_downstream(model, batch):
    base_out, base = run(model, batch)
    with ablate_heads(model, [(1, 2)]):
        out, seen = run(model, batch)
    assert no_hooks(model)
    for L in (0, 1):  # attention at and before the ablated layer is untouched
        assert torch.equal(seen[f"layers.{L}.attn.pattern"], base[f"layers.{L}.attn.pattern"])
    assert torch.equal(seen["layers.0.attn.z"], base["layers.0.attn.z"])
    z, z0 = seen["layers.1.attn.z"], base["layers.1.attn.z"]
    assert (z[:, :, 2] == 0).all() and z0[:, :, 2].abs().sum() > 0
    others = [0, 1, 3]
    assert torch.equal(z[:, :, others], z0[:, :, others])
    assert not torch.allclose(seen["layers.2.attn.pattern"], base["layers.2.attn.pattern"])
    assert not torch.allclose(out.hidden, base_out.hidden)
    assert not torch.allclose(out.gene_predictions, base_out.gene_predictions)
    # back to the original model afterwards
    after, _ = run(model, batch)
    assert torch.equal(after.hidden, base_out.hidden)


def test_uniform_pattern_rows_sum_to_one_over_real_tokens(model, batch):
    _, base = run(model, batch)
    with ablate_heads(model, ["layers.2.attn.head.1", "layer.2.head.3"], method="uniform"):
        _, seen = run(model, batch)
    p = seen["layers.2.attn.pattern"]
    mask = batch.attention_mask
    n_real = mask.sum(1).float()
    for h in (1, 3):
        ph = p[:, h]  # (B, T, T)
        torch.testing.assert_close(ph.sum(-1), torch.ones_like(ph.sum(-1)))
        assert (ph[~mask[:, None, :].expand_as(ph)] == 0).all()  # padding keys get 0
        expect = (1 / n_real)[:, None, None].expand_as(ph)
        keys = mask[:, None, :].expand_as(ph)
        torch.testing.assert_close(ph[keys], expect[keys])
    assert torch.equal(p[:, [0, 2]], base["layers.2.attn.pattern"][:, [0, 2]])
    assert not torch.allclose(seen["layers.2.attn.z"][:, :, 1], base["layers.2.attn.z"][:, :, 1])


def test_hooks_removed_after_exception(model, batch):
    base, _ = run(model, batch)
    iv = ablate_heads(model, [(0, 0)]) & zero_mlp(model, [1])
    with pytest.raises(RuntimeError, match="boom"):
        with iv:
            assert not no_hooks(model)
            raise RuntimeError("boom")
    assert no_hooks(model)
    assert torch.equal(run(model, batch)[0].hidden, base.hidden)


def test_composition_applies_both(model, batch):
    heads = ablate_heads(model, [(0, 1)])
    mlp = zero_mlp(model, 2)
    with heads, mlp:
        nested, seen = run(model, batch)
    assert (seen["layers.0.attn.z"][:, :, 1] == 0).all()
    assert (seen["layers.2.mlp.out"] == 0).all()
    with compose(heads, mlp):
        composed, _ = run(model, batch)
    assert torch.equal(nested.hidden, composed.hidden)
    with heads:
        only_heads, _ = run(model, batch)
    assert not torch.allclose(only_heads.hidden, composed.hidden)
    assert no_hooks(model)
    assert (heads & mlp).description == "zero-ablate L0H1 + zero MLP of layer 2"


def test_zero_mlp(model, batch):
    base, b = run(model, batch)
    with zero_mlp(model, [-2]) as iv:
        assert iv.layers == [1]
        out, seen = run(model, batch)
    assert (seen["layers.1.mlp.out"] == 0).all()
    assert torch.equal(seen["layers.1.attn.pattern"], b["layers.1.attn.pattern"])
    assert not torch.allclose(seen["layers.2.attn.pattern"], b["layers.2.attn.pattern"])
    assert not torch.allclose(out.hidden, base.hidden)


def test_mean_ablation_with_same_batch_keeps_means(model, batch):
    ref = compute_head_means(model, [batch])
    assert set(ref) == {(L, h) for L in range(N_LAYERS) for h in range(N_HEADS)}
    heads = [(1, 0), (1, 3), (2, 2)]
    base, _ = run(model, batch)
    with ablate_heads(model, heads, method="mean", reference=ref):
        again = compute_head_means(model, [batch])
        out, seen = run(model, batch)
    for L, h in heads:
        torch.testing.assert_close(again[(L, h)], ref[(L, h)], atol=1e-6, rtol=1e-5)
        z = seen[f"layers.{L}.attn.z"][:, :, h]  # every token carries the mean
        torch.testing.assert_close(z, ref[(L, h)].float().expand_as(z))
    torch.testing.assert_close(again[(1, 1)], ref[(1, 1)])  # same layer, not ablated
    assert not torch.allclose(out.hidden, base.hidden)
    with pytest.raises(ValueError, match="reference"):
        ablate_heads(model, heads, method="mean")
    with pytest.raises(ValueError, match="no mean"):
        ablate_heads(model, heads, method="mean", reference={(1, 0): ref[(1, 0)]})


def test_parse_heads():
    kw = dict(n_layers=4, n_heads=8)
    assert parse_heads(["layer.3.head.5", "layers.1.attn.head.0", "L2H7", (0, 1)], **kw) == [
        (0, 1),
        (1, 0),
        (2, 7),
        (3, 5),
    ]
    assert parse_heads([(-1, 2)], **kw) == [(3, 2)]
    for bad in (["layer3head5"], [(4, 0)], [(0, 8)], []):
        with pytest.raises(ValueError):
            parse_heads(bad, **kw)
    with pytest.raises(ValueError, match="method"):
        ablate_heads(ToyAdapter(["a"], n_layers=1, n_heads=1, d_model=4), [(0, 0)], method="nope")


# -- order -------------------------------------------------------------------------------------
def test_intervention_order(model):
    # head ablation at layer 2 cannot change attention read at layer 1 or 2
    for readout in (1, 2):
        rep = check_intervention_order(model, ablate_heads(model, [(2, 0)]), readout)
        assert not rep.can_affect and rep.inert == ("layers.2.attn.z",)
        assert "structurally unable" in rep.message
        assert "cannot change the readout through the model" in rep.message
    rep = check_intervention_order(model, [0, 2], 2)  # layers, default site attn.z
    assert rep.can_affect and rep.upstream == ("layers.0.attn.z",)
    assert rep.inert == ("layers.2.attn.z",)
    # uniform attention at the readout layer overwrites the very tensor read
    rep = check_intervention_order(model, ablate_heads(model, [(1, 0)], method="uniform"), 1)
    assert not rep.can_affect and rep.same_site == ("layers.1.attn.pattern",)
    # MLP of layer L is after layer L's attention, before layer L+1's
    assert not check_intervention_order(model, zero_mlp(model, 1), 1).can_affect
    assert check_intervention_order(model, zero_mlp(model, 1), 2).can_affect
    # final outputs are downstream of everything
    assert check_intervention_order(model, zero_mlp(model, 2), None).can_affect
    msg = intervention_order(model, [2], 1)
    assert isinstance(msg, str) and msg.startswith("Readout: layers.1.attn.pattern.")


# -- fidelity ------------------------------------------------------------------------------------
def test_fidelity(model, adata):
    batches = list(model.iter_batches(adata, batch_size=4))
    df = fidelity(model, batches, ablate_heads(model, [(0, 0), (1, 1)]))
    assert set(df["readout"]) == {"hidden", "hidden_max", "cell_embedding", "gene_predictions"}
    assert (df["n_cells"] == adata.n_obs).all()
    assert (df["mean"] > 1e-4).all() and (df["frac_changed"] == 1).all()
    assert df["intervention"].iloc[0] == "zero-ablate L0H0, L1H1"

    def observe_only(x, **_):
        return None

    noop = Intervention(model, [("layers.0.attn.z", observe_only)], description="noop")
    df0 = fidelity(model, batches, noop)
    assert (df0["max"] < 1e-6).all() and (df0["frac_changed"] == 0).all()
    # a single-use context manager (adapter.hooks) and a factory work too
    one_shot = fidelity_per_cell(model, batches, model.hooks(zero_mlp(model, 0).fns))
    factory = fidelity_per_cell(model, iter(batches), lambda: zero_mlp(model, 0))
    np.testing.assert_allclose(one_shot["hidden"], factory["hidden"])
    assert list(one_shot["cell"]) == list(range(adata.n_obs))
    assert no_hooks(model)


def test_parse_heads_single_and_tuple_of_tuples():
    kw = dict(n_layers=4, n_heads=8)
    assert parse_heads((1, 2), **kw) == [(1, 2)]
    assert parse_heads(((1, 2), (0, 3)), **kw) == [(0, 3), (1, 2)]
    assert parse_heads("layer.0.head.0", **kw) == [(0, 0)]
