import math

import pytest
import torch
import torch.distributed as dist

from ad_nnunet.method.difficulty import DifficultyWeights


def _logits_for(pred, num_classes):
    """Logits (1, C, N) whose argmax is the 1D label list ``pred``."""
    return 5.0 * torch.nn.functional.one_hot(torch.tensor(pred), num_classes).T[None].float()


def _target(labels):
    return torch.tensor(labels)[None, None]


def test_initial_state_is_in_buffers():
    dw = DifficultyWeights(3)
    sd = dw.state_dict()
    assert set(sd) == {"last_dice", "learn", "unlearn", "dice_weight", "weights", "num_updates"}
    assert torch.allclose(sd["last_dice"], torch.full((3,), 1e-8))
    assert torch.equal(sd["weights"], torch.ones(3)) and torch.equal(sd["dice_weight"], torch.ones(3))
    assert sd["num_updates"].dtype == torch.long and int(sd["num_updates"]) == 0


def test_two_step_example_by_hand():
    dw = DifficultyWeights(2, accumulate_iters=50, exponent=0.2, eps=1e-8, normalize=False)  # official formula
    m, eps, C = 0.98, 1e-8, 2
    target = [0, 0, 1, 1]

    # step 1: prediction [0, 1, 1, 1]
    # class 0: |P∩G| = 1, |P| + |G| = 1 + 2 -> 2/3; class 1: |P∩G| = 2, |P| + |G| = 3 + 2 -> 4/5
    w1 = dw.update(_logits_for([0, 1, 1, 1], 2), _target(target))
    dice1 = [2 / 3, 4 / 5]
    learn = [(1 - m) * (d - eps) * math.log(d / eps) for d in dice1]  # both improved from eps
    unlearn = [0.0, 0.0]
    dwt = [m * 1.0 + (1 - m) * (1 - d) for d in dice1]
    expected1 = [C * ((u + eps) / (l + eps)) ** 0.2 * w for u, l, w in zip(unlearn, learn, dwt)]
    assert w1.tolist() == pytest.approx(expected1, rel=1e-5)

    # step 2: prediction [0, 0, 1, 0]
    # class 0: |P∩G| = 2, |P| + |G| = 3 + 2 -> 4/5 (improves); class 1: |P∩G| = 1, |P| + |G| = 1 + 2 -> 2/3 (worse)
    w2 = dw.update(_logits_for([0, 0, 1, 0], 2), _target(target))
    dice2 = [4 / 5, 2 / 3]
    r0 = math.log(dice2[0] / dice1[0])
    r1 = math.log(dice2[1] / dice1[1])
    learn = [m * learn[0] + (1 - m) * (dice2[0] - dice1[0]) * r0, m * learn[1]]
    unlearn = [m * unlearn[0], m * unlearn[1] + (1 - m) * (dice2[1] - dice1[1]) * r1]
    dwt = [m * w + (1 - m) * (1 - d) for w, d in zip(dwt, dice2)]
    expected2 = [C * ((u + eps) / (l + eps)) ** 0.2 * w for u, l, w in zip(unlearn, learn, dwt)]
    assert w2.tolist() == pytest.approx(expected2, rel=1e-5)
    # the class that got worse is weighted up relative to the one that improved
    assert w2[1] > w2[0]
    assert dw.last_dice.tolist() == pytest.approx(dice2, rel=1e-6)
    assert int(dw.num_updates) == 2
    # the returned tensor is a copy
    w2 += 1
    assert not torch.equal(w2, dw.weights)


def test_normalized_weights_are_the_official_ones_rescaled_to_mean_one():
    official = DifficultyWeights(3, normalize=False)
    normalized = DifficultyWeights(3)
    target = _target([0, 0, 1, 1, 2, 2])
    official_sums = []
    for pred in ([0, 1, 1, 1, 2, 0], [0, 0, 1, 2, 2, 2], [1, 0, 1, 1, 0, 2]):
        w_official = official.update(_logits_for(pred, 3), target)
        w = normalized.update(_logits_for(pred, 3), target)
        official_sums.append(w_official.sum().item())
        assert w.mean().item() == pytest.approx(1.0, rel=1e-6)
        assert w.tolist() == pytest.approx((3 * w_official / w_official.sum()).tolist(), rel=1e-5)
    # the official weights collapse in scale at the first update (every class "learns" from eps, unlearn is 0)
    assert official_sums[0] < 0.3


def test_normalized_weights_without_any_preference_are_uniform():
    dw = DifficultyWeights(2)
    dw.dice_weight.zero_()  # as after many perfect updates: every raw weight is 0
    dw.last_dice.fill_(1.0)
    w = dw.update(_logits_for([0, 0, 1, 1], 2), _target([0, 0, 1, 1]))
    assert w.tolist() == pytest.approx([1.0, 1.0])


def test_state_dict_round_trip_continues_identically(tmp_path):
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(2, 3, 5, 6, generator=g), torch.randint(0, 3, (2, 1, 5, 6), generator=g))
              for _ in range(6)]
    a = DifficultyWeights(3)
    for logits, target in inputs[:3]:
        a.update(logits, target)
    path = tmp_path / "dw.pt"
    torch.save(torch.nn.Sequential(a).state_dict(), path)  # as a submodule of a network

    b = DifficultyWeights(3)
    torch.nn.Sequential(b).load_state_dict(torch.load(path))
    assert int(b.num_updates) == 3
    for logits, target in inputs[3:]:
        assert torch.equal(a.update(logits, target), b.update(logits, target))


def test_absent_class_and_zero_dice_stay_finite():
    dw = DifficultyWeights(3, normalize=False)
    # class 2 is never predicted nor present; class 0 and 1 alternate between perfect and completely wrong
    for step in range(6):
        target = _target([0, 0, 1, 1])
        pred = [0, 0, 1, 1] if step % 2 else [1, 1, 0, 0]
        w = dw.update(_logits_for(pred, 3), target)
        assert torch.isfinite(w).all()
        assert all(torch.isfinite(getattr(dw, n)).all() for n in ("last_dice", "learn", "unlearn", "dice_weight"))
    # the absent class keeps its initial state, hence weight C * 1 * 1
    assert dw.last_dice[2].item() == pytest.approx(1e-8)
    assert dw.learn[2].item() == 0 and dw.unlearn[2].item() == 0 and dw.dice_weight[2].item() == 1
    assert w[2].item() == pytest.approx(3.0)


def test_validation():
    dw = DifficultyWeights(2)
    with pytest.raises(ValueError, match=r"logits must have shape \(B, 2"):
        dw.update(torch.zeros(1, 3, 4), _target([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"target must have shape \(1, 1, 4\)"):
        dw.update(torch.zeros(1, 2, 4), _target([0, 1, 0]))
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 2\)"):
        dw.update(torch.zeros(1, 2, 4), _target([0, 1, 2, 1]))
    with pytest.raises(ValueError, match=r"num_classes must be >= 2"):
        DifficultyWeights(1)


def test_single_process_distributed_path_matches(tmp_path):
    g = torch.Generator().manual_seed(1)
    inputs = [(torch.randn(2, 3, 4, 4, 4, generator=g), torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g))
              for _ in range(3)]
    plain = DifficultyWeights(3)
    expected = [plain.update(*x) for x in inputs]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DifficultyWeights(3)
        got = [ddp.update(*x) for x in inputs]
    finally:
        dist.destroy_process_group()
    for e, o in zip(expected, got):
        assert torch.equal(e, o)
