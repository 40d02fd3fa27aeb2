"""A trained network and the preprocessing it was trained with, ready to use on new images.

    net = inference.load("runs/x/best.pt")              # or inference.load_weights("torchvision")
    x = net.preprocess([pil_image, ...], views=1)       # (B, 3, C, C), or (B, 10, 3, C, C)
    probs = net.probabilities(x)                        # (B, num_classes), softmax averaged over views
    net.classes[0]                                      # {"id": "n01440764", "name": "tench"}

Preprocessing is the paper's (§2): shorter side to S, central S x S crop, then the evaluation views
of C x C (the centre, or §4.1's ten) and the mean subtraction the network was trained with (the
training set's mean image, or per-channel mean/std), all from the checkpoint, so a model always
sees new images as it saw its training data. torchvision's published AlexNet comes with its own
preprocessing: resize to 256, centre crop 224, ImageNet per-channel mean/std.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import weights
from .data import augment as A
from .data.decode import open_rgb, resize_crop
from .errors import UserError
from .model import build



@dataclass
class Network:
    model: torch.nn.Module  # in eval mode
    classes: list[dict]  # [{"id", "name"}] in output order
    size: int  # S: shorter side and centre crop of §2
    crop: int  # C: the network's input side
    norm: A.Normalize  # on the S x S image, 0-255 scale
    source: str  # checkpoint path or weights name
    sha256: str  # of the checkpoint / weights file ("" when unknown)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None  # the weights' and activations' dtype (None: fp32), see alexnet.runtime
    validation: dict | None = None  # the training run's best validation {"top1", "top5", "epoch"}, when known
    config: dict | None = None  # the model config it was built from (alexnet.model.build's), when known

    def to(self, device, dtype: torch.dtype | None = None) -> "Network":
        """Move to `device`, with the weights in `dtype` (bf16/fp16; None: fp32) and channels_last.

        For inference the weights are converted once rather than under autocast, which casts
        every fp32 weight again at every call: measured on a 2-core CPU, a one-image forward pass
        of AlexNet takes 78 ms under bf16 autocast, 15 ms with bf16 weights, 21 ms in fp32
        (channels_last; 23 ms in the default layout)."""
        self.device, self.dtype = torch.device(device), dtype
        self.model.to(self.device, dtype or torch.float32, memory_format=torch.channels_last)
        self.norm = self.norm.to(self.device)
        return self

    def forward(self, x: torch.Tensor, embed: bool = False) -> torch.Tensor:
        """(N, 3, C, C) normalised -> (N, classes) float32 logits, or (N, 4096) fc7 codes."""
        x = x.to(self.device, self.dtype or torch.float32).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return (self.model.embed(x) if embed else self.model(x)).float()

    def logits_and_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, C, C) -> ((N, classes) logits, (N, 4096) fc7 codes after ReLU), float32, one pass."""
        codes = self.forward(x, embed=True)
        with torch.no_grad():
            logits = self.model.fc8(self.model.dropout8(codes.to(self.dtype or torch.float32)))
        return logits.float(), codes

    def norm_for(self, size: int) -> A.Normalize:
        """The normalisation for S' x S' images (a mean image is resized when S' differs)."""
        return self.norm.for_size(size)

    def read_image(self, data: bytes) -> Image.Image:
        """An encoded image file -> the RGB image every command sees: EXIF-rotated, and a JPEG whose
        shorter side is at least 3 S decoded at reduced DCT scale (1/2 to 1/8, the shorter side kept
        >= 1.5 S; alexnet.data.decode.open_rgb with min_side=S), so that a 108 MP photo costs a 2 MP
        decode. predict, serve, neighbors and the Python API (Predictor.predict_bytes/predict_paths)
        all decode here and so agree exactly; a full-size decode of such a JPEG (PIL's Image.open, or
        your own pipeline in front of the ONNX export) differs by about 1e-3 in probability
        (tests/test_predict_parity.py). Raises BadImage for what does not decode."""
        return open_rgb(data, min_side=self.size)

    def preprocess(self, images: list[Image.Image], views: int = 1) -> torch.Tensor:
        """PIL RGB images -> (B, 3, C, C) or (B, 10, 3, C, C) float, on self.device."""
        # np.array: a writable copy (PIL's buffer is read-only)
        arrays = [torch.from_numpy(np.array(resize_crop(im, self.size))).permute(2, 0, 1) for im in images]
        batch = torch.stack(arrays).to(self.device)
        return A.eval_views(batch, self.crop, views, self.norm)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, C, C) or (B, V, 3, C, C) -> (B, classes) softmax, averaged over the V views."""
        views = x.shape[1] if x.dim() == 5 else 1
        p = F.softmax(self.forward(x.flatten(0, 1) if views > 1 else x), dim=1)
        return p.view(-1, views, p.shape[1]).mean(1)


def normalisation_of(data: dict) -> A.Normalize:
    """The mean subtraction a network was trained with, from a checkpoint's "data" entry (or a
    weights.Source's): the §2 mean image, or per-channel mean/std, on the 0-255 scale."""
    if data["mean_mode"] == "pixel":
        return A.Normalize(mean_image=torch.as_tensor(data["mean_image"]).float())
    return A.Normalize(mean=torch.as_tensor(data["mean"]).float(), std=torch.as_tensor(data["std"]).float())


