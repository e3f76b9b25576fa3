import math

import pytest
import torch

from ad_nnunet.method.losses import IGNORE_LABEL
from ad_nnunet.method.rs_fusion import GaussianSmoothing, argmax_pseudo_label, rs_pseudo_label


@pytest.mark.parametrize("dim", [2, 3])
def test_kernel_normalised_and_gaussian(dim):
    sm = GaussianSmoothing(4, kernel_size=3, sigma=1.0, dim=dim)
    assert sm.weight.shape == (4, 1) + (3,) * dim
    assert torch.allclose(sm.weight.sum(dim=tuple(range(1, dim + 2))), torch.ones(4))
    k = sm.weight[0, 0]
    centre = k[(1,) * dim].item()
    face = k[(0,) + (1,) * (dim - 1)].item()
    assert face / centre == pytest.approx(math.exp(-0.5), rel=1e-6)
    # a derived constant: not part of the saved state
    assert "weight" not in sm.state_dict()


@pytest.mark.parametrize("dim,shape", [(2, (2, 3, 7, 6)), (3, (1, 3, 5, 6, 4))])
def test_constant_field_preserved_and_shape_kept(dim, shape):
    sm = GaussianSmoothing(3, dim=dim)
    x = torch.full(shape, 0.37)
    y = sm(x)
    assert y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-6)
    # smoothing probabilities keeps them probabilities, borders included
    p = torch.softmax(torch.randn(shape), 1)
    assert torch.allclose(sm(p).sum(1), torch.ones(shape[0], *shape[2:]), atol=1e-5)


def test_smoothing_matches_direct_sum_in_interior():
    sm = GaussianSmoothing(1, dim=2)
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    y = sm(x)[0, 0]
    # an impulse spreads into the kernel itself
    assert torch.allclose(y[1:4, 1:4], sm.weight[0, 0])
    assert y.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_smoothing_validates_input():
    with pytest.raises(ValueError, match=r"kernel_size must be a positive odd number"):
        GaussianSmoothing(2, kernel_size=4)
    with pytest.raises(ValueError, match=r"dim must be 1, 2 or 3"):
        GaussianSmoothing(2, dim=4)
    with pytest.raises(ValueError, match=r"expected \(B, 2\) \+ 3 spatial dims"):
        GaussianSmoothing(2, dim=3)(torch.zeros(1, 3, 4, 4, 4))


@pytest.mark.parametrize("dim", [2, 3])
def test_agreeing_inputs_give_that_label(dim):
    g = torch.Generator().manual_seed(0)
    spatial = (6, 5, 4)[:dim]
    label = torch.randint(0, 3, (2, 1, *spatial), generator=g)
    onehot = torch.nn.functional.one_hot(label[:, 0], 3).movedim(-1, 1).float()
    logits = 20.0 * onehot
    sm = GaussianSmoothing(3, dim=dim)
    pseudo = rs_pseudo_label(logits, logits, sm, generator=torch.Generator().manual_seed(1))
    assert pseudo.dtype == torch.long and pseudo.shape == label.shape
    assert torch.equal(pseudo, label)
    assert torch.equal(argmax_pseudo_label(logits), label)


def test_no_grad_and_deterministic_with_generator():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 5, 5, 5, generator=g, requires_grad=True)
    b = torch.randn(2, 3, 5, 5, 5, generator=g, requires_grad=True)
    sm = GaussianSmoothing(3)
    p1 = rs_pseudo_label(a, b, sm, generator=torch.Generator().manual_seed(5))
    p2 = rs_pseudo_label(a, b, sm, generator=torch.Generator().manual_seed(5))
    assert not p1.requires_grad and p1.grad_fn is None
    assert torch.equal(p1, p2)
    # the Gumbel noise matters for these ambiguous logits
    others = [rs_pseudo_label(a, b, sm, generator=torch.Generator().manual_seed(s)) for s in range(6, 9)]
    assert any(not torch.equal(p1, o) for o in others)
    assert not argmax_pseudo_label(a).requires_grad


