"""weight_interpolation: the final model of a fine-tuning run, (1 - a) * start + a * trained, on the U-Net only."""
import pytest
import torch
from torch import nn

from ad_nnunet.training.weight_interpolation import interpolate_towards, unet_state


class Decoder(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder  # registered twice, as dynamic-network-architectures' UNetDecoder does
        self.seg = nn.Conv3d(4, 2, 1)


class TinyADNet(nn.Module):
    """The state-dict layout of ADNet: encoder.*, decoder.* (with decoder.encoder.*), decoder_xi.*, decoder_psi.*."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv3d(1, 4, 3)
        self.decoder = Decoder(self.encoder)
        self.decoder_xi = nn.Conv3d(4, 2, 1)
        self.decoder_psi = nn.Conv3d(4, 2, 1)
        self.register_buffer("steps", torch.tensor(3))  # not floating point: never interpolated


def test_interpolation_mixes_the_unet_and_keeps_the_other_decoders():
    torch.manual_seed(0)
    net = TinyADNet()
    start = unet_state(net.state_dict())
    assert set(start) == {"encoder.weight", "encoder.bias", "decoder.encoder.weight", "decoder.encoder.bias",
                          "decoder.seg.weight", "decoder.seg.bias"}
    with torch.no_grad():  # "training"
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    interpolate_towards(net, start, 0.25)
    after = net.state_dict()
    for k in start:
        torch.testing.assert_close(after[k], 0.75 * start[k] + 0.25 * trained[k])
    for k in ("decoder_xi.weight", "decoder_psi.bias", "steps"):
        assert torch.equal(after[k], trained[k])
    assert net.decoder.encoder.weight is net.encoder.weight  # still one tensor

    interpolate_towards(net, start, 0.0)
    for k in start:
        assert torch.equal(net.state_dict()[k], start[k])


def test_interpolation_refuses_other_weights_and_weights_outside_zero_one():
    net = TinyADNet()
    start = unet_state(net.state_dict())
    with pytest.raises(ValueError, match="must be in"):
        interpolate_towards(net, start, 1.5)
    with pytest.raises(ValueError, match="1 keys differ.*decoder.seg.bias"):
        interpolate_towards(net, {k: v for k, v in start.items() if k != "decoder.seg.bias"}, 0.5)