def model_from_source(src: weights.Source, **options) -> torch.nn.Module:
    """The network the weights are for (its model config, with `options` over it: alexnet.model.build's
    keywords), every tensor loaded from `src`, in eval mode. Raises WeightsError for weights of no
    known network, and listing the tensors that do not fit."""
    if src.model is None:
        raise weights.WeightsError(f"{src.origin} ({src.kind}): not one of our checkpoints and not torchvision's "
                                   f"AlexNet layout (features.N / classifier.N keys); cannot tell which network it is")
    model = build(src.model, src.num_classes, **{"init": "kaiming", **options})  # every tensor is loaded next
    weights.load_into(model, src, strict=True)
    return model.eval()


def from_source(src: weights.Source, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Network:
    """A ready network from weights read by alexnet.weights; every tensor must fit (WeightsError
    lists the ones that do not), and the normalisation is the one the weights were trained with."""
    model = model_from_source(src)
    n = src.num_classes
    classes = src.classes or [{"id": str(i), "name": f"class {i}"} for i in range(n)]
    d = src.data
    return Network(model, classes, int(d["size"]), int(d["crop"]), normalisation_of(d), src.origin, src.sha256,
                   validation=src.validation, config=dict(src.model)).to(device, dtype)


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Network:
    """A network from a checkpoint: one of ours (last.pt / best.pt), or any file alexnet.weights
    reads (torchvision's reference-script checkpoints, state dicts), on `device`, computing in `dtype`
    (the weights converted to it once; None: fp32). Raises CheckpointError for a missing or damaged
    file, WeightsError for one that holds no AlexNet."""
    return from_source(weights.read(str(path), "checkpoint"), device, dtype)


def load_weights(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Network:
    """Weights by name ('torchvision': the published AlexNet through torchvision's weights API,
    downloaded once into torch's cache) or file: torchvision-layout state dicts in any of the forms
    alexnet.weights reads, or one of our checkpoints."""
    return from_source(weights.read(spec), device, dtype)


def load_any(checkpoint_path: str | None, weights: str | None, device="cpu", dtype: torch.dtype | None = None) -> Network:
    if bool(checkpoint_path) == bool(weights):
        raise UserError("give exactly one of a checkpoint or --weights torchvision|PATH (a checkpoint: CKPT or "
                        "--checkpoint CKPT, a file or a run folder)")
    return load(checkpoint_path, device, dtype) if checkpoint_path else load_weights(weights, device, dtype)