def test_shape_and_tau_validation():
    sm = GaussianSmoothing(3, dim=2)
    with pytest.raises(ValueError, match=r"logits_xi \(1, 3, 4, 4\) and logits_psi \(1, 3, 4, 5\) differ"):
        rs_pseudo_label(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5), sm)
    with pytest.raises(ValueError, match=r"tau must be a positive finite number"):
        rs_pseudo_label(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), sm, tau=0.0)


def test_diffusion_logits_are_clipped_like_the_official_pred_xstart():
    # D_xi says class 0 with logits +-50, D_psi says class 1 with probability 0.98. Unclipped, the Gumbel sample is
    # one-hot for class 0 everywhere and D_psi can never win; clipped to [-1, 1] (official pred_xstart) the sample
    # stays soft, and D_psi's confident vote decides most voxels.
    sm = GaussianSmoothing(2, dim=2)
    xi = torch.zeros(4, 2, 16, 16)
    xi[:, 0], xi[:, 1] = 50.0, -50.0
    psi = torch.zeros(4, 2, 16, 16)
    psi[:, 1] = 4.0
    clipped = rs_pseudo_label(xi, psi, sm, generator=torch.Generator().manual_seed(0))
    unclipped = rs_pseudo_label(xi, psi, sm, generator=torch.Generator().manual_seed(0), xstart_clip=None)
    assert (unclipped == 0).all()
    assert (clipped == 1).float().mean() > 0.5
    # clipping is exactly a clamp of the input, with the same Gumbel noise
    same = rs_pseudo_label(xi.clamp(-1, 1), psi, sm, generator=torch.Generator().manual_seed(0), xstart_clip=None)
    assert torch.equal(clipped, same)
    with pytest.raises(ValueError, match="xstart_clip"):
        rs_pseudo_label(xi, psi, sm, xstart_clip=0.0)


def test_min_confidence_leaves_out_the_voxels_where_the_streams_are_unsure():
    # left half: both streams sure of class 1; right half: D_psi 50/50 and D_xi undecided (kappa about 0.5)
    sm = GaussianSmoothing(2, dim=2)
    xi = torch.zeros(2, 2, 8, 16)
    psi = torch.zeros(2, 2, 8, 16)
    xi[..., :8] = torch.tensor([-50.0, 50.0])[:, None, None]
    psi[..., :8] = torch.tensor([-10.0, 10.0])[:, None, None]
    plain = rs_pseudo_label(xi, psi, sm, generator=torch.Generator().manual_seed(0))
    masked = rs_pseudo_label(xi, psi, sm, generator=torch.Generator().manual_seed(0), min_confidence=0.7)
    assert (masked[..., :6] == 1).all()  # away from the halves' border, the sure half is kept
    assert (masked[..., 9:] == IGNORE_LABEL).all()
    kept = masked != IGNORE_LABEL
    assert torch.equal(masked[kept], plain[kept])  # the same Gumbel draw: thresholding only removes voxels
    everything = rs_pseudo_label(xi, psi, sm, generator=torch.Generator().manual_seed(0), min_confidence=0.0)
    assert torch.equal(everything, plain)
    with pytest.raises(ValueError, match=r"min_confidence must be in \[0, 1\] or None, got 1.5"):
        rs_pseudo_label(xi, psi, sm, min_confidence=1.5)


