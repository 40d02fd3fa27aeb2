"""The model family against the paper's numbers, a float64 LRN, and torchvision's own AlexNet."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from alexnet import layers, model
from alexnet.errors import UserError

# §3 / Fig. 2 (paper.md's table): output (H, W, C) of every stage at 224 and 227 px.
PAPER_SHAPES = {
    "conv1": (55, 55, 96), "pool1": (27, 27, 96), "conv2": (27, 27, 256), "pool2": (13, 13, 256),
    "conv3": (13, 13, 384), "conv4": (13, 13, 384), "conv5": (13, 13, 256), "pool5": (6, 6, 256),
    "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
}
PAPER_PARAMS = {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936,
                "conv5": 442_624, "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}


@pytest.fixture(scope="module")
def net2012():
    return model.build("alexnet2012", seed=0)


def test_parameter_counts(net2012):
    assert model.count_parameters(net2012) == 60_965_224
    assert model.count_parameters(model.build("alexnet_owt")) == 61_100_840
    assert model.count_parameters(torchvision.models.alexnet()) == 61_100_840
    for name, count in PAPER_PARAMS.items():
        assert sum(p.numel() for p in getattr(net2012, name).parameters()) == count, name


def _shapes(rows):
    return {r["layer"]: tuple(r["output"][1:] + r["output"][:1]) if len(r["output"]) == 3
            else tuple(r["output"]) for r in rows}


@pytest.mark.parametrize("size", [224, 227])
def test_alexnet2012_shapes_match_the_paper(net2012, size):
    rows = layers.layer_table(net2012, size)
    shapes = _shapes(rows)
    for layer, expected in PAPER_SHAPES.items():
        assert shapes[layer] == expected, (size, layer)
    assert sum(r["params"] for r in rows) == 60_965_224
    # ~0.72 GMAC per image (paper.md), counted from the hooks
    assert 0.70e9 < sum(r["macs"] for r in rows) < 0.74e9


@pytest.mark.parametrize("size,conv1", [(224, 55), (227, 56)])
def test_alexnet_owt_shapes(size, conv1):
    shapes = _shapes(layers.layer_table(model.build("alexnet_owt"), size))
    assert shapes["conv1"] == (conv1, conv1, 64)  # torchvision pads 2 on every side
    assert shapes["pool1"] == (27, 27, 64) and shapes["pool5"] == (6, 6, 256)


@pytest.mark.parametrize("name", list(model.VARIANTS))
@pytest.mark.parametrize("norm", ["lrn", "batchnorm", "none"])
@pytest.mark.parametrize("size", [64, 96, 128, 224, 227])
def test_forward_and_backward_are_finite(name, norm, size):
    net = model.build(name, num_classes=10, norm=norm, seed=1, width=0.5, hidden=256)
    x = torch.randn(2, 3, size, size)
    out = net(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert torch.isfinite(out).all()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert net.conv1.weight.grad.abs().sum() > 0


def test_too_small_input_is_a_clear_error():
    net = model.build("alexnet2012", num_classes=10, width=0.25, hidden=64)
    assert net.min_input_size == 64
    net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(UserError, match="at least 64x64"):
        net(torch.zeros(1, 3, 63, 63))


def lrn_reference(a: np.ndarray, n: int, alpha: float, beta: float, k: float, divide_by_n: bool):
    """paper.md §3.3 in float64, with explicit loops: the sum clipped to [0, N-1]."""
    out = np.empty_like(a, dtype=np.float64)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + (n - 1) // 2)
        s = (a[:, lo:hi + 1].astype(np.float64) ** 2).sum(axis=1)
        scale = alpha / n if divide_by_n else alpha
        out[:, i] = a[:, i] / (k + scale * s) ** beta
    return out


@pytest.mark.parametrize("convention", ["authors", "literal"])
@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_matches_float64_formula(convention, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 12, 5, 4, generator=g, dtype=torch.float64) * 100  # large enough to matter
    lrn = model.LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention=convention, groups=groups)
    got = lrn(x).numpy()
    a = x.numpy()
    half = a.shape[1] // groups
    want = np.concatenate([lrn_reference(a[:, t * half:(t + 1) * half], 5, 1e-4, 0.75, 2.0,
                                         divide_by_n=convention == "authors") for t in range(groups)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.abs(got - a).max() > 1.0  # the normalisation did something


def test_lrn_conventions_relate_as_paper_md_says():
    x = torch.rand(2, 16, 3, 3) * 50
    authors = model.LocalResponseNorm(5, 1e-4, 0.75, 2.0, "authors")(x)
    torch.testing.assert_close(authors, torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x))
    literal = model.LocalResponseNorm(5, 1e-4 / 5, 0.75, 2.0, "literal")(x)  # alpha/n by hand
    torch.testing.assert_close(authors, literal)


def test_towers_do_not_see_each_other(net2012):
    """§3.2: tower B's maps (channels 48..95 after conv1) never reach tower A's conv2 output."""
    torch.manual_seed(0)
    a = torch.relu(torch.randn(1, 96, 55, 55)) * 30  # post-ReLU conv1 maps, large for the LRN

    def conv2_out(maps):
        with torch.no_grad():
            return net2012.conv2(net2012.pool1(net2012.norm1(maps)))

    b = a.clone()
    b[:, 48:] = torch.relu(torch.randn(1, 48, 55, 55)) * 30
    before, after = conv2_out(a), conv2_out(b)
    assert torch.equal(before[:, :128], after[:, :128])  # tower A unchanged, through LRN and pool
    assert not torch.allclose(before[:, 128:], after[:, 128:])
    # conv3 is where the towers talk: a change in tower B reaches all of conv3's maps
    with torch.no_grad():
        c3 = lambda m: net2012.conv3(net2012.pool2(net2012.norm2(torch.relu(m))))  # noqa: E731
        diff = (c3(before) - c3(after)).abs().amax(dim=(0, 2, 3))
    assert (diff[:192] > 0).all() and (diff[192:] > 0).all()


def test_output_parity_with_torchvision():
    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    ours = model.build("alexnet_owt")
    ours.load_state_dict(tv.state_dict())  # torchvision's keys, unchanged
    ours.eval()
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-6)
        feats = torch.flatten(tv.avgpool(tv.features(x)), 1)
        torch.testing.assert_close(ours.embed(x), tv.classifier[:6](feats), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.forward_features(x), tv.avgpool(tv.features(x)))
    torch.testing.assert_close(ours.conv1_weight(), tv.features[0].weight.detach())


def test_torchvision_state_dict_loads_with_lrn_and_other_sizes():
    tv = torchvision.models.alexnet(num_classes=10)
    ours = model.build("alexnet_owt", num_classes=10, norm="lrn")
    ours.load_state_dict(tv.state_dict())
    assert isinstance(ours.norm1, model.LocalResponseNorm) and ours.norm1.groups == 1
    ours.eval(), tv.eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert not torch.allclose(ours(x), tv(x))  # LRN changes the function, weights still fit


def test_embed_is_fc7_after_relu(net2012):
    net2012.eval()
    captured = {}
    handle = net2012.fc7.register_forward_hook(lambda m, i, o: captured.setdefault("fc7", o.clone()))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        codes = net2012.embed(x)
    handle.remove()
    assert codes.shape == (2, 4096)
    torch.testing.assert_close(codes, torch.relu(captured["fc7"]))
    assert net2012.conv1_weight().shape == (96, 3, 11, 11)


def test_dropout_placement():
    p2012 = model.build("alexnet2012", num_classes=10, hidden=64, width=0.25)
    owt = model.build("alexnet_owt", num_classes=10, hidden=64, width=0.25)
    dropouts = lambda m: [type(getattr(m, f"dropout{i}")).__name__ for i in (6, 7, 8)]  # noqa: E731
    assert dropouts(p2012) == ["Identity", "Dropout", "Dropout"]  # §4.2 outputs of fc6 and fc7
    assert dropouts(owt) == ["Dropout", "Dropout", "Identity"]  # torchvision: inputs of fc6, fc7


def test_paper_init_statistics(net2012):
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}  # §5
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(net2012, name)
        w = layer.weight.detach().double()
        assert abs(w.std().item() - 0.01) < 0.01 * 0.03, name
        assert abs(w.mean().item()) < 0.01 * 0.03, name
        assert torch.all(layer.bias == (1.0 if name in ones else 0.0)), name
    caffe = model.build("alexnet2012", num_classes=10, init_bias=0.1, hidden=64)
    assert torch.all(caffe.fc6.bias == 0.1) and torch.all(caffe.conv3.bias == 0)


def test_kaiming_init_is_torchvisions_default():
    torch.manual_seed(123)
    tv = torchvision.models.alexnet()
    ours = model.build("alexnet_owt", init="kaiming", seed=123)
    for key, value in tv.state_dict().items():
        mapped = next(ours_key + key[len(theirs):] for theirs, ours_key in model.TORCHVISION_KEYS.items()
                      if key.startswith(theirs))
        assert torch.equal(ours.state_dict()[mapped], value), key
    # and its statistics: weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
    fan_in = 9216
    assert abs(ours.fc6.weight.std().item() * math.sqrt(3 * fan_in) - 1) < 0.01
    assert ours.fc6.bias.abs().max() <= 1 / math.sqrt(fan_in)


def test_he_init_and_batchnorm():
    net = model.build("alexnet2012", num_classes=10, init="he", norm="batchnorm", seed=0)
    fan_out = 256 * 5 * 5  # conv2: out_channels * k * k (torch counts fan-out over all groups)
    assert abs(net.conv2.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.02
    assert net.conv2.bias is None and torch.all(net.norm2.weight == 1) and torch.all(net.norm2.bias == 0)
    assert torch.all(net.fc6.bias == 0)


def test_seeded_build_is_reproducible_and_unknown_names_fail():
    a = model.build("alexnet_owt", num_classes=5, seed=7, hidden=32)
    b = model.build("alexnet_owt", num_classes=5, seed=7, hidden=32)
    c = model.build("alexnet_owt", num_classes=5, seed=8, hidden=32)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(UserError, match="unknown model 'vgg16'"):
        model.build("vgg16")
    with pytest.raises(UserError, match="norm"):
        model.build("alexnet2012", norm="layernorm")
    with pytest.raises(UserError, match="init"):
        model.build("alexnet2012", init="xavier", hidden=8)


def test_ceil_padding_equals_explicit_far_edge_pad(net2012):
    """224 is padded on the right/bottom to 227 (cuda-convnet); 227 is not padded at all."""
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        got = net2012.conv1(x)
        want = F.conv2d(F.pad(x, (0, 3, 0, 3)), net2012.conv1.weight, net2012.conv1.bias, stride=4)
        torch.testing.assert_close(got, want)
        x227 = F.pad(x, (0, 3, 0, 3))
        torch.testing.assert_close(net2012.conv1(x227), want)


# ------------------------------------------------- the paper's comparisons as options

STATE_KEYS = [f"{layer}.{p}" for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
              for p in ("weight", "bias")]


def test_defaults_are_unchanged(net2012):
    """The new options default to today's networks: the same parameters, keys and layers."""
    assert list(net2012.state_dict()) == STATE_KEYS
    assert model.count_parameters(net2012) == 60_965_224
    assert (net2012.towers, net2012.pooling, net2012.activation) == (2, "overlap", "relu")
    assert [net2012.conv2.groups, net2012.conv4.groups, net2012.conv5.groups] == [2, 2, 2]
    assert all(getattr(net2012, f"pool{i}").kernel_size == 3 for i in (1, 2, 5))
    owt = model.build("alexnet_owt")
    assert list(owt.state_dict()) == STATE_KEYS and owt.towers == 1


