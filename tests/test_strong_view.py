"""The strong view of an unlabeled batch: intensity perturbation and CutMix that keeps pseudo-labels aligned."""
import pytest
import torch

from ad_nnunet.method.strong_view import strong_view


def batch(b=2, shape=(6, 8, 10)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((b, 1) + shape, generator=g)
    pseudo = torch.randint(0, 3, (b, 1) + shape, generator=g)
    return x, pseudo


def test_identity_when_every_perturbation_is_off():
    x, pseudo = batch()
    out, mixed = strong_view(x, pseudo, intensity_range=0.0, max_noise=0.0, p_cutmix=0.0)
    assert torch.allclose(out, x, atol=1e-6) and torch.equal(mixed, pseudo)


def test_intensity_only_is_affine_per_sample_and_keeps_labels():
    x, pseudo = batch()
    out, mixed = strong_view(x, pseudo, max_noise=0.0, p_cutmix=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mixed, pseudo)
    for i in range(x.shape[0]):  # x'_i = a x_i + c exactly, with a in [(1-r)^2, (1+r)^2]
        a = ((out[i] - out[i].mean()) * (x[i] - x[i].mean())).sum() / ((x[i] - x[i].mean()) ** 2).sum()
        assert torch.allclose(out[i], a * x[i] + (out[i] - a * x[i]).mean(), atol=1e-5)
        assert 0.75 ** 2 - 1e-6 <= float(a) <= 1.25 ** 2 + 1e-6


def test_cutmix_pastes_the_same_box_into_image_and_pseudo_label():
    x, pseudo = batch()
    out, mixed = strong_view(x, pseudo, intensity_range=0.0, max_noise=0.0, p_cutmix=1.0,
                             generator=torch.Generator().manual_seed(2))
    for i, j in ((0, 1), (1, 0)):
        from_partner = ~torch.isclose(out[i], x[i])  # voxels that changed (a box of the partner)
        assert from_partner.any()
        assert torch.allclose(out[i][from_partner], x[j][from_partner])
        changed_labels = mixed[i] != pseudo[i]
        assert torch.equal(mixed[i][from_partner], pseudo[j][from_partner])
        assert not (changed_labels & ~from_partner).any()  # labels change only inside the box
        coords = from_partner[0].nonzero()
        lo, hi = coords.min(0).values, coords.max(0).values + 1
        box = from_partner[0][lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        assert box.float().mean() > 0.9  # one box (a few voxels may coincide by chance)
        sides = (hi - lo).float() / torch.tensor(x.shape[2:])
        assert bool(((sides >= 0.15) & (sides <= 0.75)).all())


def test_repeatable_with_a_generator_and_inputs_untouched():
    x, pseudo = batch()
    x0, p0 = x.clone(), pseudo.clone()
    a = strong_view(x, pseudo, generator=torch.Generator().manual_seed(3))
    b = strong_view(x, pseudo, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(x, x0) and torch.equal(pseudo, p0)


def test_single_sample_batches_get_no_cutmix_and_2d_works():
    x, pseudo = batch(b=1, shape=(12, 14))
    out, mixed = strong_view(x, pseudo, p_cutmix=1.0)
    assert out.shape == x.shape and torch.equal(mixed, pseudo)


@pytest.mark.parametrize("kwargs", [dict(intensity_range=1.0), dict(max_noise=-0.1), dict(p_cutmix=1.5)])
def test_bad_arguments(kwargs):
    x, pseudo = batch()
    with pytest.raises(ValueError):
        strong_view(x, pseudo, **kwargs)
    with pytest.raises(ValueError):
        strong_view(x, pseudo[:, :, :3])
