"""The RetinaNet network of geolearn.models.retinanet against arcgis.learn's own figures.

tests/data/arcgis_ref/ holds state_dict keys and forward outputs produced by arcgis.learn 2.4.4's
RetinaNetModel (see its README: the weights are rebuilt from a seeded recipe).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from geolearn.models.anchors import make_anchors
from geolearn.models.backbones import build_encoder
from geolearn.models.retinanet import RetinaNetModel, build_retinanet, param_groups

REF = Path(__file__).parent / "data" / "arcgis_ref"


def reference_keys(backbone: str) -> list[tuple[str, tuple[int, ...], str]]:
    """``(key, shape, dtype)`` per line of keys_<backbone>.txt, in state_dict order."""
    rows = []
    for line in (REF / f"keys_{backbone}.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def recipe_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The README's weights recipe: one seeded generator, tensors in file order."""
    generator = torch.Generator().manual_seed(20261125)
    state = {}
    for key, shape, dtype in reference_keys(backbone):
        if dtype == "int64":
            value = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            value = torch.randn(shape, generator=generator) * 0.1
        elif len(shape) == 1:
            value = torch.rand(shape, generator=generator) * 0.5 + 0.25
        else:
            value = torch.randn(shape, generator=generator) * math.sqrt(1 / math.prod(shape[1:]))
        state[key] = value
    return state


@pytest.fixture(scope="module")
def resnet18_model() -> RetinaNetModel:
    return build_retinanet("resnet18", n_classes=2, pretrained=False)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_state_dict_keys_order_and_shapes_equal_arcgis(backbone):
    model = build_retinanet(backbone, n_classes=2, pretrained=False)
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert ours == reference_keys(backbone)


