import math

import pytest
import torch

from ad_nnunet.method.diffusion import LinearDiffusionSchedule, encode_labels


def _label_map(seed: int = 0, shape=(2, 1, 6, 5, 4), num_classes: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, shape, generator=g)


def test_encode_labels_values_and_shape():
    seg = torch.tensor([[[[0, 1], [2, 1]]]])  # (1, 1, 2, 2)
    x0 = encode_labels(seg, 3)
    assert x0.shape == (1, 3, 2, 2) and x0.dtype == torch.float32
    expected = -torch.ones(1, 3, 2, 2)
    expected[0, 0, 0, 0] = expected[0, 1, 0, 1] = expected[0, 2, 1, 0] = expected[0, 1, 1, 1] = 1
    assert torch.equal(x0, expected)


@pytest.mark.parametrize("bad", [torch.tensor([[[[0, 3]]]]), torch.tensor([[[[-1, 0]]]])])
def test_encode_labels_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"seg values must lie in \[0, 3\)"):
        encode_labels(bad, 3)


def test_encode_labels_rejects_bad_shape_and_dtype():
    with pytest.raises(ValueError, match=r"seg must have shape \(B, 1"):
        encode_labels(torch.zeros(1, 2, 3, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"seg must be an integer label map"):
        encode_labels(torch.zeros(1, 1, 3, 3), 3)


def test_schedule_constants():
    s = LinearDiffusionSchedule(1000)
    assert s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, abs=1e-12)
    assert bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert torch.allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    # rescaled schedule: T=100 uses 10x larger betas
    s100 = LinearDiffusionSchedule(100)
    assert s100.betas[0].item() == pytest.approx(1e-3) and s100.betas[-1].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"gives betas > 1"):
        LinearDiffusionSchedule(10)  # betas would exceed 1


def test_sample_timesteps_range_and_seed():
    s = LinearDiffusionSchedule(1000)
    t = s.sample_timesteps(5000, "cpu", torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and t.shape == (5000,)
    assert int(t.min()) >= 0 and int(t.max()) < 1000
    assert abs(t.double().mean().item() - 499.5) < 15
    assert torch.equal(t, s.sample_timesteps(5000, "cpu", torch.Generator().manual_seed(1)))


def test_q_sample_statistics():
    s = LinearDiffusionSchedule(1000)
    n = 40000
    x0 = torch.tensor([1.0, -1.0]).repeat(n // 2).view(n, 1)
    t = torch.tensor([10, 500]).repeat_interleave(n // 2)
    torch.manual_seed(0)
    xt = s.q_sample(x0, t)[:, 0].double()
    for tt in (10, 500):
        abar = s.alphas_cumprod[tt].item()
        for sign in (1.0, -1.0):
            vals = xt[(t == tt) & (x0[:, 0] == sign)]
            tol = 4 * math.sqrt((1 - abar) / vals.numel())
            assert vals.mean().item() == pytest.approx(sign * math.sqrt(abar), abs=tol)
            assert vals.var().item() == pytest.approx(1 - abar, rel=0.06)
    # explicit noise gives the closed form exactly
    noise = torch.randn(4, 3)
    t4 = torch.tensor([0, 1, 998, 999])
    x = torch.randn(4, 3)
    out = s.q_sample(x, t4, noise)
    a = s.sqrt_alphas_cumprod[t4].float()[:, None]
    b = s.sqrt_one_minus_alphas_cumprod[t4].float()[:, None]
    assert torch.allclose(out, a * x + b * noise)


def test_q_sample_validates_shapes():
    s = LinearDiffusionSchedule(1000)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        s.q_sample(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"noise shape \(2, 4\) differs"):
        s.q_sample(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))


def test_ddim_timesteps_matches_guided_diffusion_respacing():
    s = LinearDiffusionSchedule(1000)
    assert s.ddim_timesteps(10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert s.ddim_timesteps(2) == [999, 0]
    assert s.ddim_timesteps(3) == [999, 500, 0]
    assert s.ddim_timesteps(1) == [999]
    assert s.ddim_timesteps(1000) == list(range(999, -1, -1))
    assert LinearDiffusionSchedule(100).ddim_timesteps(4) == [99, 66, 33, 0]


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.0])
def test_ddim_timesteps_validation(bad):
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 1000\]"):
        LinearDiffusionSchedule(1000).ddim_timesteps(bad)


def _oracle(label: torch.Tensor, num_classes: int, calls: list):
    logits = 30.0 * encode_labels(label, num_classes)  # softmax saturates: x0_hat == x0 to float precision

    def denoise_fn(x_t, t):
        calls.append((x_t.clone(), t.clone()))
        return logits.clone()

    return denoise_fn, logits


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_with_oracle_recovers_label_and_trajectory_ends_at_x0(eta):
    s = LinearDiffusionSchedule(1000)
    label = _label_map()
    x0 = encode_labels(label, 3)
    calls = []
    fn, logits = _oracle(label, 3, calls)
    out = s.ddim_sample(fn, x0.shape, num_steps=10, eta=eta, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.argmax(1, keepdim=True), label)
    assert torch.equal(out, logits)
    assert [int(t[0]) for _, t in calls] == s.ddim_timesteps(10)
    assert all(t.dtype == torch.long and t.shape == (2,) for _, t in calls)
    # the input at the last step (t = 0) is within sqrt(1 - abar_0) * |eps| of x0
    x_last = calls[-1][0]
    eps_bound = math.sqrt(1 - s.alphas_cumprod[0].item()) * (1 + 6)
    assert (x_last - x0).abs().max().item() < eps_bound
    if eta == 0.0:
        # with exact x0 predictions DDIM keeps eps fixed: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for one eps
        eps = None
        for x_t, t in calls:
            abar = s.alphas_cumprod[int(t[0])].item()
            e = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
            eps = e if eps is None else eps
            assert torch.allclose(e, eps, atol=1e-3)


def test_ddim_deterministic_with_same_seed_and_no_grad():
    s = LinearDiffusionSchedule(1000)
    net = torch.nn.Conv3d(3, 3, 1)

    def fn(x_t, t):
        return net(x_t) + t.view(-1, 1, 1, 1, 1).float() * 1e-3

    a = s.ddim_sample(fn, (2, 3, 4, 4, 4), num_steps=5, generator=torch.Generator().manual_seed(7))
    b = s.ddim_sample(fn, (2, 3, 4, 4, 4), num_steps=5, generator=torch.Generator().manual_seed(7))
    c = s.ddim_sample(fn, (2, 3, 4, 4, 4), num_steps=5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not a.requires_grad
    d = s.ddim_sample(fn, (2, 3, 4, 4, 4), num_steps=5, eta=1.0, generator=torch.Generator().manual_seed(7))
    e = s.ddim_sample(fn, (2, 3, 4, 4, 4), num_steps=5, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(d, e) and not torch.equal(a, d)


def test_ddim_sample_validation():
    s = LinearDiffusionSchedule(1000)
    fn = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 1000\], got 0"):
        s.ddim_sample(fn, (1, 2, 3, 3), num_steps=0)
    with pytest.raises(ValueError, match=r"num_steps must be an int in \[1, 1000\], got 1001"):
        s.ddim_sample(fn, (1, 2, 3, 3), num_steps=1001)
    with pytest.raises(ValueError, match=r"eta must be >= 0"):
        s.ddim_sample(fn, (1, 2, 3, 3), eta=-0.1)
