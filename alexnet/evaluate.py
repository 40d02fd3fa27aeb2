"""Exact evaluation (§6): top-1 / top-5 error, loss, per-class accuracy, confusions, any number of ranks.

    alexnet evaluate runs/x/best.pt --data prepared/imagenet --views 10 --json report.json
    alexnet evaluate a.pt b.pt c.pt d.pt e.pt --data prepared/imagenet     # an ensemble (§6 "5 CNNs")
    alexnet evaluate --weights torchvision --data ~/imagenet/val           # an ImageFolder, on the fly
    torchrun --nproc_per_node=4 -m alexnet evaluate best.pt --data prepared/imagenet

Counting is exact: every rank sums its own images' counts and the sums are all-reduced, so each
image is counted once whatever the world size (no padding duplicates). With 10 views the softmax of
the views is averaged per image before ranking (§4.1); several networks (an ensemble) average their
softmaxes too. Ties count against the model: an image is top-k correct when fewer than k other
classes score at least as high as the true one, so a network that outputs the same score for every
class is never right by luck. The JSON report has top1_error, top5_error, top1, top5, loss,
n_images, views, per_class, best_classes and worst_classes (20 each, with names), most_confused
(pairs with names and an example image), the checkpoints and the data set's checksum; beside it
three figures that stay readable at 1,000 classes (alexnet.class_report): the confusion matrix
(whole up to 40 classes, else the 40 most confused), the per-class accuracies (best and worst
20), and the most confused pairs, each with an image that was taken for the other class.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from . import class_report, distributed, runtime
from .checkpoint import unwrap
from .model import evaluating
from .errors import UserError
from .fileio import writable_output
from .images import Images, collate


def at_chance(top1_error: float, classes: int | None) -> bool:
    """A run that did not learn: validation top-1 accuracy below 1.5x chance (1.5 / classes). Its
    figures mean nothing (a diverged or dead network, e.g. after too high a learning rate)."""
    return classes is not None and (1.0 - top1_error) < 1.5 / classes


def result_notes(top1_error: float, classes: int) -> list[str]:
    """What a reader must know before trusting the figures: a top-1 at chance,
    and a top-5 that is 100% by construction with 5 classes or fewer."""
    notes = []
    if at_chance(top1_error, classes):
        notes.append(f"warning: top-1 {100 * (1 - top1_error):.2f}% is chance level for {classes} classes "
                     f"({100 / classes:.1f}%): the network did not learn (too high a learning rate, a dead "
                     f"network, or labels that do not match the images)")
    if classes <= 5:
        notes.append(f"note: with {classes} classes top-5 counts every image right; read top-1 only")
    return notes


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C) scores, (B,) labels -> (B,) bool: fewer than k other classes score >= the true one."""
    true = probs.gather(1, labels[:, None])
    at_least = (probs >= true).sum(1) - 1  # the other classes scoring at least as high
    return at_least < k


class Tally:
    """Running sums of an evaluation on one rank; result() all-reduces them."""

    def __init__(self, num_classes: int, device, confusion: bool = False):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # n, top-1 right, top-5 right, loss
        self.per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # right, total
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device) \
            if confusion else None
        # with the confusion matrix: one image index per (true, predicted) pair (the largest: the
        # same whatever the batches and ranks), so that a report can show what was confused
        self.examples = torch.full((num_classes * num_classes,), -1, dtype=torch.long, device=device) \
            if confusion else None

    def add(self, probs: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """probs (B, K) scores, labels (B,) long; index (B,) long: the images' indices in the split,
        kept as examples of the pairs they fall in (with the confusion matrix only)."""
        right1 = topk_correct(probs, labels, 1)
        right5 = topk_correct(probs, labels, min(5, probs.shape[1]))
        nll = -torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).squeeze(1)
        self.sums += torch.stack([torch.tensor(float(len(labels)), device=self.sums.device),
                                  right1.sum().double(), right5.sum().double(), nll.sum().double()])
        self.per_class[0].index_add_(0, labels, right1.double())
        self.per_class[1].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        if self.confusion is not None:
            pairs = labels * self.confusion.shape[0] + probs.argmax(1)
            self.confusion.view(-1).index_add_(0, pairs, torch.ones_like(pairs, dtype=torch.float64))
            if index is not None:
                self.examples.scatter_reduce_(0, pairs, index.to(pairs.device), "amax")

    def result(self, counts: bool = True) -> dict:
        """The sums of every rank's images; counts=False: this rank's are left out of them (the
        second tower of a pair, whose images and logits are its partner's: alexnet.towers)."""
        if not counts:
            for t in (self.sums, self.per_class, self.confusion):
                if t is not None:
                    t.zero_()
        for t in (self.sums, self.per_class, self.confusion):
            if t is not None:
                distributed.all_reduce_sum(t)
        if self.examples is not None:
            distributed.all_reduce_max(self.examples)
        n, r1, r5, loss = self.sums.tolist()
        m = max(n, 1.0)
        acc = (self.per_class[0] / self.per_class[1].clamp_min(1)).tolist()
        out = {"n_images": int(n), "top1": r1 / m, "top5": r5 / m, "top1_error": 1 - r1 / m,
               "top5_error": 1 - r5 / m, "loss": loss / m,
               "per_class": [a if t > 0 else None for a, t in zip(acc, self.per_class[1].tolist())],
               "per_class_images": [int(t) for t in self.per_class[1].tolist()]}
        if self.confusion is not None:
            out["confusion"] = self.confusion.long().cpu()
            out["examples"] = self.examples.cpu()
        return out


