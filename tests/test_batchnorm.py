"""BatchNorm over two gloo processes' halves of a batch against torch's BatchNorm2d on the whole batch."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from geolearn.learn.batchnorm import SyncedBatchNorm2d, sync_batch_norms
from geolearn.models.retinanet import _joint_batch_norm

BATCH, CHANNELS = 6, 3


def _inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, 5, 4, generator=generator) * 3 + 2
    level = torch.randn(BATCH, CHANNELS, 2, 2, generator=generator) - 1  # a second pyramid level
    upstream = torch.randn(BATCH, CHANNELS, 5, 4, generator=generator)  # d(loss)/d(output)
    return x, level, upstream


def _layer():
    layer = nn.BatchNorm2d(CHANNELS)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    return layer


def _run(layer, x, level, upstream):
    """Output, input and weight gradients, running statistics; plus the joint two-level form's output."""
    x = x.clone().requires_grad_()
    out = layer(x)
    (out * upstream).sum().backward()
    joint, _ = _joint_batch_norm(layer, [x.detach(), level])
    return {"out": out.detach(), "grad": x.grad, "weight_grad": layer.weight.grad, "bias_grad": layer.bias.grad,
            "running_mean": layer.running_mean.clone(), "running_var": layer.running_var.clone(),
            "joint": joint.detach()}


def _rank(rank: int, init: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        x, level, upstream = _inputs()
        half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        layer = _layer().train()
        undo = sync_batch_norms(nn.Sequential(layer))
        assert isinstance(layer, SyncedBatchNorm2d)
        results[rank] = _run(layer, x[half], level[half], upstream[half])
        undo()
        results[f"class{rank}"] = type(layer).__name__
    finally:
        dist.destroy_process_group()


def test_two_processes_normalise_as_one_process_holding_every_chip(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", results), nprocs=2)
        results = dict(results)
    x, level, upstream = _inputs()
    whole = _run(_layer().train(), x, level, upstream)
    ranks = [results[0], results[1]]
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), whole["out"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]), whole["grad"], rtol=1e-4, atol=1e-5)
    # Each rank's parameter gradients are its chips' share; DDP sums (then averages) them.
    torch.testing.assert_close(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], whole["weight_grad"])
    torch.testing.assert_close(ranks[0]["bias_grad"] + ranks[1]["bias_grad"], whole["bias_grad"])
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(ranks[0][name], whole[name])
        torch.testing.assert_close(ranks[1][name], whole[name])
    # The heads' joint normalisation of several levels takes the same route.
    torch.testing.assert_close(torch.cat([r["joint"] for r in ranks]), whole["joint"], rtol=1e-5, atol=1e-5)
    assert results["class0"] == results["class1"] == "BatchNorm2d"  # undone after the fit


def test_outside_training_it_is_torchs_batch_norm():
    x, _, _ = _inputs()
    plain = _layer()
    plain.running_mean.fill_(0.5)
    plain.running_var.fill_(2.0)
    plain.eval()
    synced = _layer()
    synced.load_state_dict(plain.state_dict())
    undo = sync_batch_norms(synced)
    synced.eval()
    torch.testing.assert_close(synced(x), plain(x))  # no process group needed in eval mode
    undo()
