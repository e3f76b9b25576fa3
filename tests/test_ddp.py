"""ADNet under torch DDP (gloo, 2 CPU processes): what nnU-Net's -num_gpus relies on, minus the GPUs.

nnU-Net wraps the network in DistributedDataParallel(find_unused_parameters=False). Every gradient-carrying output
of an A&D step must therefore come from one DDP forward, every trainable parameter must receive a gradient, the
no-grad DDIM passes must go through the wrapper without disturbing the reducer, and the DRS statistics must agree
across ranks.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from _net_helpers import configuration
from ad_nnunet.method.diffusion import LinearDiffusionSchedule, encode_labels
from ad_nnunet.method.losses import dice_ce_loss
from ad_nnunet.network.ad_net import build_ad_network

NUM_CLASSES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, result_dir: str, psi_deep_supervision: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # identical initial weights on every rank, as DDP broadcasts anyway
    net = DDP(build_ad_network(None, configuration(), 1, NUM_CLASSES, psi_deep_supervision=psi_deep_supervision))
    schedule = LinearDiffusionSchedule(1000)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(100 + rank)  # different data per rank
    for _ in range(2):  # an unused parameter only surfaces in DDP's second iteration
        x_l, x_u = (torch.randn(1, 1, 16, 16, 16, generator=generator) for _ in range(2))
        y = torch.randint(0, NUM_CLASSES, (1, 1, 16, 16, 16), generator=generator)
        with torch.no_grad():
            logits_xi_u = schedule.ddim_sample(lambda x_t, t: net(x_u, mode="denoise", x_t=x_t, t=t),
                                               (1, NUM_CLASSES, 16, 16, 16), num_steps=2)
        t = schedule.sample_timesteps(1, generator=generator)
        out = net(x_l, mode="train", x_t=schedule.q_sample(encode_labels(y, NUM_CLASSES), t), t=t, x_unlabeled=x_u)
        weights = net.module.difficulty.update(out["xi"].detach(), y)
        pseudo = (logits_xi_u.softmax(1) + out["psi_u"].softmax(1)).argmax(1, keepdim=True)
        if psi_deep_supervision:  # every head, the lowest with nnU-Net's DDP weight of 1e-6 (0 would leave it unused)
            targets = [torch.nn.functional.interpolate(y.float(), o.shape[2:], mode="nearest-exact").long()
                       for o in out["psi"]]
            loss_psi = sum(w * dice_ce_loss(o, t, weights)
                           for w, o, t in zip([1.0] * (len(targets) - 1) + [1e-6], out["psi"], targets))
        else:
            loss_psi = dice_ce_loss(out["psi"], y, weights)
        loss = dice_ce_loss(out["xi"], y) + loss_psi + dice_ce_loss(out["theta_u"], pseudo)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    grads = torch.cat([p.grad.flatten() for p in net.parameters() if p.requires_grad])
    torch.save({"grads": grads, "weights": net.module.difficulty.weights,
                "params": torch.cat([p.detach().flatten() for p in net.parameters()])},
               os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("psi_deep_supervision", [True, False], ids=["ADTrainer", "ADTrainer_paper"])
def test_ad_step_under_ddp(tmp_path, psi_deep_supervision):
    world_size = 2
    mp.spawn(_worker, args=(world_size, _free_port(), str(tmp_path), psi_deep_supervision), nprocs=world_size,
             join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size))
    torch.testing.assert_close(r0["grads"], r1["grads"])  # gradients were all-reduced
    torch.testing.assert_close(r0["params"], r1["params"])  # so the replicas stayed identical
    torch.testing.assert_close(r0["weights"], r1["weights"])  # DRS statistics were summed across ranks