@torch.no_grad()
def evaluate(models, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
             num_classes: int | None = None, counts: bool = True) -> dict:
    """Evaluate on a Loader's ready-made batches (the training loop's validation); counts=False:
    this rank takes part but its images are not counted (Tally.result)."""
    models = models if isinstance(models, (list, tuple)) else [models]
    with evaluating(*models):
        return _evaluate(models, loader, device, amp_dtype, num_classes, counts)


def _evaluate(models, loader, device, amp_dtype, num_classes, counts=True) -> dict:
    tally = Tally(num_classes or unwrap(models[0]).fc8.out_features, device)
    for batch in loader.epoch(0):
        x, y = batch.images, batch.labels.to(device)
        views = x.shape[1] if x.dim() == 5 else 1
        flat = x.flatten(0, 1) if views > 1 else x
        probs = 0
        for m in models:
            with runtime.autocast(device, amp_dtype):
                logits = m(flat)
            p = F.softmax(logits.float(), dim=1)
            probs = probs + (p.view(len(y), views, -1).mean(1) if views > 1 else p)
        tally.add(probs / len(models), y)
    return tally.result(counts)


# ------------------------------------------------------------------------------- the command

def _number(class_id: str) -> bool:
    return class_id.isascii() and class_id.isdigit()


def label_map(data_ids: list[str], network_ids: list[str], data: str) -> torch.Tensor:
    """Data set label -> network output, by class id; or, when the data set's classes are numbers
    the network does not know at all (ImageNetV2's folders 0..999 against --weights torchvision's
    WNIDs), the number is the output index."""
    index = {c: i for i, c in enumerate(network_ids)}
    missing = sorted(set(data_ids) - set(index), key=lambda c: (len(c), c))
    if not missing:
        return torch.tensor([index[c] for c in data_ids])
    if all(_number(c) for c in data_ids) and not set(data_ids) & set(index):
        if max(int(c) for c in data_ids) >= len(network_ids):
            raise UserError(f"{data}'s classes are numbered up to {max(int(c) for c in data_ids)}, read as output "
                            f"indices; the network has {len(network_ids)} outputs")
        return torch.tensor([int(c) for c in data_ids])
    raise UserError(f"{data} has classes the network does not know: {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}")


def evaluate_networks(networks, data: str, split: str = "val", views: int = 1, batch_size: int = 64,
                      workers: int | None = None, progress: bool = True, crop: int | None = None) -> dict:
    """Evaluate one network or an ensemble on a prepared split or an image folder (this rank's share).
    workers: loader processes (None: the rule of alexnet.runtime.loader_workers).
    crop: the side of the evaluation crops in px (default: each network's own, its checkpoint's
    eval.crop or training crop); at most the size the images are resized to (UserError)."""
    from tqdm import tqdm

    from .data.loader import eval_plan

    first = networks[0]
    for n in networks[1:]:
        if [c["id"] for c in n.classes] != [c["id"] for c in first.classes]:
            raise UserError(f"{n.source} and {first.source} predict different classes: they cannot form an ensemble")
    images = Images(data, split, first.size)
    if crop is not None and crop > first.size:
        raise UserError(f"--crop {crop} is larger than the {first.size} px images {first.source} is evaluated on "
                        f"(the shorter side is resized to its stored size): give at most {first.size}")
    ids = [c["id"] for c in first.classes]
    remap = label_map([c["id"] for c in images.classes], ids, data)
    ctx = distributed.init(first.device.type)
    plan = eval_plan(len(images), batch_size, ctx.world_size, ctx.rank)
    workers = runtime.loader_workers(first.device) if workers is None else workers
    loader = torch.utils.data.DataLoader(images, batch_sampler=[list(b) for b in plan], num_workers=workers,
                                         collate_fn=collate)
    tally = Tally(len(ids), first.device, confusion=True)
    failures = [{"path": e["path"], "error": e["reason"]} for e in images.listed_skipped] if ctx.main else []
    for batch, idx, bad in tqdm(loader, disable=not (progress and ctx.main), desc="evaluate", unit="batch"):
        failures += [{"path": images.keys[i], "error": e} for i, e in bad]
        if batch is None:
            continue
        batch = batch.to(first.device)
        labels = remap[torch.from_numpy(images.labels[idx.numpy()])].to(first.device)
        probs = 0
        for net in networks:
            from .data.augment import eval_views
            x = eval_views(batch, crop or net.crop, views, net.norm_for(batch.shape[-1]))
            probs = probs + net.probabilities(x)
        tally.add(probs / len(networks), labels, idx)
    result = tally.result()
    if result["n_images"] == 0:
        raise UserError(f"no image of {data} ({split}) could be read ({len(failures)} failed, e.g. "
                        f"{failures[0]['path'] + ': ' + failures[0]['error'] if failures else 'none found'}): "
                        f"nothing to evaluate")
    result.update({"views": views, "crop": crop or first.crop, "split": split, "data": str(Path(data).resolve()), "data_checksum": images.checksum,
                   "checkpoints": [{"source": n.source, "sha256": n.sha256} for n in networks],
                   "skipped": failures, "classes": first.classes, "images": images})
    return result


