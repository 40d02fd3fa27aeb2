"""The AlexNet family: the 2012 two-tower network and torchvision's 2014 single-tower one.

    from alexnet import model
    net = model.build("alexnet2012", num_classes=1000)          # the paper's network, §3 / Fig. 2
    net = model.build("alexnet_owt", norm="batchnorm", dropout=0.2)
    logits = net(images)                                          # (B, 3, 224, 224) -> (B, N)
    codes = net.embed(images)                                     # (B, 4096) fc7 after ReLU (§6.1)

Variants (`VARIANTS`):
- `alexnet2012`: 96/256/384/384/256 conv channels; conv2, conv4 and conv5 use groups=2, which on one
  device is exactly the two GPU towers of §3.2 (each tower sees only its own half of the maps; the
  towers meet at conv3 and the FC layers). LRN (§3.3) after the ReLU of conv1 and conv2, applied
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
work with the same classifier; smaller inputs raise a clear error. Options are documented on `build`.
"""
from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

NORMS = ("lrn", "batchnorm", "none")
INITS = ("paper", "kaiming", "he")
LRN_CONVENTIONS = ("authors", "literal")


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


VARIANTS: dict[str, Variant] = {
    "alexnet2012": Variant(
        "the paper's two-tower network (Krizhevsky et al. 2012, §3, Fig. 2)",
        channels=(96, 256, 384, 384, 256), groups=(1, 2, 1, 2, 2), conv1_padding="ceil",
        norm="lrn", dropout_inputs=("fc7", "fc8"), towers=2),
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


class LocalResponseNorm(nn.Module):
    """§3.3 response normalisation across neighbouring maps, within each tower.

    b_i = a_i / (k + alpha' * sum_{j = i - n//2}^{i + (n-1)//2} a_j^2) ^ beta, the sum clipped to the
    tower's maps. convention="authors": alpha' = alpha / n (cuda-convnet, and what
    torch.nn.LocalResponseNorm computes); "literal": alpha' = alpha, the printed formula (which then
    needs alpha=5e-4 to match the authors' network). Caffe's AlexNet uses k=1; the paper k=2.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 convention: str = "authors", groups: int = 1):
        super().__init__()
        if convention not in LRN_CONVENTIONS:
            raise UserError(f"LRN convention {convention!r} is not one of {', '.join(LRN_CONVENTIONS)}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention, self.groups = convention, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.local_response_norm averages the window (divides by n): pass n*alpha for the literal form.
        alpha = self.alpha if self.convention == "authors" else self.alpha * self.size
        if self.groups == 1:
            return F.local_response_norm(x, self.size, alpha, self.beta, self.k)
        b, c, h, w = x.shape  # each tower normalises over its own c/groups maps only
        y = F.local_response_norm(x.reshape(b * self.groups, c // self.groups, h, w),
                                  self.size, alpha, self.beta, self.k)
        return y.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"convention={self.convention}, groups={self.groups}")


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
                 width: float = 1.0, hidden: int = 4096):
        super().__init__()
        v = VARIANTS[variant]
        norm = v.norm if norm is None else norm
        if norm not in NORMS:
            raise UserError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {dropout}")
        if width <= 0 or hidden < 1 or num_classes < 1:
            raise UserError(f"width, hidden and num_classes must be positive "
                            f"(got {width}, {hidden}, {num_classes})")
        self.variant, self.norm, self.towers = variant, norm, v.towers
        # Channel counts scaled by `width`, kept divisible by the towers so that groups still split.
        c = [max(v.towers, round(ch * width / v.towers) * v.towers) for ch in v.channels]
        g = v.groups
        bias = norm != "batchnorm"  # a conv followed by batch norm needs no bias of its own
        pad1 = 2 if v.conv1_padding == "2" else 0
        conv1_cls = CeilConv2d if v.conv1_padding == "ceil" else nn.Conv2d
        self.conv1 = conv1_cls(3, c[0], 11, stride=4, padding=pad1, bias=bias)        # (B, 96, 55, 55)
        self.norm1 = self._norm(norm, c[0], lrn=True, lrn_convention=lrn_convention, lrn_k=lrn_k)
        self.pool1 = nn.MaxPool2d(3, stride=2)                                           # (B, 96, 27, 27)
        self.conv2 = nn.Conv2d(c[0], c[1], 5, padding=2, groups=g[1], bias=bias)        # (B, 256, 27, 27)
        self.norm2 = self._norm(norm, c[1], lrn=True, lrn_convention=lrn_convention, lrn_k=lrn_k)
        self.pool2 = nn.MaxPool2d(3, stride=2)                                           # (B, 256, 13, 13)
        self.conv3 = nn.Conv2d(c[1], c[2], 3, padding=1, groups=g[2], bias=bias)        # (B, 384, 13, 13)
        self.norm3 = self._norm(norm, c[2], lrn=False)
        self.conv4 = nn.Conv2d(c[2], c[3], 3, padding=1, groups=g[3], bias=bias)        # (B, 384, 13, 13)
        self.norm4 = self._norm(norm, c[3], lrn=False)
        self.conv5 = nn.Conv2d(c[3], c[4], 3, padding=1, groups=g[4], bias=bias)        # (B, 256, 13, 13)
        self.norm5 = self._norm(norm, c[4], lrn=False)
        self.pool5 = nn.MaxPool2d(3, stride=2)                                           # (B, 256, 6, 6)
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

    @staticmethod
    def _unit(x: torch.Tensor, conv: nn.Module, norm: nn.Module) -> torch.Tensor:
        x = conv(x)
        if isinstance(norm, nn.BatchNorm2d):  # batch norm before the ReLU, as is usual
            return F.relu(norm(x), inplace=True)
        return norm(F.relu(x, inplace=True))  # §3.3: LRN after the ReLU

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
        """(B, 3, H, W) images -> (B, 4096) fc7 activations after ReLU, before dropout (§6.1, Fig. 4)."""
        x = torch.flatten(self.forward_features(x), 1)  # (B, 9216)
        x = F.relu(self.fc6(self.dropout6(x)), inplace=True)
        return F.relu(self.fc7(self.dropout7(x)), inplace=True)

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

    def pool(n):
        return (n - 3) // 2 + 1 if n >= 3 else 0

    out, n = {}, size
    for name in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"):
        m = getattr(net, name)
        n = conv(n, m) if isinstance(m, nn.Conv2d) else pool(n)
        out[name] = n
    return out


def min_input_size(net: AlexNet) -> int:
    """The smallest square input for which every stage has at least one output pixel."""
    size = 11
    while spatial_sizes(net, size)["pool5"] < 1:
        size += 1
    return size


def build(name: str, num_classes: int = 1000, *, norm: str | None = None, dropout: float = 0.5,
          init: str = "paper", init_bias: float = 1.0, lrn_convention: str = "authors",
          lrn_k: float = 2.0, width: float = 1.0, hidden: int = 4096,
          seed: int | None = None) -> AlexNet:
    """Build a member of the family, initialised.

    name: one of VARIANTS ("alexnet2012", "alexnet_owt").
    norm: "lrn" | "batchnorm" | "none"; default the variant's own (lrn for 2012, none for owt).
        batchnorm: BatchNorm2d after every conv, before its ReLU (convs then have no bias).
    dropout: rate of the two dropout layers (§4.2: 0.5).
    init: "paper" (§5: weights N(0, 0.01); biases `init_bias` in conv2, conv4, conv5, fc6, fc7 and 0
        elsewhere; Caffe used 0.1 because 1 gave a flat loss), "kaiming" (PyTorch's default layer
        init, which torchvision's AlexNet uses: kaiming-uniform with a=sqrt(5)), or "he"
        (kaiming-normal fan-out for convs, N(0, 0.01) for FC layers, zero biases).
    lrn_convention, lrn_k: see LocalResponseNorm.
    width: multiplies the conv channel counts (rounded to a multiple of the towers);
    hidden: the size of fc6 and fc7 (4096). Both are for small data and quick runs.
    seed: initialise from torch.Generator().manual_seed(seed); None draws from torch's global RNG.
    """
    if name not in VARIANTS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}")
    net = AlexNet(name, num_classes, norm=norm, dropout=dropout, lrn_convention=lrn_convention,
                  lrn_k=lrn_k, width=width, hidden=hidden)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    init_weights(net, init, init_bias=init_bias, generator=generator)
    return net


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


def from_config(m, num_classes: int, *, seed: int | None = None, init: str | None = None) -> AlexNet:
    """`build` from a config.ModelConfig or its dict (a checkpoint's config["model"]): the one
    mapping from configuration to network, so that every key of the model section reaches build.
    init overrides the configured scheme (weights about to be loaded need no careful init)."""
    import dataclasses

    values = dataclasses.asdict(m) if dataclasses.is_dataclass(m) else dict(m)
    name = values.pop("name")
    values.pop("num_classes", None)
    if init is not None:
        values["init"] = init
    return build(name, num_classes, seed=seed, **values)


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
