"""`alexnet bench`: ours against the torchvision reference, side by side in one run.

    alexnet bench data --data prepared/imagenette [--device cuda] [--json out.json]
    alexnet bench train [--device cuda] [--batches 5] [--json out.json]
    alexnet bench feed --data prepared/imagenette [--device cuda] [--crop 128]   # alexnet.feed

train: images/s of a training step (forward, backward, SGD) of the same architecture at 224 px:
torchvision's AlexNet the plain way (fp32, NCHW) against ours (channels_last, and bf16 autocast),
and each as a share of the machine's measured matrix-multiply ceiling.

data: images/s of ready-to-train batches. Ours: prepared shards -> decode (libjpeg-turbo on CPU,
nvJPEG on CUDA) -> §4.1 crops, reflections, PCA colour, mean subtraction, as batches. Reference:
what users know from torchvision's classification reference: datasets.ImageFolder + Pillow +
Compose([RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize(...)]) in a
DataLoader with the same number of workers, on the source images the data set was prepared from.
Both run the same number of batches after the same warm-up, on the same cores, in alternating
rounds (best round of each side kept). The headline is float32 NCHW batches, the reference's own
output; bf16 channels_last (what the fast recipe feeds the model) is measured too, as are the
decode-only and augmentation-only rates of one process.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import mfu, runtime
from .errors import UserError
from .fileio import writable_output

WARMUP = 3  # batches not timed: worker start-up


def _rate(epochs, batches: int, in_flight: int = 0, sync=None) -> float:
    """images/s over `batches` batches after WARMUP + `in_flight` untimed ones. `epochs(k)` gives
    epoch k's batches; a data set smaller than the run is cycled (the reference's DataLoader then
    starts its workers again, ours keeps them, as in training). `in_flight` is what the workers
    make ahead while they start (workers x the DataLoader's prefetch factor 2): timing those would
    count queue reads, not work. Seen on an H200 host with 16 workers and 12 timed batches: a 96k
    img/s "reference"."""
    def stream():
        k = 0
        while True:
            yield from epochs(k)
            k += 1

    it = stream()
    for _ in range(WARMUP + in_flight):
        next(it)
    n, t = 0, time.perf_counter()
    for _ in range(batches):
        b = next(it)
        n += len(b[1]) if isinstance(b, (tuple, list)) else len(b.labels)
    if sync:
        sync()
    return n / (time.perf_counter() - t)


def reference_loader(root: Path, batch: int, workers: int, crop: int = 224):
    import torchvision
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(str(root), tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=False)


def bench_data(data: str, device: str = "cpu", batch: int = 128, batches: int = 30, workers: int | None = None,
               source: str | None = None, crop: int | None = None, rounds: int = 2) -> dict:
    from .data.augment import Normalize, sample_params, train_batch
    from .data.loader import Loader, LoaderSpec
    from .data.store import open_prepared

    ds = open_prepared(data)
    split = ds.split("train")
    crop = min(224, ds.size) if crop is None else crop  # §2's 224, or the whole image of a smaller set
    if crop > ds.size:
        raise UserError(f"crop {crop} is larger than {data}'s images ({ds.size} px)")
    workers = os.cpu_count() if workers is None else workers
    if source is None:
        src = ds.manifest["source"]
        if src["kind"] != "folder":
            raise UserError(f"{data} was prepared from a {src['kind']} source; the reference needs an "
                            "ImageFolder of the same images: give it with --source DIR")
        source = str(Path(src["path"]) / "train") if (Path(src["path"]) / "train").is_dir() else src["path"]
    if not Path(source).is_dir():
        raise UserError(f"reference images not found: {source}")
    if len(split) < batch:
        raise UserError(f"{data} has {len(split)} training images, fewer than one batch of {batch} "
                        f"(lower --batch-size)")
    in_flight = 2 * workers  # batches the workers prefetch (DataLoader's prefetch_factor 2)
    dev = torch.device(device)
    sync = lambda: runtime.synchronize(dev)  # noqa: E731
    result = {"device": str(dev), "batch": batch, "batches": batches, "workers": workers,
              "cores": os.cpu_count(), "crop": crop, "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(dev)

    # alternate the two sides (ours, reference, ours, reference) and keep each side's best round,
    # so that neither profits from running second (page cache, frequency) more than the other
    ours = {"float32": [], "bfloat16": []}
    reference = []
    for _ in range(rounds):
        for dtype, cl in (("float32", False), ("bfloat16", True)):
            loader = Loader(split, ds, LoaderSpec(batch, train=True, crop=crop, workers=workers, device=dev,
                                                  dtype=dtype, channels_last=cl))
            ours[dtype].append(_rate(loader.epoch, batches, in_flight, sync))
        ref = reference_loader(Path(source), batch, workers, crop)
        reference.append(_rate(lambda _: ref, batches, in_flight))
    ours = {k: max(v) for k, v in ours.items()}
    reference = max(reference)

    # one process, no pipeline: decode only, then augment only
    from .data.store import decode_jpegs
    idx = np.arange(min(len(split), 4 * batch))
    data_bytes = None if split.raw else split.payloads(idx)
    t = time.perf_counter()
    if split.raw:
        images = [im.clone() for im in split.images(idx)]
    else:
        images = decode_jpegs(data_bytes, dev)
    sync()
    decode = len(idx) / (time.perf_counter() - t)
    images = [im.to(dev) for im in images]
    norm = Normalize(mean_image=torch.as_tensor(ds.stats["mean_image"], dtype=torch.float32)).to(dev)
    eig = (torch.as_tensor(ds.stats["eigval"], dtype=torch.float32), torch.as_tensor(ds.stats["eigvec"], dtype=torch.float32))
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for k in range(0, len(images), batch):
        chunk = images[k:k + batch]
        p = sample_params(len(chunk), ds.size, crop, g, pca_std=0.1)
        train_batch(chunk if dev.type == "cpu" else torch.stack(chunk), p, norm, *eig, dtype=torch.bfloat16,
                    channels_last=True)
    sync()
    augment = len(images) / (time.perf_counter() - t)

    result.update({"images_per_s": ours["float32"], "dtype": "float32", "reference_images_per_s": reference,
                   "ratio": ours["float32"] / reference, "rounds": rounds,
                   "bfloat16_channels_last_images_per_s": ours["bfloat16"],
                   "bfloat16_channels_last_ratio": ours["bfloat16"] / reference,
                   "decode_images_per_s_one_process": decode, "augment_images_per_s_one_process": augment,
                   "data": str(Path(data).resolve()), "reference_source": str(Path(source).resolve()),
                   "encoding": ds.manifest["options"]["encoding"]})
    return result


def print_data(r: dict) -> None:
    where = r["device"] + (f" ({r['gpu']})" if "gpu" in r else "")
    print(f"input pipeline, {where}, {r['workers']} workers on {r['cores']} cores, batch {r['batch']}, "
          f"{r['batches']} batches after {WARMUP} + {2 * r['workers']} (prefetched) untimed, best of {r['rounds']} alternating rounds\n")
    rows = [("torchvision reference (ImageFolder + PIL + RandomResizedCrop, float32)", r["reference_images_per_s"], 1.0),
            ("ours, float32 NCHW", r["images_per_s"], r["ratio"]),
            ("ours, bfloat16 channels_last", r["bfloat16_channels_last_images_per_s"],
             r["bfloat16_channels_last_ratio"])]
    for name, rate, ratio in rows:
        print(f"  {name:<72}{rate:>9.0f} img/s {ratio:>6.2f}x")
    print(f"\n  one process: decode {r['decode_images_per_s_one_process']:.0f} img/s, "
          f"augment {r['augment_images_per_s_one_process']:.0f} img/s ({r['encoding']} data)")


def _step_rate(model, batch: int, size: int, device, amp: torch.dtype | None, channels_last: bool,
               steps: int, budget_s: float) -> float:
    """Training images/s of SGD steps on a random batch (after one warm-up step)."""
    import torch.nn.functional as F

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    sync = lambda: runtime.synchronize(device)  # noqa: E731

    def step():
        with runtime.autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    sync()
    done, t = 0, time.perf_counter()
    while done < steps and (done == 0 or time.perf_counter() - t < budget_s):
        step()
        done += 1
    sync()
    return batch * done / (time.perf_counter() - t)


def bench_train(device: str = "cpu", batch: int = 128, steps: int = 5, size: int = 224, budget_s: float = 60,
                compile: bool = True) -> dict:
    """Our training step (alexnet_owt, channels_last, the autocast dtype of precision=auto) against
    torchvision's AlexNet trained the plain way (fp32, NCHW), same batch and machine. compile=False
    leaves out the torch.compile row (its compilation takes a minute on a CPU)."""
    import torchvision

    from .model import build

    dev = torch.device(device)
    torch.manual_seed(0)
    flops_per_image = mfu.train_flops_per_image(build("alexnet_owt", 1000), size)
    rows = {}
    rows["torchvision fp32 NCHW"] = _step_rate(torchvision.models.alexnet(), batch, size, dev, None, False, steps, budget_s)
    rows["ours fp32 channels_last"] = _step_rate(build("alexnet_owt", 1000, init="kaiming"), batch, size, dev, None,
                                                 True, steps, budget_s)
    try:  # torch.compile (inductor): the warm-up step pays for the compilation, the timed ones do not
        if not compile:
            raise RuntimeError("left out (compile=False)")
        rows["ours fp32 channels_last compiled"] = _step_rate(
            torch.compile(build("alexnet_owt", 1000, init="kaiming").to(memory_format=torch.channels_last)),
            batch, size, dev, None, True, steps, budget_s)
    except Exception as e:  # no C++ compiler, unsupported platform
        print(f"torch.compile skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    auto = runtime.amp_dtype("auto", dev)
    native = auto == torch.bfloat16  # emulated bf16 is ~60x slower: one small step tells enough
    rows["ours bf16 channels_last"] = _step_rate(build("alexnet_owt", 1000, init="kaiming"),
                                                 batch if native else min(batch, 8), size, dev,
                                                 torch.bfloat16, True, steps if native else 1, budget_s)
    reference = rows["torchvision fp32 NCHW"]
    best = max(rows, key=rows.get)
    ceiling = {"fp32": mfu.ceiling(dev, None, refresh=True), "bf16": mfu.ceiling(dev, torch.bfloat16, refresh=True)}
    return {"device": str(dev), "batch": batch, "size": size, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "model": "alexnet_owt (torchvision's architecture)",
            "images_per_s": rows, "reference_images_per_s": reference,
            "ratios": {k: v / reference for k, v in rows.items()}, "best": best, "ratio": rows[best] / reference,
            "precision_auto": "fp32" if auto is None else str(auto).split(".")[-1],
            "cpu_native_bf16": runtime.cpu_has_native_bf16() if dev.type == "cpu" else None,
            "flops_per_image": flops_per_image,
            "ceiling_flops": {k: c["flops_per_s"] for k, c in ceiling.items()},
            "ceiling_best": {k: c["best"] for k, c in ceiling.items()},
            "fraction_of_ceiling": {k: v * flops_per_image / ceiling["bf16" if "bf16" in k else "fp32"]["flops_per_s"]
                                    for k, v in rows.items()},
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def print_train(r: dict) -> None:
    where = r["device"] + (f" ({r['gpu']})" if r.get("gpu") else f", {r['cores']} cores")
    print(f"training step of AlexNet ({r['model']}), {where}, batch {r['batch']} at {r['size']} px, "
          f"{r['flops_per_image'] / 1e9:.2f} GFLOP per image\n")
    for name, rate in r["images_per_s"].items():
        print(f"  {name:<32}{rate:>9.1f} img/s {r['ratios'][name]:>6.2f}x   "
              f"{100 * r['fraction_of_ceiling'][name]:>5.1f}% of the {'bf16' if 'bf16' in name else 'fp32'} ceiling")
    c, b = r["ceiling_flops"], r["ceiling_best"]
    print(f"\n  measured ceiling (best of AlexNet's convolutions and matrix products, alexnet.mfu): "
          f"fp32 {c['fp32'] / 1e9:.0f} GFLOP/s ({b['fp32']}), bf16 {c['bf16'] / 1e9:.0f} GFLOP/s ({b['bf16']}); "
          f"precision=auto picks {r['precision_auto']} here")
    if r.get("cpu_native_bf16") is False:
        print("  this CPU has no native bf16 (AVX512-BF16/AMX): PyTorch emulates it, so bf16 is far slower than fp32")


def _infer_rate(fn, x: torch.Tensor, repeats: int, sync) -> float:
    fn(x)
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    sync()
    return len(x) * repeats / (time.perf_counter() - t)


def _latency_ms(fn, x: torch.Tensor, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times[1:])[len(times[1:]) // 2]  # median, after a warm-up call


def bench_infer(device: str = "cpu", batch: int = 64, repeats: int = 3) -> dict:
    """Batched evaluation (centre crop; 10 views = 10x the images) and single-image latency: ours
    (channels_last; bf16 weights where bf16 is native, as alexnet.inference loads them; onnxruntime
    on CPU) against torchvision's AlexNet in eager fp32, same weights, with the largest difference
    in probabilities stated."""
    import tempfile

    import torch.nn.functional as F
    import torchvision

    from .model import build

    dev = torch.device(device)
    sync = lambda: runtime.synchronize(dev)  # noqa: E731
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval().to(dev)
    ours = build("alexnet_owt", 1000)
    ours.load_state_dict(reference.state_dict())
    ours = ours.eval().to(dev, memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 224, 224, device=dev) * 4 - 2  # normalised images
    one = x[:1]

    def run_reference(t):
        with torch.no_grad():
            return reference(t)

    def run_ours(t):
        with torch.no_grad():
            return ours(t.contiguous(memory_format=torch.channels_last))

    variants = {"torchvision eager fp32": run_reference, "ours fp32 channels_last": run_ours}
    auto = runtime.amp_dtype("auto", dev)
    if auto is not None:  # as alexnet.inference does: the weights converted once (autocast recasts them every call)
        low = build("alexnet_owt", 1000)
        low.load_state_dict(reference.state_dict())
        low = low.eval().to(dev, auto, memory_format=torch.channels_last)

        def run_low(t):
            with torch.no_grad():
                return low(t.to(auto).contiguous(memory_format=torch.channels_last)).float()
        variants[f"ours {runtime.precision_name(auto)} weights channels_last"] = run_low
    if dev.type == "cpu":
        try:
            import onnxruntime as ort

            from .export import exportable

            path = tempfile.mktemp(suffix=".onnx")
            torch.onnx.export(exportable(ours, 224), (x[:2].contiguous(),), path, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = os.cpu_count() or 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            os.unlink(path)
            variants["ours onnxruntime fp32"] = lambda t: torch.from_numpy(session.run(None, {"x": t.numpy()})[0])
        except ImportError:
            pass
    rows = {}
    ten = x[:max(1, batch // 10)].repeat_interleave(10, 0)  # the 10 views of batch/10 images
    ref_probs = F.softmax(run_reference(x).float(), 1).cpu()
    for name, fn in variants.items():
        probs = F.softmax(fn(x).float(), 1).cpu()
        rows[name] = {
            "centre_images_per_s": _infer_rate(fn, x, repeats, sync),
            "ten_view_images_per_s": _infer_rate(fn, ten, repeats, sync) / 10,  # per image of 10 views
            "latency_ms": _latency_ms(fn, one, 5 * repeats, sync),
            "max_probability_difference": float((probs - ref_probs).abs().max()),
            "top1_agreement": float((probs.argmax(1) == ref_probs.argmax(1)).float().mean()),
        }
    base = rows["torchvision eager fp32"]["centre_images_per_s"]
    best = max(rows, key=lambda k: rows[k]["centre_images_per_s"])
    return {"device": str(dev), "batch": batch, "cores": os.cpu_count(), "rows": rows, "best": best,
            "ratio": rows[best]["centre_images_per_s"] / base,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def print_infer(r: dict) -> None:
    where = r["device"] + (f" ({r['gpu']})" if r.get("gpu") else f", {r['cores']} cores")
    print(f"inference of AlexNet (torchvision's architecture and weights), {where}, batch {r['batch']}\n")
    print(f"  {'':<34}{'centre img/s':>13}{'10-view img/s':>15}{'1-image ms':>12}{'vs ref':>8}{'max |dp|':>10}{'top-1 =':>9}")
    base = r["rows"]["torchvision eager fp32"]["centre_images_per_s"]
    for name, row in r["rows"].items():
        print(f"  {name:<34}{row['centre_images_per_s']:>13.1f}{row['ten_view_images_per_s']:>15.1f}"
              f"{row['latency_ms']:>12.1f}{row['centre_images_per_s'] / base:>7.2f}x{row['max_probability_difference']:>10.1e}"
              f"{100 * row['top1_agreement']:>8.1f}%")


def main(args) -> int:
    if args.json:
        writable_output(args.json, "JSON report")
    if args.what == "feed":  # the resident path against streaming, and the step fed against the step alone
        from .feed import main as feed
        return feed(args)
    device = runtime.setup(args.device, distributed_job=False).device
    if args.what == "train":
        r = bench_train(device, batch=args.batch_size, steps=args.batches)
        print_train(r)
    elif args.what == "infer":
        r = bench_infer(device, batch=min(args.batch_size, 64))
        print_infer(r)
    else:
        if not args.data:
            raise UserError("bench data needs --data PREPARED (a folder made by alexnet prepare)")
        r = bench_data(args.data, device=device, batch=args.batch_size, batches=args.batches,
                       workers=args.workers, source=args.source)
        print_data(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0