def main(args) -> int:
    from .inference import load, load_weights

    if not args.checkpoints and not args.weights:
        raise UserError("give one or more checkpoints, or --weights torchvision|PATH")
    if not Path(args.data).exists():
        raise UserError(f"data not found: {args.data}")
    if args.json:  # before the work: a report that cannot be written is known now, not after
        writable_output(args.json, "report")
    rt = runtime.setup(args.device, args.precision)  # under torchrun: this rank's GPU, then the group
    networks = [load(c, rt.device, rt.dtype) for c in args.checkpoints]
    if args.weights:
        networks.append(load_weights(args.weights, rt.device, rt.dtype))
    r = evaluate_networks(networks, args.data, args.split, args.views, args.batch_size, crop=args.crop,
                          workers=args.workers)
    if not rt.main:
        return 0
    confusion, examples, counts = r.pop("confusion"), r.pop("examples"), r.pop("per_class_images")
    images = r.pop("images")
    classes = r.pop("classes")
    rank = class_report.ranked(r["per_class"], counts, classes, n=20)
    r["per_class"] = [{"id": c["id"], "name": c["name"], "accuracy": a, "images": k}
                      for c, a, k in zip(classes, r["per_class"], counts)]
    r["most_confused"] = class_report.confused_pairs(confusion, classes, n=20, examples=examples)
    for pair in r["most_confused"]:  # the example by its file, not only its index
        if "example" in pair:
            pair["example_path"] = images.keys[pair["example"]]
    r["best_classes"], r["worst_classes"] = rank["best"], rank["worst"]
    print(f"{r['n_images']:,} images, {args.views} view(s) of {r['crop']} px, {len(networks)} network(s): top-1 error "
          f"{100 * r['top1_error']:.2f}%, top-5 error {100 * r['top5_error']:.2f}% (top-1 {100 * r['top1']:.3f}%, "
          f"top-5 {100 * r['top5']:.3f}%), loss {r['loss']:.4f}")
    for note in result_notes(r["top1_error"], len(classes)):
        print(note)
    if r["most_confused"]:
        print("most confused (true taken for predicted):")
    for p in r["most_confused"][:5]:
        print(f"  {p['count']:>5} x {p['true']} taken for {p['predicted']}")
    if len(classes) > 10:  # with few classes the per-class list is short enough to read in the JSON
        print("worst classes (top-1): " + ", ".join(f"{c['name']} {100 * c['accuracy']:.0f}%" for c in rank["worst"][:5]))
    if r["skipped"]:
        print(f"  {len(r['skipped'])} image(s) could not be read and were not counted, e.g. "
              f"{r['skipped'][0]['path']}: {r['skipped'][0]['error']}")
    if args.json:
        out = Path(args.json)
        r["confusion_png"] = str(class_report.confusion_png(confusion, classes, out.with_suffix(".confusion.png")))
        r["per_class_png"] = str(class_report.per_class_png(rank, out.with_suffix(".per_class.png")))
        if r["most_confused"]:
            r["confused_png"] = str(class_report.confused_png(r["most_confused"][:12], images,
                                                              out.with_suffix(".confused.png")))
        out.write_text(json.dumps(r, indent=2) + "\n")
        print(f"report: {out}; figures: {', '.join(r[k] for k in ('confusion_png', 'per_class_png', 'confused_png') if k in r)}")
    return 0
