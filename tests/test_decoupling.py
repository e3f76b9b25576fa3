import pytest
import torch
from torch import nn

from ad_nnunet.method.decoupling import ema_blend_


class Tiny(nn.Module):
    def __init__(self, w: float, b: float, extra: bool = False, wide: bool = False):
        super().__init__()
        self.lin = nn.Linear(3 if wide else 2, 1)
        self.norm = nn.BatchNorm1d(1)
        with torch.no_grad():
            self.lin.weight.fill_(w)
            self.lin.bias.fill_(b)
            self.norm.weight.fill_(w)
            self.norm.running_mean.fill_(w)
        if extra:
            self.temb = nn.Linear(4, 1)  # like D_xi's timestep projection: only in one source

    def forward(self, x):
        return self.norm(self.lin(x))


def test_hand_example_three_modules():
    target = Tiny(1.0, 0.0)
    xi = Tiny(3.0, 2.0, extra=True)
    psi = Tiny(5.0, -4.0)
    n = ema_blend_(target, [xi, psi], momentum=0.9)
    assert n == 4  # lin.weight, lin.bias, norm.weight, norm.bias
    # theta <- 0.9 theta + 0.1 * mean(sources)
    assert torch.allclose(target.lin.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 4.0))
    assert torch.allclose(target.lin.bias, torch.full((1,), 0.9 * 0.0 + 0.1 * -1.0))
    assert torch.allclose(target.norm.weight, torch.full((1,), 0.9 * 1.0 + 0.1 * 4.0))
    # sources untouched
    assert torch.allclose(xi.lin.weight, torch.full((1, 2), 3.0))
    assert torch.allclose(psi.lin.bias, torch.full((1,), -4.0))


def test_buffers_untouched_and_mismatches_skipped():
    target = Tiny(1.0, 0.0)
    n = ema_blend_(target, [Tiny(3.0, 2.0, wide=True), Tiny(5.0, -4.0)], momentum=0.5)
    # lin.weight differs in shape in one source: skipped; the other three match everywhere
    assert n == 3
    assert torch.allclose(target.lin.weight, torch.ones(1, 2))
    assert torch.allclose(target.lin.bias, torch.full((1,), 0.5 * 0.0 + 0.5 * -1.0))
    assert torch.equal(target.norm.running_mean, torch.ones(1))
    assert int(target.norm.num_batches_tracked) == 0


def test_grads_and_requires_grad_preserved():
    target = Tiny(1.0, 0.0)
    target.lin.bias.requires_grad_(False)
    target(torch.randn(4, 2)).pow(2).sum().backward()
    grads = {k: None if p.grad is None else p.grad.clone() for k, p in target.named_parameters()}
    ema_blend_(target, [Tiny(3.0, 2.0), Tiny(5.0, -4.0)])
    for k, p in target.named_parameters():
        assert p.requires_grad == (k != "lin.bias")
        assert (p.grad is None) == (grads[k] is None)
        if p.grad is not None:
            assert torch.equal(p.grad, grads[k])
    assert target.lin.weight.grad_fn is None and target.lin.weight.is_leaf


def test_errors():
    with pytest.raises(ValueError, match=r"sources must not be empty"):
        ema_blend_(Tiny(1.0, 0.0), [])
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\]"):
        ema_blend_(Tiny(1.0, 0.0), [Tiny(1.0, 0.0)], momentum=1.5)
    with pytest.raises(ValueError, match=r"no parameter of Linear matches"):
        ema_blend_(nn.Linear(2, 2), [nn.Conv1d(1, 1, 1)])  # no shared name+shape: a wiring bug
