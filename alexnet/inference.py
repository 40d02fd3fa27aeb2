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

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import checkpoint
from .data import augment as A
from .data.classes import ilsvrc2012
from .data.decode import resize_crop
from .errors import UserError
from .model import build, from_config

# torchvision's ImageNet normalisation, on the 0-255 scale
TORCHVISION_MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
TORCHVISION_STD = torch.tensor([0.229, 0.224, 0.225]) * 255
TORCHVISION_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


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

    def to(self, device) -> "Network":
        self.device = torch.device(device)
        self.model.to(self.device)
        self.norm = self.norm.to(self.device)
        return self

    def norm_for(self, size: int) -> A.Normalize:
        """The normalisation for S' x S' images (a mean image is resized when S' differs)."""
        if self.norm.mean_image is None or self.norm.mean_image.shape[-1] == size:
            return self.norm
        m = F.interpolate(self.norm.mean_image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        return A.Normalize(mean_image=m)

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
        logits = self.model(x.flatten(0, 1) if views > 1 else x).float()
        p = F.softmax(logits, dim=1)
        return p.view(-1, views, p.shape[1]).mean(1)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def load(path: str | Path, device: str | torch.device = "cpu") -> Network:
    """A network from one of our checkpoints (last.pt / best.pt)."""
    path = Path(path)
    state = checkpoint.load(path)
    m = state["config"]["model"]
    model = from_config(m, state["num_classes"], init="kaiming")
    model.load_state_dict(state["model"])
    model.eval()
    d = state["data"]
    norm = (A.Normalize(mean_image=d["mean_image"].float()) if d["mean_mode"] == "pixel"
            else A.Normalize(mean=d["mean"].float(), std=d["std"].float()))
    return Network(model, list(state["classes"]), int(d["size"]), int(d["crop"]), norm, str(path),
                   sha256_of(path)).to(device)


def load_weights(spec: str, device: str | torch.device = "cpu") -> Network:
    """torchvision's published AlexNet ('torchvision': through its weights API, downloaded once into
    torch's cache) or a local .pth state dict of torchvision.models.alexnet."""
    if spec == "torchvision":
        try:
            from torchvision.models import AlexNet_Weights
            state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # offline, proxy, corrupt download
            raise UserError(f"could not fetch torchvision's AlexNet weights ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:150]}); download {TORCHVISION_URL} elsewhere and pass "
                            f"--weights PATH") from None
        source, digest = "torchvision:AlexNet_Weights.IMAGENET1K_V1", "7be5be79"
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"weights file not found: {path} (use --weights torchvision or a .pth path)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"cannot read weights {path}: {type(e).__name__}: {str(e).splitlines()[0][:150]}") from None
        if isinstance(state, dict) and "model" in state and "format" in state:
            raise UserError(f"{path} is an alexnet checkpoint: pass it as a checkpoint, not --weights")
        source, digest = str(path), sha256_of(path)
    model = build("alexnet_owt", 1000, init="kaiming")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{spec} is not a state dict of torchvision.models.alexnet: {str(e).splitlines()[0][:200]}") from None
    model.eval()
    classes = [c.to_json() for c in ilsvrc2012()]
    return Network(model, classes, 256, 224, A.Normalize(mean=TORCHVISION_MEAN, std=TORCHVISION_STD),
                   source, digest).to(device)


def load_any(checkpoint_path: str | None, weights: str | None, device="cpu") -> Network:
    if bool(checkpoint_path) == bool(weights):
        raise UserError("give exactly one of a checkpoint (--checkpoint CKPT) or --weights torchvision|PATH")
    return load(checkpoint_path, device) if checkpoint_path else load_weights(weights, device)