@pytest.mark.parametrize("chip_size", [256, 224])
def test_forward_equals_arcgis_with_the_same_weights(resnet18_model, chip_size):
    reference = torch.load(REF / f"forward_resnet18_{chip_size}.pt")
    resnet18_model.load_state_dict(recipe_state_dict("resnet18"), strict=True)
    with torch.no_grad():
        cls_logits, box_deltas = resnet18_model.eval()(reference["input"])
    torch.testing.assert_close(cls_logits, reference["cls"], atol=1e-5, rtol=0)
    torch.testing.assert_close(box_deltas, reference["box"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("chip_size", [64, 100, 224])
def test_outputs_line_up_with_the_anchors(resnet18_model, chip_size):
    with torch.no_grad():
        cls_logits, box_deltas = resnet18_model.eval()(torch.zeros(2, 3, chip_size, chip_size))
    n_anchors = len(make_anchors(chip_size))
    assert cls_logits.shape == (2, n_anchors, 2)
    assert box_deltas.shape == (2, n_anchors, 4)


def test_fresh_heads_predict_the_prior():
    model = build_retinanet("resnet18", n_classes=3, pretrained=False).eval()
    with torch.no_grad():
        cls_logits, box_deltas = model(torch.rand(1, 3, 64, 64))
    assert torch.all(cls_logits == -4.0)
    assert torch.all(box_deltas == 0.0)


def test_fpn_and_head_convs_have_bias_and_same_padding(resnet18_model):
    for name, module in resnet18_model.named_modules():
        if isinstance(module, nn.Conv2d) and not name.startswith("encoder"):
            assert module.bias is not None, name
            assert module.padding == (module.kernel_size[0] // 2,) * 2, name


def test_resnet50_at_a_small_chip():
    model = build_retinanet("resnet50", n_classes=1, pretrained=False, n_anchors=4).eval()
    with torch.no_grad():
        cls_logits, box_deltas = model(torch.rand(1, 3, 64, 64))
    n_cells = 8 * 8 + 4 * 4 + 2 * 2 + 1 + 1
    assert cls_logits.shape == (1, 4 * n_cells, 1)
    assert box_deltas.shape == (1, 4 * n_cells, 4)


def test_model_from_parts():
    encoder, channels = build_encoder("resnet34", pretrained=False, n_bands=4)
    model = RetinaNetModel(encoder, channels, n_classes=5).eval()
    with torch.no_grad():
        cls_logits, _ = model(torch.rand(1, 4, 64, 64))
    assert cls_logits.shape[-1] == 5


def test_no_object_class_is_an_error():
    encoder, channels = build_encoder("resnet18", pretrained=False)
    with pytest.raises(ValueError, match="n_classes=0"):
        RetinaNetModel(encoder, channels, n_classes=0)


def test_param_groups_split_stem_to_layer2_layer3_4_and_the_rest(resnet18_model):
    early, late, rest = param_groups(resnet18_model)
    ids = [{id(p) for p in group} for group in (early, late, rest)]
    assert sum(len(g) for g in ids) == len(list(resnet18_model.parameters()))
    assert set().union(*ids) == {id(p) for p in resnet18_model.parameters()}
    named = {id(p): name for name, p in resnet18_model.named_parameters()}
    assert all(named[i].split(".")[1] in "012345" for i in ids[0])
    assert all(named[i].split(".")[1] in ("6", "7") for i in ids[1])
    assert all(not named[i].startswith("encoder.") for i in ids[2])
    assert id(resnet18_model.encoder[0].weight) in ids[0]
    assert id(resnet18_model.classifier[4].bias) in ids[2]


def test_training_and_evaluation_normalise_the_head_alike():
    """Head BatchNorm uses the levels' joint statistics, which the running statistics estimate.

    With cumulative running statistics gathered on one batch, the eval-mode output on that
    batch matches the training-mode one; normalising each level separately in training (as
    calling the shared head level by level would) breaks this by a wide margin.
    """
    torch.manual_seed(0)
    model = build_retinanet("resnet18", n_classes=2, pretrained=False)
    for head in (model.classifier, model.box_regressor):
        nn.init.normal_(head[-1].weight, std=0.1)  # fresh heads ignore their features (zero weight)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: after one batch, that batch's statistics
            module.reset_running_stats()
    images = torch.randn(8, 3, 128, 128)  # enough pixels per channel that n/(n-1) is near 1
    model.train()
    with torch.no_grad():
        trained = model(images)
        model.eval()
        evaluated = model(images)
    for t, e in zip(trained, evaluated):
        # Running variances are unbiased, batch ones biased: agreement to about 1 %, not exactly.
        relative = (t - e).abs().max() / t.abs().max()
        assert relative < 0.05, relative


@pytest.mark.parametrize("channels_last", [False, True])
def test_joint_batch_norm_equals_batch_norm_over_the_concatenated_levels(channels_last):
    """Normalising three levels jointly = one BatchNorm2d over their pixels laid side by side."""
    from geolearn.models.retinanet import _joint_batch_norm

    torch.manual_seed(0)
    levels = [torch.randn(2, 4, n, n) * 3 + 1 for n in (8, 4, 2)]
    if channels_last:
        levels = [x.contiguous(memory_format=torch.channels_last) for x in levels]
    norm, reference = nn.BatchNorm2d(4).train(), nn.BatchNorm2d(4).train()
    nn.init.uniform_(norm.weight), nn.init.uniform_(norm.bias)
    reference.load_state_dict(norm.state_dict())

    joint = _joint_batch_norm(norm, levels)
    side_by_side = reference(torch.cat([x.flatten(2) for x in levels], dim=2)[..., None])
    expected = side_by_side[..., 0].split([x.shape[2] * x.shape[3] for x in levels], dim=2)
    for got, want, x in zip(joint, expected, levels):
        assert got.shape == x.shape
        torch.testing.assert_close(got, want.reshape(x.shape))
    torch.testing.assert_close(norm.running_mean, reference.running_mean)
    torch.testing.assert_close(norm.running_var, reference.running_var)
    assert int(norm.num_batches_tracked) == 1


def test_pyramid_conv_on_a_one_pixel_map_equals_the_conv_and_its_gradients_stay_finite():
    """On a 1×1 map (P6 of a 64 px chip) the pyramid conv is its centre tap: same output and
    gradients as ``nn.Conv2d``, and no NaN in bfloat16, where PyTorch's own stride-2 kernel
    gives a NaN weight gradient a few times in a thousand (about 6 in 1000 batches of 2)."""
    from geolearn.models.retinanet import _pyramid_conv

    torch.manual_seed(0)
    conv = nn.Conv2d(256, 256, 3, stride=2, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 256, 1, 1).contiguous(memory_format=torch.channels_last).requires_grad_()
    ours = _pyramid_conv(conv, x)
    ours.square().sum().backward()
    our_grads = conv.weight.grad.clone(), conv.bias.grad.clone(), x.grad.clone()
    conv.zero_grad(), x.grad.zero_()
    reference = conv(x)
    reference.square().sum().backward()
    torch.testing.assert_close(ours, reference)
    for got, expected in zip(our_grads, (conv.weight.grad, conv.bias.grad, x.grad)):
        torch.testing.assert_close(got, expected)
    assert conv.weight.grad[:, :, 0].abs().max() == 0  # the padding taps learn nothing

    non_finite = 0
    for _ in range(1000):
        conv.zero_grad()
        x = torch.randn(2, 256, 1, 1).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _pyramid_conv(conv, torch.relu(x))
        out.float().sum().backward()
        non_finite += not torch.isfinite(conv.weight.grad).all()
    assert non_finite == 0


def test_pyramid_conv_on_larger_maps_is_the_conv():
    from geolearn.models.retinanet import _pyramid_conv

    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
    x = torch.randn(1, 8, 3, 3)
    assert torch.equal(_pyramid_conv(conv, x), conv(x))
