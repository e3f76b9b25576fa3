import math
from collections import Counter

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

from ad_nnunet.method.svda import ALL_OPS, SVDATransform, svda_training_transforms


def _seed(s: int) -> None:
    np.random.seed(s)
    torch.manual_seed(s)


def _blocks(shape, seed=0) -> torch.Tensor:
    """A label map of a few large boxes, (1, *shape) int16."""
    g = np.random.default_rng(seed)
    seg = np.zeros(shape, dtype=np.int16)
    for label in (1, 2, 3):
        lo = [g.integers(0, s // 2) for s in shape]
        hi = [l + g.integers(s // 4, s // 2) for l, s in zip(lo, shape)]
        seg[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    return torch.from_numpy(seg)[None]


def test_k_of_n_sampling_frequencies_and_reproducibility():
    t = SVDATransform((2, 2), num_ops=3, p_op=0.7)
    image = torch.zeros(1, 3, 3)
    _seed(0)
    draws = [t.get_parameters(image=image)["ops"] for _ in range(3000)]
    assert max(len(d) for d in draws) <= 3
    assert all(len(set(d)) == len(d) for d in draws)
    counts = Counter(o for d in draws for o in d)
    expected = 3 / 6 * 0.7
    for op in ALL_OPS:
        assert counts[op] / len(draws) == pytest.approx(expected, abs=0.035), op
    # number of active ops is Binomial(3, 0.7)
    n_active = Counter(len(d) for d in draws)
    for k, p in enumerate([0.3 ** 3, 3 * 0.7 * 0.3 ** 2, 3 * 0.7 ** 2 * 0.3, 0.7 ** 3]):
        assert n_active[k] / len(draws) == pytest.approx(p, abs=0.035)
    _seed(0)
    again = [t.get_parameters(image=image)["ops"] for _ in range(3000)]
    assert again == draws


def test_spatial_ops_are_listed_first_and_get_parameters_is_pure_sampling():
    t = SVDATransform((6, 6), num_ops=6, p_op=1.0)
    _seed(1)
    image = torch.rand(1, 9, 9)
    before = image.clone()
    params = t.get_parameters(image=image)
    assert params["ops"][:2] == ("rotation", "scaling") and set(params["ops"]) == set(ALL_OPS)
    assert torch.equal(image, before)


@pytest.mark.parametrize("shape,patch", [((2, 20, 24, 22), (12, 16, 14)), ((2, 40, 36), (32, 30))])
def test_output_shape_equals_patch_size(shape, patch):
    t = SVDATransform(patch, num_ops=6, p_op=1.0)
    _seed(2)
    out = t(image=torch.rand(shape), segmentation=_blocks(shape[1:]))
    assert out["image"].shape == (shape[0], *patch)
    assert out["segmentation"].shape == (1, *patch)
    assert out["segmentation"].dtype == torch.int16
    assert torch.isfinite(out["image"]).all()


def test_p_op_zero_is_pure_center_crop():
    t = SVDATransform((8, 10, 6), num_ops=3, p_op=0.0)
    _seed(3)
    img = torch.rand(1, 12, 13, 10)
    seg = _blocks((12, 13, 10))
    out = t(image=img.clone(), segmentation=seg.clone())
    # batchgeneratorsv2 centres at floor(S / 2): start = S // 2 - P // 2
    sl = (slice(None), slice(2, 10), slice(1, 11), slice(2, 8))
    assert torch.equal(out["image"], img[sl])
    assert torch.equal(out["segmentation"], seg[sl])


@pytest.mark.parametrize("dim", [2, 3])
def test_image_and_label_stay_aligned_under_rotation_and_scaling(dim):
    shape = (40, 44, 36)[:dim]
    patch = (28, 32, 24)[:dim]
    seg = _blocks(shape, seed=dim)
    # the image is the label map's one-hot encoding: its interpolated argmax must land where the label map does
    onehot = torch.nn.functional.one_hot(seg[0].long(), 4).movedim(-1, 0).float()
    t = SVDATransform(patch, num_ops=2, p_op=1.0, ops=("rotation", "scaling"))
    crop = tuple(slice(s // 2 - p // 2, s // 2 - p // 2 + p) for s, p in zip(shape, patch))
    for s in range(5):
        _seed(10 + s)
        out = t(image=onehot.clone(), segmentation=seg.clone())
        img_label, lab = out["image"].argmax(0), out["segmentation"][0]
        valid = lab >= 0
        agreement = (img_label == lab)[valid].float().mean().item()
        assert agreement > 0.99
        # the check is sensitive: the untransformed crop does not match
        assert (seg[0][crop] == lab)[valid].float().mean().item() < agreement - 0.02


def test_rotation_is_about_first_axis_only_and_bounded():
    t = SVDATransform((8, 8, 8), num_ops=1, p_op=1.0, ops=("rotation",))
    _seed(4)
    for _ in range(50):
        affine = t.get_parameters(image=torch.zeros(1, 10, 10, 10))["spatial"]["affine"]
        assert np.allclose(affine[0], [1, 0, 0]) and np.allclose(affine[:, 0], [1, 0, 0])
        angle = math.atan2(affine[2, 1], affine[1, 1])
        assert abs(angle) <= math.radians(15) + 1e-9
    t2 = SVDATransform((8, 8), num_ops=1, p_op=1.0, ops=("rotation",))
    angles = []
    for _ in range(200):
        affine = t2.get_parameters(image=torch.zeros(1, 10, 10))["spatial"]["affine"]
        angles.append(math.atan2(affine[1, 0], affine[0, 0]))
    assert max(abs(a) for a in angles) <= math.radians(15) + 1e-9
    assert max(angles) > math.radians(10) and min(angles) < -math.radians(10)


def test_scaling_is_isotropic_in_range():
    t = SVDATransform((8, 8, 8), num_ops=1, p_op=1.0, ops=("scaling",))
    _seed(5)
    factors = []
    for _ in range(100):
        affine = t.get_parameters(image=torch.zeros(1, 10, 10, 10))["spatial"]["affine"]
        assert np.allclose(affine, np.eye(3) * affine[0, 0])
        factors.append(affine[0, 0])
    assert 0.7 <= min(factors) and max(factors) <= 1.0 and max(factors) - min(factors) > 0.2


def test_intensity_ops_leave_the_label_alone():
    shape, patch = (14, 16, 12), (10, 12, 8)
    seg = _blocks(shape)
    crop = (slice(None),) + tuple(slice(s // 2 - p // 2, s // 2 - p // 2 + p) for s, p in zip(shape, patch))
    t = SVDATransform(patch, num_ops=4, p_op=1.0, ops=("blur", "brightness", "contrast", "gamma"))
    _seed(6)
    img = torch.rand(2, *shape) + 0.5
    out = t(image=img.clone(), segmentation=seg.clone())
    assert torch.equal(out["segmentation"], seg[crop])
    assert not torch.allclose(out["image"], img[crop])


def test_validation():
    with pytest.raises(ValueError):
        SVDATransform((8, 8), num_ops=0)
    with pytest.raises(ValueError):
        SVDATransform((8, 8), num_ops=7)
    with pytest.raises(ValueError):
        SVDATransform((8, 8), p_op=1.5)
    with pytest.raises(ValueError):
        SVDATransform((8, 8), ops=("rotation", "elastic"))
    with pytest.raises(ValueError):
        SVDATransform((8,))
    with pytest.raises(ValueError):
        SVDATransform((8, 8)).get_parameters(image=torch.zeros(1, 10, 10, 10))


def _nnunet_pipeline(patch, dummy_2d, **kwargs):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return nnUNetTrainer.get_training_transforms(patch, (-math.pi / 6, math.pi / 6), kwargs.pop("ds", None),
                                                 (0, 1, 2), dummy_2d, **kwargs)


@pytest.mark.parametrize("dummy_2d", [False, True])
def test_pipeline_rewrite_on_real_nnunet_pipeline(dummy_2d):
    patch = (12, 16, 14)
    base = _nnunet_pipeline(patch, dummy_2d)
    n_base = len(base.transforms)
    new = svda_training_transforms(base, patch)
    assert len(base.transforms) == n_base  # base not modified
    types = [type(t) for t in new.transforms]
    assert types == [SVDATransform, MirrorTransform, RemoveLabelTansform]
    assert not any(isinstance(t, (RandomTransform, SpatialTransform, Convert3DTo2DTransform,
                                  Convert2DTo3DTransform)) for t in new.transforms)
    assert new.transforms[0].patch_size == patch

    _seed(7)
    img = torch.rand(1, 18, 22, 20)
    seg = _blocks((18, 22, 20))
    seg[:, :2] = -1  # the loader pads outside the image with -1
    out = new(image=img, segmentation=seg)
    assert out["image"].shape == (1, *patch) and out["segmentation"].shape == (1, *patch)
    assert int(out["segmentation"].min()) >= 0  # RemoveLabelTansform(-1, 0) still runs


def test_pipeline_rewrite_keeps_other_transforms_in_order():
    patch = (12, 16, 14)
    base = _nnunet_pipeline(patch, False, ds=[[1, 1, 1], [0.5, 0.5, 0.5]], use_mask_for_norm=[True],
                            regions=[[1, 2], [2]], ignore_label=None)
    kept = [type(t).__name__ for t in base.transforms
            if not isinstance(t, (RandomTransform, SpatialTransform))]
    new = svda_training_transforms(base, patch, num_ops=2, p_op=0.5)
    assert [type(t).__name__ for t in new.transforms] == ["SVDATransform"] + kept
    assert kept[-1] == "DownsampleSegForDSTransform" and "MaskImageTransform" in kept
    assert new.transforms[0].num_ops == 2 and new.transforms[0].p_op == 0.5


def test_pipeline_rewrite_rejects_foreign_pipeline():
    with pytest.raises(ValueError):
        svda_training_transforms(ComposeTransforms([MirrorTransform(allowed_axes=(0,))]), (8, 8, 8))