def _conv_params(c_in, c_out, k, groups=1):
    """Brute force: the parameters of a freshly made convolution."""
    return model.count_parameters(torch.nn.Conv2d(c_in, c_out, k, groups=groups))


def test_one_tower_net_halves_every_conv_layer_but_the_last():
    """§3.2 and footnote 2: 48/128/192/192 kernels, no groups, conv5 and the FC layers as before."""
    net = model.build("alexnet2012", towers=1, seed=0)
    expected = {"conv1": _conv_params(3, 48, 11), "conv2": _conv_params(48, 128, 5),
                "conv3": _conv_params(128, 192, 3), "conv4": _conv_params(192, 192, 3),
                "conv5": _conv_params(192, 256, 3), **{k: PAPER_PARAMS[k] for k in ("fc6", "fc7", "fc8")}}
    # by hand: 17,472 + 153,728 + 221,376 + 331,968 + 442,624 + 58,631,144
    assert sum(expected.values()) == 59_798_312 == model.count_parameters(net)
    for name, count in expected.items():
        assert model.count_parameters(getattr(net, name)) == count, name
    assert all(getattr(net, f"conv{i}").groups == 1 for i in range(1, 6)) and net.norm1.groups == 1
    shapes = _shapes(layers.layer_table(net, 224))
    assert shapes["conv1"] == (55, 55, 48) and shapes["conv4"] == (13, 13, 192) and shapes["pool5"] == (6, 6, 256)
    assert list(net.state_dict()) == STATE_KEYS
    half = model.build("alexnet2012", towers=1, width=0.5, hidden=64, num_classes=10)
    assert [half.conv1.out_channels, half.conv3.out_channels, half.conv5.out_channels] == [24, 96, 128]