def test_ignore_fraction_leaves_out_each_samples_least_confident_voxels():
    # sample 0: sure everywhere but a 2-column stripe where D_psi is 50/50; sample 1: D_psi sure in its left half,
    # 50/50 in its right. Each sample loses its own round(q N) voxels of lowest kappa, whatever the other holds.
    sm = GaussianSmoothing(2, dim=2)
    xi = torch.zeros(2, 2, 8, 16)
    psi = torch.zeros(2, 2, 8, 16)
    xi[:] = torch.tensor([-50.0, 50.0])[:, None, None]
    psi[:] = torch.tensor([-10.0, 10.0])[:, None, None]
    psi[0, :, :, 7:9] = 0.0
    psi[1, :, :, 8:] = 0.0
    draw = dict(generator=torch.Generator().manual_seed(0))
    plain = rs_pseudo_label(xi, psi, sm, **draw)
    masked = rs_pseudo_label(xi, psi, sm, generator=torch.Generator().manual_seed(0), ignore_fraction=0.125)
    ignored = masked == IGNORE_LABEL
    assert ignored.flatten(1).sum(1).tolist() == [16, 16]  # 0.125 x 128 voxels in each sample
    assert ignored[0, 0, :, 7:9].all()                       # sample 0: exactly the unsure stripe
    assert not ignored[1, 0, :, :8].any()                    # sample 1: only from its less sure half
    assert torch.equal(masked[~ignored], plain[~ignored])    # the same draw: the mask only removes voxels
    assert torch.equal(rs_pseudo_label(xi, psi, sm, generator=torch.Generator().manual_seed(0), ignore_fraction=0.0),
                       plain)
    both = rs_pseudo_label(xi, psi, sm, generator=torch.Generator().manual_seed(0), min_confidence=0.7,
                           ignore_fraction=0.125)
    assert torch.equal(both == IGNORE_LABEL, ignored | (rs_pseudo_label(
        xi, psi, sm, generator=torch.Generator().manual_seed(0), min_confidence=0.7) == IGNORE_LABEL))
    with pytest.raises(ValueError, match=r"ignore_fraction must be in \[0, 1\] or None, got -0.1"):
        rs_pseudo_label(xi, psi, sm, ignore_fraction=-0.1)


def test_start_model_votes_with_its_weight_and_confidence_counts_every_voter():
    # D_xi undecided (zero logits), D_psi leaning to class 1, the start model sure of class 0: its vote decides
    from ad_nnunet.method.rs_fusion import rs_score, votes

    sm = GaussianSmoothing(2, dim=2)
    xi = torch.zeros(1, 2, 6, 6)
    psi = torch.zeros(1, 2, 6, 6)
    psi[:, 1] = 1.0
    start = torch.zeros(1, 2, 6, 6)
    start[:, 0] = 8.0
    draw = lambda: dict(generator=torch.Generator().manual_seed(0))  # noqa: E731 - the same Gumbel draw each time
    two = rs_score(xi, psi, sm, **draw())
    three = rs_score(xi, psi, sm, **draw(), logits_start=start, start_weight=1.5)
    torch.testing.assert_close(three, two + 1.5 * torch.softmax(start, dim=1))
    torch.testing.assert_close(three.sum(1), torch.full((1, 6, 6), votes(start, 1.5)))
    assert votes() == votes(None, 1.5) == 2.0
    assert torch.equal(rs_score(xi, psi, sm, **draw(), logits_start=start, start_weight=0.0), two)
    assert (rs_pseudo_label(xi, psi, sm, **draw()) == 1).all()  # without the start: D_psi's class
    assert (rs_pseudo_label(xi, psi, sm, **draw(), logits_start=start, start_weight=1.5) == 0).all()
    # kappa = max_c s_c / V with V = 3.5: about (0.5 from D_xi + 0.27 from D_psi + 1.5) / 3.5 = 0.65 for class 0
    masked = rs_pseudo_label(xi, psi, sm, **draw(), logits_start=start, start_weight=1.5, min_confidence=0.7)
    assert (masked == IGNORE_LABEL).all()
    with pytest.raises(ValueError, match="logits_start"):
        rs_score(xi, psi, sm, logits_start=start[:, :, :3])
    with pytest.raises(ValueError, match="start_weight"):
        rs_score(xi, psi, sm, logits_start=start, start_weight=-1.0)
