"""Weights from anywhere, onto a network, with a table that says what happened to each tensor.

    src = weights.read("torchvision")                  # the published alexnet-owt weights (torchvision's API)
    src = weights.read("runs/x/best.pt")               # one of our checkpoints
    src = weights.read("model_89.pth")                 # what other tools save (see below)
    rows = weights.load_into(model, src)               # copy what matches; re-initialise the rest
    print(weights.table(rows))

`read` is the one reader of a file named anywhere as weights or as a checkpoint (--init, --weights,
every command's CKPT and --checkpoint), through alexnet.checkpoint.read_file. What other tools write,
all read safely (`torch.load(weights_only=True)`: nothing in the file is executed; argparse.Namespace,
which torchvision's reference scripts store as "args", is allowed):
- a bare state dict (`torch.save(model.state_dict())`);
- `{"model": state_dict, "optimizer": ..., "lr_scheduler": ..., "epoch": N, "args": Namespace(...)}`
  (torchvision's references/classification; its --val-resize-size/--val-crop-size are used);
- `{"state_dict": ..., "arch": ..., "best_acc1": ...}` (pytorch/examples' imagenet script);
- keys carrying the prefixes wrappers add: `module.` (DataParallel, DDP), `features.module.`
  (pytorch/examples wraps alexnet's features in DataParallel), `_orig_mod.` (torch.compile);
- safetensors: what `alexnet export --format safetensors` writes (the weights with our metadata:
  read as one of our checkpoints) and any other state dict in safetensors (alexnet.weightsfile).
torchvision's key names (`features.0.weight`) map onto ours (`conv1.weight`) as the model's load hook
does. A tensor is copied when the network has the same name with the same shape; the others are
re-initialised (a new classifier head when the class count differs: §6's fine-tuning) or ignored,
each with its reason. A source tensor stored in another floating dtype (float16, bfloat16, float64,
as hubs publish) is converted, as load_state_dict does, and the table says so; a non-floating one
(int64, bool) where the network has floating-point weights is a WeightsError: such a file is
damaged or holds something else, and converting it would load garbage without a word.

Normalisation travels with the weights: torchvision's expect ImageNet's per-channel mean/std on the
0-1 scale (here on the 0-255 scale), ours carry their training set's mean image or channel mean/std
(the checkpoint's "data" entry).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, weightsfile
from .errors import UserError
from .fileio import sha256_file

# torchvision's ImageNet normalisation, on the 0-255 scale
TORCHVISION_MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
TORCHVISION_STD = torch.tensor([0.229, 0.224, 0.225]) * 255
TORCHVISION_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
PREFIXES = ("module.", "_orig_mod.")  # wrappers' prefixes, anywhere in a key (features.module.0.weight)


class WeightsError(UserError):
    """Weights that cannot be read or do not fit the network."""


@dataclass
class Source:
    """Weights read from somewhere, with what is known about how they were trained."""
    state: dict[str, torch.Tensor]  # flat state dict, wrapper prefixes removed, torchvision names kept
    kind: str  # "alexnet checkpoint" | "torchvision weights" | "state dict" | "torchvision reference" | ...
    origin: str  # the path, or torchvision:AlexNet_Weights.IMAGENET1K_V1
    sha256: str  # of the file ("7be5be79..." prefix for torchvision's, as its file name says)
    model: dict | None = None  # the model config section (ours), or {"name": "alexnet_owt"} (torchvision's)
    classes: list[dict] | None = None  # [{"id", "name"}] in output order, when known
    data: dict | None = None  # normalisation: {"mean_mode", "mean", "std", "mean_image", "size", "crop"}
    notes: list[str] = field(default_factory=list)
    validation: dict | None = None  # our checkpoints: the run's best validation {"top1", "top5", "epoch"}
    ours: bool = False  # written by alexnet (a checkpoint, or an export's safetensors): `model` is its whole config

    @property
    def num_classes(self) -> int | None:
        for key in ("fc8.weight", "classifier.6.weight"):
            if key in self.state:
                return int(self.state[key].shape[0])
        return None


def torchvision_data() -> dict:
    """torchvision's AlexNet preprocessing: shorter side 256, centre 224, ImageNet mean/std."""
    return {"size": 256, "crop": 224, "mean_mode": "channel", "mean": TORCHVISION_MEAN.clone(),
            "std": TORCHVISION_STD.clone(), "mean_image": None}