def test_non_overlapping_pooling_keeps_the_paper_sizes(net2012):
    """§3.4's comparison: 2x2/2 windows (s = z = 2) give the same 55 -> 27 -> 13 -> 6 maps at 224."""
    net = model.build("alexnet2012", pooling="nonoverlap", seed=0)
    assert all((getattr(net, f"pool{i}").kernel_size, getattr(net, f"pool{i}").stride) == (2, 2) for i in (1, 2, 5))
    for size in (224, 227):
        shapes = _shapes(layers.layer_table(net, size))
        assert all(shapes[k] == PAPER_SHAPES[k] for k in PAPER_SHAPES), size
    assert model.count_parameters(net) == 60_965_224
    assert net.min_input_size < net2012.min_input_size  # smaller windows fit smaller inputs
    net.load_state_dict(net2012.state_dict())
    net.eval(), net2012.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled = net.pool1(torch.arange(16.0).view(1, 1, 4, 4))
        assert pooled.flatten().tolist() == [5.0, 7.0, 13.0, 15.0]  # the max of each 2x2 block
        assert not torch.allclose(net(x), net2012(x))


def test_tanh_units_everywhere(net2012):
    """§3.1: tanh after every conv and FC layer instead of the ReLU."""
    net = model.build("alexnet2012", activation="tanh", num_classes=10, width=0.25, hidden=64, seed=0).eval()
    captured = {}
    net.fc7.register_forward_hook(lambda m, i, o: captured.setdefault("fc7", o.clone()))
    net.conv1.register_forward_hook(lambda m, i, o: captured.setdefault("conv1", o.clone()))
    net.norm1.register_forward_hook(lambda m, i, o: captured.setdefault("lrn_in", i[0].clone()))
    with torch.no_grad():
        codes = net.embed(torch.randn(2, 3, 96, 96) * 50)
    torch.testing.assert_close(codes, torch.tanh(captured["fc7"]))
    torch.testing.assert_close(captured["lrn_in"], torch.tanh(captured["conv1"]))
    assert (captured["lrn_in"] < 0).any()  # not a ReLU


