"""Warm start from an nnU-Net U-Net: at step 0 every A&D decoder computes exactly that U-Net."""
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from _net_helpers import configuration
from ad_nnunet.errors import ADInputError
from ad_nnunet.network.ad_net import build_ad_network
from ad_nnunet.training.warm_start import warm_start_state_dict

NUM_CLASSES = 3


def stock_unet(cfg, seed):
    torch.manual_seed(seed)
    net = get_network_from_plans(cfg.network_arch_class_name, cfg.network_arch_init_kwargs,
                                 cfg.network_arch_init_kwargs_req_import, 1, NUM_CLASSES, deep_supervision=True)
    with torch.no_grad():  # nnU-Net's init leaves biases at 0; make every parameter matter
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("dim,arch", [(3, "PlainConvUNet"), (2, "PlainConvUNet"), (3, "ResidualEncoderUNet")])
def test_every_decoder_computes_the_nnunet_model_at_step_0(dim, arch):
    cfg = configuration(dim, arch=arch)
    unet = stock_unet(cfg, seed=1)
    torch.manual_seed(2)  # ADNet's own init differs from the U-Net's
    net = build_ad_network(None, cfg, 1, NUM_CLASSES, psi_deep_supervision=True)
    net.load_state_dict(warm_start_state_dict(net, unet.state_dict()), strict=True)
    net.eval()
    x = torch.randn(2, 1, *([16] * dim))
    with torch.no_grad():
        reference = unet(x)  # deep-supervision list, full resolution first
        torch.testing.assert_close(net(x), reference[0])
        out = net(x, mode="train", x_t=torch.randn(2, NUM_CLASSES, *([16] * dim)), t=torch.tensor([3, 900]),
                  x_unlabeled=x)
        for ours, theirs in zip(out["psi"], reference, strict=True):
            torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(out["xi"], reference[0])  # ignores x_t and t at step 0
        torch.testing.assert_close(out["theta_u"], reference[0])
        torch.testing.assert_close(out["psi_u"], reference[0])


def test_diffusion_inputs_start_inert_but_learn():
    cfg = configuration(3)
    net = build_ad_network(None, cfg, 1, NUM_CLASSES)
    net.load_state_dict(warm_start_state_dict(net, stock_unet(cfg, seed=1).state_dict()))
    for proj in list(net.temb_encoder) + list(net.temb_decoder_xi):
        assert not proj.weight.any() and not proj.bias.any()
    first_conv = next(p for p in net.stem_diffusion.parameters() if p.ndim == 5)
    assert not first_conv[:, 1:].any() and first_conv[:, :1].any()  # label channels 0, image channel copied
    x_t = torch.randn(2, NUM_CLASSES, 16, 16, 16)
    net(torch.randn(2, 1, 16, 16, 16), mode="denoise", x_t=x_t, t=torch.tensor([5, 500])).square().mean().backward()
    assert net.temb_encoder[0].weight.grad.abs().sum() > 0
    assert first_conv.grad[:, 1:].abs().sum() > 0


def test_model_of_other_plans_is_a_clear_error():
    net = build_ad_network(None, configuration(3), 1, NUM_CLASSES)
    other = stock_unet(configuration(3, features=(4, 8, 32)), seed=1).state_dict()
    with pytest.raises(ADInputError, match="same plans"):
        warm_start_state_dict(net, other, "model.pth")
    with pytest.raises(ADInputError, match="model.pth has no parameter"):
        same = stock_unet(configuration(3), seed=1).state_dict()
        warm_start_state_dict(net, {k: v for k, v in same.items() if not k.startswith("decoder.")}, "model.pth")
