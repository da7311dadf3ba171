"""Batch norms folded into convolutions for inference (geolearn.models.folding), against the unfolded network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geolearn.models.folding import InferenceConv, inference_network
from geolearn.models.retinanet import build_retinanet


def trained_looking(backbone: str, seed: int = 0) -> nn.Module:
    """A RetinaNet in eval mode whose batch norms have non-trivial statistics and affine weights,
    and whose heads' last convolutions are not zero (a fresh network's outputs do not depend on
    its input)."""
    generator = torch.Generator().manual_seed(seed)
    model = build_retinanet(backbone, n_classes=2, pretrained=False).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.2, 3.0),
                                          (module.weight, 0.3, 1.5), (module.bias, -0.3, 0.3)):
                    tensor.copy_(torch.empty(tensor.shape).uniform_(low, high, generator=generator))
        for head in (model.classifier, model.box_regressor):
            head[-1].weight.normal_(0.0, 0.05, generator=generator)
    return model


def test_a_folded_convolution_computes_its_batch_norm_by_hand():
    """y = w_bn · (conv(x) + b − mean) / √(var + eps) + b_bn, for one 1 × 1 convolution with bias."""
    conv, norm = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([1.0, 0.5]))
        norm.running_mean.copy_(torch.tensor([3.0, -0.5]))
        norm.running_var.copy_(torch.tensor([4.0, 0.25]))
        norm.weight.copy_(torch.tensor([0.5, 2.0]))
        norm.bias.copy_(torch.tensor([1.0, -1.0]))
        got = InferenceConv(conv, norm)(torch.full((1, 1, 1, 1), 4.0)).flatten()
    # channel 0: 0.5 · (8 + 1 − 3) / 2 + 1 = 2.5; channel 1: 2 · (−4 + 0.5 + 0.5) / 0.5 − 1 = −13
    torch.testing.assert_close(got, torch.tensor([2.5, -13.0]))


@pytest.mark.parametrize("backbone, encoder_norms", [("resnet18", 1 + 8 * 2 + 3), ("resnet50", 1 + 16 * 3 + 4)])
def test_every_encoder_batch_norm_is_folded_and_the_outputs_are_the_models(backbone, encoder_norms):
    """ResNet-18: the stem, 8 blocks of 2 and 3 downsamples; ResNet-50: the stem, 16 blocks of 3 and
    4 downsamples. The heads' 2 × 4 batch norms (after a ReLU) stay."""
    model = trained_looking(backbone)
    folded = inference_network(model)
    convs = [m for m in folded.modules() if isinstance(m, InferenceConv)]
    assert len(convs) == encoder_norms and all(conv.norm is not None for conv in convs)
    heads_norms = [m for m in (*folded.classifier.modules(), *folded.box_regressor.modules())
                   if isinstance(m, nn.BatchNorm2d)]
    assert len(heads_norms) == 8
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for got, want in zip(folded.pyramid(images), model.pyramid(images)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        for got, want in zip(folded(images), model(images)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_the_model_is_left_as_it_is_and_float32_folding_holds_no_copy_of_its_weights():
    model = trained_looking("resnet18")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    folded = inference_network(model)
    assert isinstance(model.encoder[1], nn.BatchNorm2d) and isinstance(folded.encoder[1], nn.Identity)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    shared = {tensor.data_ptr() for tensor in model.parameters()}
    assert {tensor.data_ptr() for tensor in folded.parameters()} <= shared
    assert not list(folded.buffers()) or {t.data_ptr() for t in folded.buffers()} <= {
        t.data_ptr() for t in model.buffers()}
    folded.train()
    assert not model.training  # the copy's containers are its own


def test_bfloat16_weights_are_folded_and_cast_once_and_match_autocast_over_the_model():
    model = trained_looking("resnet18")
    folded = inference_network(model, torch.bfloat16)
    convs = [m for m in folded.modules() if isinstance(m, InferenceConv)]
    # every convolution: 20 folded; cast as they are, the FPN's 8 (C5 → P5, C5 → P6, P6 → P7, two
    # laterals, three smoothers) and the heads' 2 × 5
    assert len(convs) == 20 + 8 + 10
    assert all(conv.weight.dtype == conv.bias.dtype == torch.bfloat16 for conv in convs)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = folded.pyramid(images), model.pyramid(images)
    for g, w in zip(got, want):
        # bfloat16 keeps 8 significant bits: a few roundings along the network stay within a few per cent
        assert ((g.float() - w.float()).abs().max() / w.float().abs().max()).item() < 0.05


def test_a_model_in_training_mode_is_refused():
    model = build_retinanet("resnet18", n_classes=2, pretrained=False)
    with pytest.raises(ValueError, match=r"training mode; call model.eval\(\) first"):
        inference_network(model)


def test_a_batch_norm_without_running_statistics_or_a_padded_convolution_is_refused():
    with pytest.raises(ValueError, match="without running statistics"):
        InferenceConv(nn.Conv2d(1, 1, 3), nn.BatchNorm2d(1, track_running_stats=False))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        InferenceConv(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(1))
