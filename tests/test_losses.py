import math

import pytest
import torch
import torch.nn.functional as F

from ad_nnunet.method.losses import IGNORE_LABEL, dice_ce_loss, sigmoid_rampup


def _batch(shape=(2, 3, 6, 5, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float32)
    target = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g)
    return logits, target


@pytest.mark.parametrize("shape", [(2, 3, 6, 5, 4), (3, 4, 7, 9), (2, 2, 5, 5, 5)])
def test_matches_nnunet_dc_and_ce_loss(shape):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    reference = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                               weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    logits, target = _batch(shape)
    ours = dice_ce_loss(logits, target)
    theirs = reference(logits, target)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)

    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    dice_ce_loss(a, target).backward()
    reference(b, target).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_ones_weights_equal_unweighted():
    logits, target = _batch()
    assert dice_ce_loss(logits, target, torch.ones(3)).item() == pytest.approx(dice_ce_loss(logits, target).item(),
                                                                              abs=1e-6)


def _manual_dice(probs_c, onehot_c, smooth=1e-5):
    return (2 * (probs_c * onehot_c).sum() + smooth) / (probs_c.sum() + onehot_c.sum() + smooth)


def test_weighted_dice_is_mean_of_weighted_foreground_dice():
    logits, target = _batch()
    w = torch.tensor([0.5, 2.0, 3.0])
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    dices = [_manual_dice(probs[:, c], onehot[:, c]) for c in (1, 2)]
    expected = F.cross_entropy(logits, target[:, 0], weight=w) - (2.0 * dices[0] + 3.0 * dices[1]) / 2
    assert dice_ce_loss(logits, target, w).item() == pytest.approx(expected.item(), abs=1e-6)


def test_zero_weight_removes_class_contribution():
    logits, target = _batch()
    w = torch.tensor([1.0, 1.0, 0.0])
    a = logits.clone().requires_grad_(True)
    dice_ce_loss(a, target, w).backward()

    # reference without class 2 at all: CE ignores its voxels, Dice keeps only class 1 (mean over 2 foreground)
    b = logits.clone().requires_grad_(True)
    probs = torch.softmax(b, 1)
    onehot = F.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    ref = F.cross_entropy(b, target[:, 0], ignore_index=2) - _manual_dice(probs[:, 1], onehot[:, 1]) / 2
    ref.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_gradient_finite():
    logits, target = _batch()
    x = logits.clone().requires_grad_(True)
    loss = dice_ce_loss(x, target, torch.tensor([0.1, 5.0, 1e-3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # absent foreground class: still finite
    zero_target = torch.zeros_like(target)
    y = logits.clone().requires_grad_(True)
    loss = dice_ce_loss(y, zero_target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(y.grad).all()


def test_half_precision_logits_with_float32_weights():
    logits, target = _batch()
    x = logits.to(torch.bfloat16).requires_grad_(True)
    loss = dice_ce_loss(x, target, torch.tensor([1.0, 2.0, 0.5]))
    loss.backward()
    assert loss.item() == pytest.approx(dice_ce_loss(logits, target, torch.tensor([1.0, 2.0, 0.5])).item(), abs=2e-2)
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_input_validation():
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"target must have shape \(2, 1, 6, 5, 4\)"):
        dice_ce_loss(logits, target[:, :, :-1])
    with pytest.raises(ValueError, match=r"class_weights must have shape \(3,\)"):
        dice_ce_loss(logits, target, torch.ones(4))


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(-10, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(3, 0) == 1.0
    with pytest.raises(ValueError, match=r"rampup_length must be >= 0"):
        sigmoid_rampup(1, -1)


@pytest.mark.parametrize("weights", [None, torch.tensor([0.5, 2.0, 3.0])], ids=["unweighted", "weighted"])
def test_ignored_voxels_count_nowhere(weights):
    logits, target = _batch()
    ignored = torch.rand(target.shape, generator=torch.Generator().manual_seed(3)) < 0.3
    masked_target = target.masked_fill(ignored, IGNORE_LABEL)
    a = logits.clone().requires_grad_(True)
    loss = dice_ce_loss(a, masked_target, weights)
    loss.backward()
    # the ignored voxels get no gradient, and what they hold (logits, label) does not change the loss
    assert torch.all(a.grad.movedim(1, -1)[ignored[:, 0]] == 0)
    other_logits = torch.where(ignored, torch.randn_like(logits), logits)
    assert dice_ce_loss(other_logits, masked_target, weights).item() == pytest.approx(loss.item(), abs=1e-6)
    # by hand: weighted CE over the kept voxels, Dice sums over the kept voxels
    kept = ~ignored[:, 0]
    w = torch.ones(3) if weights is None else weights
    probs = torch.softmax(logits, 1).movedim(1, -1)[kept]
    onehot = F.one_hot(target[:, 0][kept], 3).float()
    ce = F.cross_entropy(logits.movedim(1, -1)[kept], target[:, 0][kept], weight=w)
    dice = torch.stack([w[c] * _manual_dice(probs[:, c], onehot[:, c]) for c in (1, 2)]).mean()
    assert loss.item() == pytest.approx((ce - dice).item(), abs=1e-6)


def test_matches_nnunet_dc_and_ce_loss_with_an_ignore_label():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    logits, target = _batch()
    ignored = torch.rand(target.shape, generator=torch.Generator().manual_seed(4)) < 0.25
    # nnU-Net's ignore label is the first index after the classes; ours is IGNORE_LABEL
    reference = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                               weight_ce=1, weight_dice=1, ignore_label=3, dice_class=MemoryEfficientSoftDiceLoss)
    ours = dice_ce_loss(logits, target.masked_fill(ignored, IGNORE_LABEL))
    assert ours.item() == pytest.approx(reference(logits, target.masked_fill(ignored, 3)).item(), abs=1e-5)


def test_all_voxels_ignored_gives_zero_loss_and_zero_gradient():
    logits, target = _batch()
    a = logits.clone().requires_grad_(True)
    loss = dice_ce_loss(a, torch.full_like(target, IGNORE_LABEL))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(a.grad == 0)
