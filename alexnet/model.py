"""The AlexNet family: the 2012 two-tower network and torchvision's 2014 single-tower one.

    from alexnet import model
    net = model.build("alexnet2012", num_classes=1000)          # the paper's network, §3 / Fig. 2
    net = model.build("alexnet_owt", norm="batchnorm", dropout=0.2)
    net = model.build(cfg.model, num_classes)                    # from a config.ModelConfig
    logits = net(images)                                          # (B, 3, 224, 224) -> (B, N)
    codes = net.embed(images)                                     # (B, 4096) fc7 after ReLU (§6.1)

Variants (`VARIANTS`):
- `alexnet2012`: 96/256/384/384/256 conv channels; conv2, conv4 and conv5 use groups=2, which on one
  device is exactly the two GPU towers of §3.2 (each tower sees only its own half of the maps; the
  towers meet at conv3 and the FC layers; alexnet.towers runs the towers on two processes, as §3.2
  ran them on two GPUs). LRN (§3.3) after the ReLU of conv1 and conv2, applied
  within each tower as the authors' two-GPU config does (48 maps per GPU in conv1). Dropout on the
  outputs of fc6 and fc7 (§4.2). 60,965,224 parameters with 1000 classes.
- `alexnet_owt`: "One weird trick" (arXiv 1404.5997) as `torchvision.models.alexnet` defines it:
  64/192/384/256/256 channels, no groups, conv1 padding 2, dropout on the inputs of fc6 and fc7, no
  LRN by default. A torchvision state dict loads unchanged (its keys are renamed on load).
  61,100,840 parameters with 1000 classes. `norm="lrn"` adds LRN after conv1 and conv2 as in
  cuda-convnet2's one-GPU config (layers-imagenet-1gpu.cfg).

224 vs 227 (paper.md): (224 - 11) / 4 + 1 is not an integer. `alexnet2012` follows cuda-convnet,
which rounds the conv1 output size up, i.e. zero-pads the far (right and bottom) edge: 224 -> 227
-> 55x55 maps, and a 227 crop (Caffe's) gives the same 55x55 without padding. `alexnet_owt` pads 2
on every side as torchvision does (224 -> 55, 227 -> 56). Both then go 27 -> 13 -> 6.

Other input sizes: an adaptive average pool to 6x6 before fc6 (a no-op at 224/227, as in
torchvision) lets any input from `min_input_size` up (64 px for alexnet2012, 63 for alexnet_owt)
work with the same classifier; smaller inputs raise a clear error. Options are documented on `build`,
which takes them as a config.ModelConfig (cfg.model) or as keywords.

The paper's comparisons, as options (each off by default, so the networks above are unchanged; the
`alexnet ablate` command trains them side by side):
- `pooling="nonoverlap"`: 2x2 windows with stride 2 (s = z = 2) instead of §3.4's overlapping 3x3/2.
  At 224 px the maps are the same size either way (55 -> 27 -> 13 -> 6), so only the windows change.
- `towers=1` (alexnet2012): the one-GPU net §3.2 compares with, "half as many kernels in each
  convolutional layer" and no grouping: 48/128/192/192 maps in conv1..conv4. Following the paper's
  footnote 2, the final conv layer (256 maps) and the FC layers are not halved, so the two nets have
  about the same number of parameters (59,798,312 against 60,965,224); as the footnote says, this
  biases the comparison in favour of the one-GPU net. LRN then normalises across all maps.
- `activation="tanh"`: tanh units instead of ReLUs after every conv and FC layer (§3.1, Figure 1).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import UserError
from .lrn import LRN_CONVENTIONS, LocalResponseNorm  # noqa: F401 (part of this module's API)

NORMS = ("lrn", "batchnorm", "none")
INITS = ("paper", "kaiming", "he")
POOLINGS = {"overlap": (3, 2), "nonoverlap": (2, 2)}  # (window z, stride s): §3.4
ACTIVATIONS = ("relu", "tanh")


@dataclass(frozen=True)
class Variant:
    """What distinguishes one member of the family from another."""

    description: str
    channels: tuple[int, int, int, int, int]  # conv1..conv5 output maps
    groups: tuple[int, int, int, int, int]  # conv1..conv5 groups (towers)
    conv1_padding: str  # "ceil" (cuda-convnet) or "2" (torchvision)
    norm: str  # default normalisation
    dropout_inputs: tuple[str, ...]  # which FC layers get dropout on their input
    towers: int  # 2 for the paper's two-GPU network
    one_tower_channels: tuple[int, int, int, int, int] | None = None  # §3.2 the one-GPU comparison net


VARIANTS: dict[str, Variant] = {
    "alexnet2012": Variant(
        "the paper's two-tower network (Krizhevsky et al. 2012, §3, Fig. 2)",
        channels=(96, 256, 384, 384, 256), groups=(1, 2, 1, 2, 2), conv1_padding="ceil",
        norm="lrn", dropout_inputs=("fc7", "fc8"), towers=2,
        # §3.2 half the kernels of each conv layer, except the last (footnote 2)
        one_tower_channels=(48, 128, 192, 192, 256)),
    "alexnet_owt": Variant(
        "the single-tower network of 'One weird trick' (2014), as torchvision.models.alexnet",
        channels=(64, 192, 384, 256, 256), groups=(1, 1, 1, 1, 1), conv1_padding="2",
        norm="none", dropout_inputs=("fc6", "fc7"), towers=1),
}

# torchvision.models.alexnet's state-dict prefixes -> ours, for loading its weights unchanged.
TORCHVISION_KEYS = {
    "features.0.": "conv1.", "features.3.": "conv2.", "features.6.": "conv3.",
    "features.8.": "conv4.", "features.10.": "conv5.",
    "classifier.1.": "fc6.", "classifier.4.": "fc7.", "classifier.6.": "fc8.",
}


class CeilConv2d(nn.Conv2d):
    """A convolution whose output size is rounded up, as cuda-convnet's (224 -> 55 with 11x11/4).

    Equivalent to zero-padding the far (right, bottom) edge just enough; no padding when the size
    fits exactly (227). The state dict is that of nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph, pw = -(x.shape[-2] - kh) % sh, -(x.shape[-1] - kw) % sw
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return super().forward(x)