def read(spec: str, what: str = "weights file") -> Source:
    """The one reader of every file named as weights or as a checkpoint (--init, --weights, CKPT,
    --checkpoint): "torchvision" (for weights only: the published file, through torchvision's API)
    or a path, read by alexnet.checkpoint.read_file. `what` names the file in messages ("weights
    file", "checkpoint"). Raises one line: WeightsError for a download that fails or a file that
    holds no state dict; for a missing or damaged file, WeightsError (weights) or CheckpointError."""
    from .data.classes import ilsvrc2012

    imagenet = [c.to_json() for c in ilsvrc2012()]
    if spec == "torchvision" and what == "weights file":
        try:
            from torchvision.models import AlexNet_Weights
            state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # offline, proxy, corrupt download
            raise WeightsError(f"could not fetch torchvision's AlexNet weights ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:150] if str(e) else ''}); download {TORCHVISION_URL} "
                               f"elsewhere and pass its path (--weights PATH, --init PATH)") from None
        return Source(dict(state), "torchvision weights", "torchvision:AlexNet_Weights.IMAGENET1K_V1", "7be5be79",
                      {"name": "alexnet_owt"}, imagenet, torchvision_data())
    path = Path(spec)
    if not path.exists() and what == "weights file":
        raise WeightsError(f"weights file not found: {path} (give 'torchvision', one of our checkpoints, "
                           f"or a state dict .pth or .safetensors)")
    error = WeightsError if what == "weights file" else checkpoint.CheckpointError
    obj = checkpoint.read_file(path, what, error)
    digest = sha256_file(path)
    if isinstance(obj, dict) and obj.get("format") == "alexnet-checkpoint":
        return from_checkpoint(checkpoint.ours(obj, path), str(path), digest)
    kind, state, args = "state dict", obj, None
    if isinstance(obj, weightsfile.WeightsFile):
        if obj.ours:
            return Source(obj.tensors, "alexnet weights (safetensors)", str(path), digest, ours=True,
                          **weightsfile.fields(obj, path, error))
        kind, state = "state dict (safetensors)", obj.tensors
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        kind, state = "torchvision reference checkpoint ('model')", obj["model"]
        args = obj.get("args") if isinstance(obj.get("args"), argparse.Namespace) else None
        if args is not None and getattr(args, "model", None):
            kind = f"torchvision reference checkpoint of {args.model} ('model', epoch {obj.get('epoch', '?')})"
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        kind, state = "pytorch/examples checkpoint ('state_dict')", obj["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict (a mapping of names to tensors), nor one under "
                           f"'model' or 'state_dict'")
    stripped, notes = {}, []
    for key, value in state.items():
        clean = key
        for prefix in PREFIXES:
            clean = clean.replace(prefix, "")
        stripped[clean] = value
    removed = sorted({p for k in state for p in PREFIXES if p in k})
    if removed:
        notes.append(f"removed the wrapper prefix(es) {', '.join(removed)} from the keys")
    source = Source(stripped, kind, str(path), digest, notes=notes)
    if any(k.startswith("features.") for k in stripped):  # torchvision.models.alexnet's names
        source.model = {"name": "alexnet_owt"}
        source.data = reference_sizes(torchvision_data(), args)
        source.classes = imagenet if source.num_classes == 1000 else None
        notes.append("torchvision's AlexNet layout: ImageNet mean/std normalisation assumed, as its weights expect")
    return source


def reference_sizes(data: dict, args: argparse.Namespace | None) -> dict:
    """torchvision's preprocessing with the evaluation sizes a reference-script run was given
    (--val-resize-size, --val-crop-size; 256 and 224 by default there, as here)."""
    size, crop = getattr(args, "val_resize_size", None), getattr(args, "val_crop_size", None)
    if isinstance(size, int) and isinstance(crop, int) and 0 < crop <= size:
        data.update(size=size, crop=crop)
    return data


