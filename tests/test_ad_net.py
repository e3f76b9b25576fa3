import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from _net_helpers import configuration
from ad_nnunet.export import unet_state_dict
from ad_nnunet.network.ad_net import ADNet, ADNetWithoutDiffusion, FrozenUNet, build_ad_network

NUM_CLASSES = 3


def build(dim=3, arch="PlainConvUNet", network_class=ADNet):
    torch.manual_seed(0)
    return build_ad_network(None, configuration(dim, arch=arch), 1, NUM_CLASSES, network_class=network_class)


@pytest.mark.parametrize("dim,arch", [(3, "PlainConvUNet"), (2, "PlainConvUNet"), (3, "ResidualEncoderUNet")])
def test_segment_path_is_exactly_a_stock_unet(dim, arch):
    net = build(dim, arch).eval()
    cfg = configuration(dim, arch=arch)
    stock = get_network_from_plans(cfg.network_arch_class_name, cfg.network_arch_init_kwargs,
                                   cfg.network_arch_init_kwargs_req_import, 1, NUM_CLASSES, deep_supervision=False)
    theta_path = list(net.encoder.parameters()) + list(net.decoder.parameters())
    assert sum(p.numel() for p in theta_path) == sum(p.numel() for p in stock.parameters())
    # the stock U-Net loads D_theta's weights as the export maps them and predicts the same
    stock.load_state_dict(unet_state_dict(net.state_dict()))  # strict: the export's mapping covers every key
    x = torch.randn(2, 1, *([16] * dim))
    out = net(x)
    assert torch.is_tensor(out) and out.shape == (2, NUM_CLASSES, *([16] * dim))
    torch.testing.assert_close(out, stock.eval()(x))


def test_state_dict_has_no_duplicated_encoder_and_loads_strictly():
    net = build()
    keys = list(net.state_dict())
    assert not [k for k in keys if ".encoder." in k], "decoders must not re-register the shared encoder"
    assert {k.split(".")[0] for k in keys} == {
        "encoder", "decoder", "decoder_psi", "decoder_xi", "stem_diffusion", "time_embedding", "temb_encoder",
        "temb_decoder_xi", "difficulty"}
    fresh = build()
    fresh.load_state_dict(net.state_dict(), strict=True)


def test_frozen_unet_predicts_with_the_given_weights_and_training_does_not_move_it():
    from ad_nnunet.training.weight_interpolation import unet_state

    start = build()
    net = build()
    with torch.no_grad():  # a different network than the start
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net(torch.randn(1, 1, 16, 16, 16)).sum().backward()  # live gradients, which the copy must not keep
    frozen = FrozenUNet(net, unet_state(start.state_dict()))
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(frozen(x), start.eval()(x))
    assert set(frozen.state_dict()) == set(unet_state(net.state_dict()))  # E and D_theta only
    assert not any(p.requires_grad or p.grad is not None for p in frozen.parameters())
    assert not any(p is q for p in frozen.parameters() for q in net.parameters())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    torch.testing.assert_close(frozen(x), start(x))
    wrong = {k: v for k, v in unet_state(start.state_dict()).items() if not k.startswith("decoder.seg_layers")}
    with pytest.raises(ValueError, match=r"do not fit the network's U-Net \(missing: \['decoder.seg_layers"):
        FrozenUNet(net, wrong)


def test_decoders_start_identical_but_own_their_parameters():
    from ad_nnunet.method.decoupling import ema_blend_

    net = build()
    theta = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    for twin in (net.decoder_psi, net.decoder_xi):
        assert twin.state_dict().keys() == theta.keys()
        assert all(torch.equal(v, theta[k]) for k, v in twin.state_dict().items())
        assert not {id(p) for p in twin.parameters()} & {id(p) for p in net.decoder.parameters()}
    # the EMA of identical decoders is a fixed point: D_theta starts as a working network, not a blend of two
    assert net.ema_sources == [net.decoder_xi, net.decoder_psi]
    ema_blend_(net.decoder, net.ema_sources, 0.99)
    for k, v in net.decoder.state_dict().items():
        torch.testing.assert_close(v, theta[k])
    with torch.no_grad():
        next(net.decoder_psi.parameters()).add_(1.0)
    assert not torch.equal(next(net.decoder_psi.parameters()), next(net.decoder.parameters()))