class AlexNet(nn.Module):
    """conv1..conv5 with ReLU, normalisation and overlapping max-pooling, then fc6, fc7, fc8.

    Named as in the paper so that state dicts and the `info` table read like Fig. 2.
    """

    def __init__(self, variant: str, num_classes: int = 1000, norm: str | None = None,
                 dropout: float = 0.5, lrn_convention: str = "authors", lrn_k: float = 2.0,
                 width: float = 1.0, hidden: int = 4096, pooling: str = "overlap",
                 towers: int | None = None, activation: str = "relu"):
        super().__init__()
        v = VARIANTS[variant]
        norm = v.norm if norm is None else norm
        towers = v.towers if towers is None else towers
        if norm not in NORMS:
            raise UserError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
        if pooling not in POOLINGS:
            raise UserError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        if activation not in ACTIVATIONS:
            raise UserError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if towers not in (1, 2) or (towers != v.towers and v.one_tower_channels is None):
            raise UserError(f"{variant} has {v.towers} tower(s); towers={towers} is defined only for "
                            f"alexnet2012 (2, or 1 for §3.2's one-GPU net)")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {dropout}")
        if width <= 0 or hidden < 1 or num_classes < 1:
            raise UserError(f"width, hidden and num_classes must be positive "
                            f"(got {width}, {hidden}, {num_classes})")
        self.variant, self.norm, self.towers = variant, norm, towers
        self.pooling, self.activation = pooling, activation
        channels, g = v.channels, v.groups
        if towers != v.towers:  # §3.2 the one-GPU net: half the kernels, no grouping
            channels, g = v.one_tower_channels, (1, 1, 1, 1, 1)
        # Channel counts scaled by `width`, kept divisible by the towers so that groups still split.
        c = [max(towers, round(ch * width / towers) * towers) for ch in channels]
        z, s = POOLINGS[pooling]
        bias = norm != "batchnorm"  # a conv followed by batch norm needs no bias of its own
        pad1 = 2 if v.conv1_padding == "2" else 0
        conv1_cls = CeilConv2d if v.conv1_padding == "ceil" else nn.Conv2d
        self.conv1 = conv1_cls(3, c[0], 11, stride=4, padding=pad1, bias=bias)        # (B, 96, 55, 55)
        self.norm1 = self._norm(norm, c[0], lrn=True, lrn_convention=lrn_convention, lrn_k=lrn_k)
        self.pool1 = nn.MaxPool2d(z, stride=s)                                           # (B, 96, 27, 27)
        self.conv2 = nn.Conv2d(c[0], c[1], 5, padding=2, groups=g[1], bias=bias)        # (B, 256, 27, 27)
        self.norm2 = self._norm(norm, c[1], lrn=True, lrn_convention=lrn_convention, lrn_k=lrn_k)
        self.pool2 = nn.MaxPool2d(z, stride=s)                                           # (B, 256, 13, 13)
        self.conv3 = nn.Conv2d(c[1], c[2], 3, padding=1, groups=g[2], bias=bias)        # (B, 384, 13, 13)
        self.norm3 = self._norm(norm, c[2], lrn=False)
        self.conv4 = nn.Conv2d(c[2], c[3], 3, padding=1, groups=g[3], bias=bias)        # (B, 384, 13, 13)
        self.norm4 = self._norm(norm, c[3], lrn=False)
        self.conv5 = nn.Conv2d(c[3], c[4], 3, padding=1, groups=g[4], bias=bias)        # (B, 256, 13, 13)
        self.norm5 = self._norm(norm, c[4], lrn=False)
        self.pool5 = nn.MaxPool2d(z, stride=s)                                           # (B, 256, 6, 6)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # identity at 224/227; other sizes -> 6x6
        self.dropout6 = nn.Dropout(dropout) if "fc6" in v.dropout_inputs else nn.Identity()
        self.fc6 = nn.Linear(c[4] * 36, hidden)                                          # (B, 4096)
        self.dropout7 = nn.Dropout(dropout) if "fc7" in v.dropout_inputs else nn.Identity()
        self.fc7 = nn.Linear(hidden, hidden)                                             # (B, 4096)
        self.dropout8 = nn.Dropout(dropout) if "fc8" in v.dropout_inputs else nn.Identity()
        self.fc8 = nn.Linear(hidden, num_classes)                                        # (B, N)
        self.min_input_size = min_input_size(self)
        self._register_load_state_dict_pre_hook(_rename_torchvision_keys)

    def _norm(self, norm: str, channels: int, lrn: bool, **lrn_options) -> nn.Module:
        if norm == "batchnorm":
            return nn.BatchNorm2d(channels)
        if norm == "lrn" and lrn:  # §3.3: only after conv1 and conv2
            return LocalResponseNorm(5, 1e-4, 0.75, k=lrn_options["lrn_k"],
                                     convention=lrn_options["lrn_convention"], groups=self.towers)
        return nn.Identity()

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        """§3.1: ReLU, or the saturating tanh it is compared with."""
        return F.relu(x, inplace=True) if self.activation == "relu" else torch.tanh(x)

    def _unit(self, x: torch.Tensor, conv: nn.Module, norm: nn.Module) -> torch.Tensor:
        x = conv(x)
        if isinstance(norm, nn.BatchNorm2d):  # batch norm before the activation, as is usual
            return self._act(norm(x))
        return norm(self._act(x))  # §3.3: LRN after the ReLU

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, 256, 6, 6) pool5 maps."""
        if min(x.shape[-2:]) < self.min_input_size:
            raise UserError(f"{self.variant} needs inputs of at least {self.min_input_size}x"
                            f"{self.min_input_size} px, got {tuple(x.shape[-2:])}")
        x = self.pool1(self._unit(x, self.conv1, self.norm1))
        x = self.pool2(self._unit(x, self.conv2, self.norm2))
        x = self._unit(x, self.conv3, self.norm3)
        x = self._unit(x, self.conv4, self.norm4)
        x = self.pool5(self._unit(x, self.conv5, self.norm5))
        return self.avgpool(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, 4096) fc7 activations after the ReLU (or tanh), before dropout
        (§6.1, Fig. 4)."""
        x = torch.flatten(self.forward_features(x), 1)  # (B, 9216)
        x = self._act(self.fc6(self.dropout6(x)))
        return self._act(self.fc7(self.dropout7(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) mean-subtracted images -> (B, num_classes) logits (softmax not applied)."""
        return self.fc8(self.dropout8(self.embed(x)))

    def conv1_weight(self) -> torch.Tensor:
        """The conv1 kernels, (96, 3, 11, 11) for alexnet2012; tower t is rows
        [t * 96/towers, (t+1) * 96/towers) (Fig. 3: the top 48 on GPU 1, the bottom 48 on GPU 2)."""
        return self.conv1.weight.detach()


def _rename_torchvision_keys(state_dict, prefix, *args, **kwargs) -> None:
    """Load hook: accept torchvision.models.alexnet's keys (features.0.weight -> conv1.weight)."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        for theirs, ours in TORCHVISION_KEYS.items():
            if rest.startswith(theirs):
                state_dict[prefix + ours + rest[len(theirs):]] = state_dict.pop(key)
                break


def spatial_sizes(net: AlexNet, size: int) -> dict[str, int]:
    """Side length of every stage's output for a square input of `size` px (0 means too small)."""
    def conv(n, m: nn.Conv2d):
        k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
        if isinstance(m, CeilConv2d):
            return -(-(n - k) // s) + 1 if n >= k else 0
        return (n + 2 * p - k) // s + 1 if n + 2 * p >= k else 0

    def pool(n, m: nn.MaxPool2d):
        return (n - m.kernel_size) // m.stride + 1 if n >= m.kernel_size else 0

    out, n = {}, size
    for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"):
        m = getattr(net, name)
        n = conv(n, m) if isinstance(m, nn.Conv2d) else pool(n, m)
        out[name] = n
    return out


def min_input_size(net: AlexNet) -> int:
    """The smallest square input for which every stage has at least one output pixel."""
    size = 11
    while spatial_sizes(net, size)["pool5"] < 1:
        size += 1
    return size


def build(model: str | ModelConfig | dict = "alexnet2012", num_classes: int = 1000, *, seed: int | None = None,
          **options) -> AlexNet:
    """Build a member of the family, initialised, from its configuration (nanoGPT's GPT(config)).

        net = build(cfg.model, num_classes)                      # a config.ModelConfig: what train builds
        net = build(state["config"]["model"], num_classes)       # the dict a checkpoint holds
        net = build("alexnet_owt", 10, norm="batchnorm")         # a variant by name, options as keywords

    model: a config.ModelConfig, the model dict of a checkpoint (keys missing from checkpoints
        written before an option existed take ModelConfig's defaults; keys it does not know are
        ignored), or a variant's name (every other field ModelConfig's default).
    num_classes: outputs of fc8 (the config's own model.num_classes is resolved by the caller,
        who knows the data set's classes).
    seed: initialise from torch.Generator().manual_seed(seed); None draws from torch's global RNG.
    options: ModelConfig's fields, overriding `model`'s (an unknown name raises TypeError):
    name: one of VARIANTS ("alexnet2012", "alexnet_owt"); UserError for another.
    norm: "lrn" | "batchnorm" | "none"; default (None) the variant's own (lrn for 2012, none for owt).
        batchnorm: BatchNorm2d after every conv, before its ReLU (convs then have no bias).
    dropout: rate of the two dropout layers (§4.2: 0.5).
    init: "paper" (§5: weights N(0, 0.01); biases `init_bias` in conv2, conv4, conv5, fc6, fc7 and 0
        elsewhere; Caffe used 0.1 because 1 gave a flat loss), "kaiming" (PyTorch's default layer
        init, which torchvision's AlexNet uses: kaiming-uniform with a=sqrt(5)), or "he"
        (kaiming-normal fan-out for convs, N(0, 0.01) for FC layers, zero biases).
    lrn_convention, lrn_k: see LocalResponseNorm.
    width: multiplies the conv channel counts (rounded to a multiple of the towers);
    hidden: the size of fc6 and fc7 (4096). Both are for small data and quick runs.
    pooling: "overlap" (§3.4: 3x3 windows, stride 2) | "nonoverlap" (2x2, stride 2).
    towers: None (the variant's own) | 2 | 1: alexnet2012's one-GPU comparison net of §3.2, with
        half the kernels in conv1..conv4, no grouping, and conv5 and the FC layers unchanged
        (the paper's footnote 2); see the module docstring.
    activation: "relu" (§3.1) | "tanh", after every conv and FC layer.
    """
    m = model_config(model, **options)
    if m.name not in VARIANTS:
        raise UserError(f"unknown model {m.name!r}; choose one of {', '.join(VARIANTS)}")
    net = AlexNet(m.name, num_classes, norm=m.norm, dropout=m.dropout, lrn_convention=m.lrn_convention,
                  lrn_k=m.lrn_k, width=m.width, hidden=m.hidden, pooling=m.pooling, towers=m.towers,
                  activation=m.activation)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    init_weights(net, m.init, init_bias=m.init_bias, generator=generator)
    return net


def model_config(model: str | ModelConfig | dict, **options) -> ModelConfig:
    """A ModelConfig from `build`'s first argument and options (see `build`); `model` itself is
    never changed."""
    if isinstance(model, str):
        fields = {"name": model}
    else:
        given = model if isinstance(model, dict) else vars(model)
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        fields = {k: v for k, v in given.items() if k in known}
    return ModelConfig(**{**fields, **options})


@contextlib.contextmanager
def evaluating(*nets: nn.Module):
    """Every module of `nets` in eval mode inside the block; afterwards each module is back in its
    own mode (net.train(mode) would also wake the frozen batch-norm layers of a fine-tuning run)."""
    modes = [(m, m.training) for net in nets for m in net.modules()]
    try:
        for net in nets:
            net.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


FEATURE_LAYERS = ("conv1", "norm1", "conv2", "norm2", "conv3", "norm3", "conv4", "norm4", "conv5", "norm5")


def freeze(net: AlexNet, mode: str) -> list[nn.Module]:
    """Stop training part of the network: "none", "features" (conv1..conv5 and their norms) or
    "all-but-head" (everything but fc8). Sets requires_grad=False on those parameters and returns
    the frozen batch-norm layers, which the training loop keeps in eval mode (their running
    statistics stay those of the weights loaded)."""
    if mode not in ("none", "features", "all-but-head"):
        raise UserError(f"unknown freeze mode {mode!r}; use none, features or all-but-head")
    if mode == "none":
        return []
    names = FEATURE_LAYERS if mode == "features" else [n for n, _ in net.named_children() if n != "fc8"]
    frozen = []
    for name in names:
        module = getattr(net, name)
        for p in module.parameters():
            p.requires_grad_(False)
        frozen += [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return frozen


def init_weights(net: nn.Module, scheme: str = "paper", init_bias: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
    """(Re)initialise every conv, linear and batch-norm layer of `net` in place; see `build`."""
    if scheme not in INITS:
        raise UserError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INITS)}")
    for name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            continue
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        with torch.no_grad():
            if scheme == "paper":  # §5
                nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                bias_value = init_bias if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
                if m.bias is not None:
                    nn.init.constant_(m.bias, bias_value)
            elif scheme == "kaiming":  # nn.Conv2d/nn.Linear.reset_parameters, with our generator
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(m.weight)[0])
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            else:  # "he"
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu",
                                            generator=generator)
                else:
                    nn.init.normal_(m.weight, 0.0, 0.01, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
