"""Weights as a safetensors file: what `alexnet export --format safetensors` writes, and how every
reader of weights (alexnet.checkpoint.read_file, then alexnet.weights.read) opens one.

    weightsfile.write(net, "model.safetensors", export.metadata(net, inside=False))
    f = weightsfile.read(path, "weights file", WeightsError)     # WeightsFile(tensors, metadata)
    safetensors.torch.load_file("model.safetensors")              # what any other tool does

safetensors is Hugging Face's format, the one timm and most model hubs publish in: named tensors
after a JSON header of strings; opening a file runs no code (unlike a pickle). The tensors are the
network's state dict and nothing else, so that `model.load_state_dict(load_file(path))` works in
any tool. They carry torchvision's names (`features.0.weight`) when the network is torchvision's
AlexNet (`torchvision_layout`: alexnet_owt with its own settings), so that
`torchvision.models.alexnet(num_classes=N).load_state_dict(load_file(path))` loads them; ours
(`conv1.weight`) otherwise. The header holds the ONNX export's metadata (alexnet.export.metadata,
values that are not strings as JSON) and what rebuilding the network and its preprocessing needs:

    format "alexnet-weights", version "1", layout "torchvision" | "alexnet", variant, model (the
    model config, JSON), mean_mode "pixel" | "channel", mean_rgb / std_rgb (channel: exact),
    mean_image (pixel: the (3, S, S) float32 mean image as little-endian bytes in base64) and
    mean_image_shape, validation (the run's best, when known).

The mean image is in the header, not a tensor, because an extra tensor would break other tools'
strict load_state_dict. A file without this header (`save_file(model.state_dict())`) is read as a
state dict, as a .pth is.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .fileio import atomic_write

FORMAT, VERSION = "alexnet-weights", "1"


@dataclass
class WeightsFile:
    """A safetensors file as read: its tensors (on the CPU) and its header's metadata."""
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def ours(self) -> bool:
        """Written by `alexnet export` (its header says what the network and preprocessing are)."""
        return self.metadata.get("format") == FORMAT


def is_safetensors(path: str | Path) -> bool:
    """True for a file named .safetensors, or one that starts as safetensors files do: an 8-byte
    little-endian header length, then the header's '{' (torch's files start with a zip's "PK" or
    a pickle's 0x80). An unreadable file is False: torch.load's error then says what is wrong."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def read(path: str | Path, what: str, error: type[UserError]) -> WeightsFile:
    """The tensors and metadata of a safetensors file, through safetensors' own reader. Raises
    `error`, one line naming the file as `what`, for a truncated or damaged file (safetensors'
    reason and the file's size)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # SafetensorError (header too small/large, file not covered, bad JSON), dtypes torch lacks
        reason = (str(e).strip().splitlines() or [""])[0].replace("Error while deserializing header: ", "")[:200]
        raise error(f"{what} {path} is a damaged or truncated safetensors file ({type(e).__name__}: {reason}, "
                    f"{path.stat().st_size:,} bytes): export or download it again") from None
    return WeightsFile(tensors, metadata)


def torchvision_layout(model: dict) -> bool:
    """Whether a network of this model config is exactly torchvision.models.alexnet (alexnet_owt
    with no normalisation layers, overlapping pooling, ReLUs, full width and 4096 hidden units):
    only then are its tensors written under torchvision's names, which its AlexNet loads."""
    from .model import model_config

    m = model_config(model)
    return (m.name == "alexnet_owt" and m.norm in (None, "none") and m.pooling == "overlap"
            and m.activation == "relu" and m.width == 1.0 and m.hidden == 4096 and m.towers in (None, 1))


def torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Our state dict under torchvision's names (conv1.weight -> features.0.weight), or None when
    a key has no torchvision name."""
    from .model import TORCHVISION_KEYS

    theirs = {ours: tv for tv, ours in TORCHVISION_KEYS.items()}
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in theirs if key.startswith(p)), None)
        if prefix is None:
            return None
        renamed[theirs[prefix] + key[len(prefix):]] = value
    return renamed


def write(net, out: str | Path, meta: dict) -> Path:
    """Write the weights of `net` (an alexnet.inference.Network, whose `config` is its model
    config) and `meta` (alexnet.export.metadata) to `out` as safetensors, atomically. Raises
    UserError when the network's model settings are unknown."""
    from safetensors.torch import save

    if net.config is None:
        raise UserError(f"{net.source}: the network's model settings are unknown, so a safetensors file of it "
                        f"could not be read back; export it as onnx, torchscript or pt2")
    # contiguous: the weights sit in channels_last for inference, and safetensors stores dense tensors
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.model.state_dict().items()}
    tv = torchvision_names(state) if torchvision_layout(net.config) else None
    n = net.norm
    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    header.update(format=FORMAT, version=VERSION, layout="alexnet" if tv is None else "torchvision",
                  model=json.dumps(net.config), mean_mode="channel" if n.mean_image is None else "pixel")
    if n.mean_image is not None:
        image = n.mean_image.detach().to("cpu", torch.float32).contiguous()
        header["mean_image"] = base64.b64encode(image.numpy().astype("<f4").tobytes()).decode("ascii")
        header["mean_image_shape"] = json.dumps(list(image.shape))
    if net.validation is not None:
        header["validation"] = json.dumps(net.validation)
    data = save(tv or state, metadata=header)
    return atomic_write(out, data)


def fields(f: WeightsFile, path: str | Path, error: type[UserError]) -> dict:
    """What one of our files' header says, as alexnet.weights.Source's fields: model, classes, data
    (the normalisation: mean_mode, mean, std, mean_image, size, crop), validation, notes. Raises
    `error` for another version or a header whose values do not parse."""
    m = f.metadata
    if m.get("version") != VERSION:
        raise error(f"{path} is alexnet weights version {m.get('version')}; this alexnet reads {VERSION}")
    try:
        model = json.loads(m["model"])
        ids, names = json.loads(m["class_ids"]), json.loads(m["class_names"])
        data = {"size": int(m["resize_shorter_side"]), "crop": int(m["input_size"]), "mean_mode": m["mean_mode"],
                "mean": None, "std": None, "mean_image": None}
        if m["mean_mode"] == "pixel":
            shape = json.loads(m["mean_image_shape"])
            raw = np.frombuffer(base64.b64decode(m["mean_image"], validate=True), "<f4")
            data["mean_image"] = torch.from_numpy(raw.reshape(shape).astype(np.float32))
        else:
            data["mean"] = torch.tensor(json.loads(m["mean_rgb"]), dtype=torch.float32)
            data["std"] = torch.tensor(json.loads(m["std_rgb"]), dtype=torch.float32)
        validation = json.loads(m["validation"]) if "validation" in m else None
    except (KeyError, ValueError, TypeError) as e:  # a hand-edited or damaged header
        raise error(f"{path}: its alexnet metadata is damaged ({type(e).__name__}: {str(e)[:120]}): export it "
                    f"again, or strip the metadata to read it as a plain state dict") from None
    notes = [f"exported by alexnet from {m.get('source', '?')} (sha256 {m.get('source_sha256', '?')[:12]})"]
    return {"model": model, "classes": [{"id": i, "name": n} for i, n in zip(ids, names)], "data": data,
            "validation": validation, "notes": notes}