def test_train_mode_outputs_and_gradient_flow():
    net = build().train()
    x_l, x_u = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    x_t, t = torch.randn(2, NUM_CLASSES, 16, 16, 16), torch.tensor([3, 900])
    out = net(x_l, mode="train", x_t=x_t, t=t, x_unlabeled=x_u)
    assert set(out) == {"xi", "psi", "theta_u", "psi_u"}
    assert all(v.shape == (2, NUM_CLASSES, 16, 16, 16) for v in out.values())
    assert not out["psi_u"].requires_grad
    out["theta_u"].square().mean().backward()  # an L_u stand-in
    grads = {name: p.grad is not None and p.grad.abs().sum() > 0 for name, p in net.named_parameters()
             if p.requires_grad}
    assert all(v for k, v in grads.items() if k.startswith(("encoder.", "decoder.")))
    assert not any(v for k, v in grads.items() if k.startswith(("decoder_psi", "decoder_xi", "stem_diffusion",
                                                                 "time_embedding", "temb_")))


def test_theta_on_labeled_adds_D_theta_on_the_labeled_skips():
    net = build().eval()
    x_l, x_u = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    out = net(x_l, mode="train", x_unlabeled=x_u, theta_on_labeled=True)
    assert set(out) == {"psi", "theta", "theta_u", "psi_u"}
    torch.testing.assert_close(out["theta"], net(x_l))  # exactly what prediction computes on the labeled batch
    out["theta"].square().mean().backward()
    assert next(net.decoder.parameters()).grad is not None and next(net.decoder_psi.parameters()).grad is None


def test_every_parameter_gets_a_gradient_from_the_full_loss():
    """DDP (find_unused_parameters=False) needs every parameter in the graph of one train forward."""
    net = build().train()
    out = net(torch.randn(2, 1, 16, 16, 16), mode="train", x_t=torch.randn(2, NUM_CLASSES, 16, 16, 16),
              t=torch.tensor([10, 500]), x_unlabeled=torch.randn(2, 1, 16, 16, 16))
    sum(v.mean() for k, v in out.items() if k != "psi_u").backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_timestep_conditions_the_denoiser_only():
    net = build().eval()
    x, x_t = torch.randn(1, 1, 16, 16, 16), torch.randn(1, NUM_CLASSES, 16, 16, 16)
    with torch.no_grad():
        net.time_embedding.mlp[-1].bias.add_(1.0)  # make the (He-initialised) projections matter visibly
        a = net(x, mode="denoise", x_t=x_t, t=torch.tensor([1]))
        b = net(x, mode="denoise", x_t=x_t, t=torch.tensor([999]))
    assert not torch.allclose(a, b)


def test_without_diffusion_stream():
    net = build(network_class=ADNetWithoutDiffusion)
    assert not any(k.startswith(("decoder_xi", "stem_diffusion", "time_embedding")) for k in net.state_dict())
    out = net(torch.randn(1, 1, 16, 16, 16), mode="train", x_unlabeled=torch.randn(1, 1, 16, 16, 16))
    assert set(out) == {"psi", "theta_u", "psi_u"}
    assert net.ema_sources == [net.decoder_psi]
    with pytest.raises(RuntimeError, match="built without the diffusion stream"):
        net(torch.randn(1, 1, 16, 16, 16), mode="denoise")
    # the shared part is built from the same random draws as the full network's (the stream is built after it)
    full = build().state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, full[key]), key


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown ADNet mode"):
        build()(torch.randn(1, 1, 16, 16, 16), mode="nope")