def test_bad_options_are_clear_errors():
    with pytest.raises(UserError, match="towers=2 is defined only for alexnet2012"):
        model.build("alexnet_owt", towers=2)
    with pytest.raises(UserError, match="pooling"):
        model.build("alexnet2012", pooling="average", hidden=8)
    with pytest.raises(UserError, match="activation"):
        model.build("alexnet2012", activation="gelu", hidden=8)
    assert model.build("alexnet_owt", towers=1, hidden=8).towers == 1


def test_from_config_reads_old_checkpoint_dicts():
    """A checkpoint's model section from before these options existed builds the same network."""
    old = {"name": "alexnet2012", "num_classes": None, "norm": None, "dropout": 0.5, "init": "paper",
           "init_bias": 1.0, "lrn_convention": "authors", "lrn_k": 2.0, "width": 0.25, "hidden": 64}
    a = model.build(old, 10, seed=3)
    b = model.build("alexnet2012", 10, width=0.25, hidden=64, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    one = model.build({**old, "towers": 1, "pooling": "nonoverlap", "activation": "tanh"}, 10)
    assert (one.towers, one.pooling, one.activation) == (1, "nonoverlap", "tanh")


@pytest.mark.filterwarnings("ignore:.*jit.trace:FutureWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("convention", ["authors", "literal"])
@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_training_path_matches_the_formula_and_its_gradient(convention, groups):
    """Training (a hand-written backward), evaluation and export (traced: F.local_response_norm)
    all compute the float64 formula; the gradient passes gradcheck."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(2, 12, 3, 4, generator=g, dtype=torch.float64) * 100).requires_grad_()
    lrn = model.LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention=convention, groups=groups)
    a = x.detach().numpy()
    half = a.shape[1] // groups
    want = np.concatenate([lrn_reference(a[:, t * half:(t + 1) * half], 5, 1e-4, 0.75, 2.0,
                                         divide_by_n=convention == "authors") for t in range(groups)], 1)
    np.testing.assert_allclose(lrn(x).detach().numpy(), want, rtol=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(lrn(x).numpy(), want, rtol=1e-12)
        traced = torch.jit.trace(lrn, x.detach())
        assert "local_response_norm" in str(traced.graph) or "avg_pool3d" in str(traced.graph)
        np.testing.assert_allclose(traced(x.detach()).numpy(), want, rtol=1e-12)
    assert torch.autograd.gradcheck(lrn, (x,))
    even = model.LocalResponseNorm(4, 1e-2, 0.75, 2.0, convention=convention, groups=groups)  # asymmetric window
    assert torch.autograd.gradcheck(even, (x,))
    with torch.no_grad():  # the evaluation path (F.local_response_norm) agrees with the training path
        np.testing.assert_allclose(even(x).numpy(), even(x.detach().requires_grad_()).detach().numpy(), rtol=1e-12)


def test_lrn_training_path_under_bf16_autocast():
    x = (torch.rand(4, 16, 9, 9) * 50).contiguous(memory_format=torch.channels_last)
    lrn = model.LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)
    want = lrn(x)  # no grad: F.local_response_norm in float32
    xb = x.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lrn(xb)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=0.5)
    got.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()