def from_checkpoint(state: dict, origin: str, digest: str) -> Source:
    """A Source from one of our checkpoints (already loaded and checked: alexnet.checkpoint.ours)."""
    best = state.get("best")
    validation = dict(best) if isinstance(best, dict) and best.get("epoch") is not None else None
    return Source(dict(state["model"]), "alexnet checkpoint", origin, digest, dict(state["config"]["model"]),
                  list(state["classes"]), dict(state["data"]), validation=validation, ours=True)


def load_into(model: torch.nn.Module, source: Source, strict: bool = False,
              reinit: dict[str, str] | None = None) -> list[dict]:
    """Copy source tensors into `model` where names (after torchvision's renaming) and shapes
    match; the model's other tensors keep their initialisation, as do the keys of `reinit` (with
    its reason). A floating tensor of another width is converted (its row says so). Returns one
    row per tensor: {"key", "action": "loaded" | "re-initialised" | "ignored", "why"}. Raises
    WeightsError, one line, for a non-floating source tensor where the model's is floating (see the
    module docstring), and with strict=True for every key that did not load (for evaluating, not
    fine-tuning)."""
    renamed = our_names(source.state)
    own = model.state_dict()
    wrong = [f"{k} is {str(renamed[k].dtype).removeprefix('torch.')}" for k, t in own.items()
             if k in renamed and t.is_floating_point() and not renamed[k].is_floating_point()]
    if wrong:
        raise WeightsError(f"{source.origin}: {', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}, where the "
                           f"network's weights are floating point: the file is damaged or holds something other "
                           f"than weights; export or save it again")
    rows, load = [], {}
    for key, tensor in own.items():
        if key in (reinit or {}):
            rows.append({"key": key, "action": "re-initialised", "why": reinit[key]})
        elif key not in renamed:
            rows.append({"key": key, "action": "re-initialised", "why": "not in the source"})
        elif renamed[key].shape != tensor.shape:
            rows.append({"key": key, "action": "re-initialised",
                         "why": f"shape {tuple(renamed[key].shape)} in the source, {tuple(tensor.shape)} here"
                                + (" (another number of classes: a new head)" if key.startswith("fc8.") else "")})
        else:
            load[key] = renamed[key]
            dtype = renamed[key].dtype
            rows.append({"key": key, "action": "loaded", "why": "same name and shape" + (
                f" ({str(dtype).removeprefix('torch.')} in the source, converted)" if dtype != tensor.dtype else "")})
    rows += [{"key": k, "action": "ignored", "why": "not in this network"} for k in renamed if k not in own]
    if strict and len(load) < len(own):
        bad = [f"{r['key']} ({r['why']})" for r in rows if r["action"] != "loaded"]
        raise WeightsError(f"{source.origin} does not fit the network: {len(bad)} tensor(s) do not load: "
                           f"{'; '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}")
    model.load_state_dict({**own, **load})
    return rows


def our_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under our names: torchvision's (`features.0.weight`) become ours
    (`conv1.weight`) as the model's load hook renames them; ours stay as they are."""
    from .model import TORCHVISION_KEYS

    renamed = {}
    for key, value in state.items():
        for theirs, ours in TORCHVISION_KEYS.items():
            if key.startswith(theirs):
                key = ours + key[len(theirs):]
                break
        renamed[key] = value
    return renamed


def table(rows: list[dict], source: Source) -> str:
    """The load table printed at the start of a fine-tuning run: tensors grouped by layer."""
    lines = [f"initial weights: {source.kind} {source.origin} (sha256 {source.sha256[:12]})"]
    lines += [f"  note: {n}" for n in source.notes]
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        layer, _, name = r["key"].rpartition(".")
        groups.setdefault((layer or name, r["action"], r["why"]), []).append(name if layer else r["key"])
    width = max((len(layer) for layer, _, _ in groups), default=5)
    for (layer, action, why), names in groups.items():
        lines.append(f"  {layer:<{width}}  {action:<14}  {', '.join(names):<28} {why}")
    counts = {a: sum(1 for r in rows if r["action"] == a) for a in ("loaded", "re-initialised", "ignored")}
    lines.append("  " + ", ".join(f"{n} tensor(s) {a}" for a, n in counts.items()))
    return "\n".join(lines)
