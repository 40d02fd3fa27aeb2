"""The one script that proves the GPU path the first time a GPU is at hand.

    python benchmarks/gpu_check.py                         # on a CUDA machine: ~4 minutes on one H200
    python benchmarks/gpu_check.py --source COPY --train-minutes 1   # a machine without ../shared
    python benchmarks/gpu_check.py --data prepared/imagenette --out gpu_check/
    python benchmarks/gpu_check.py --smoke --out /tmp/gc   # any machine, tiny sizes, seconds (the test suite)
    python benchmarks/gpu_check.py --only train            # rerun stages (nvjpeg, bench, resident, train, minutes, towers)

In order, each stage recorded as ok / failed / skipped with its figures:
1. environment: GPU, driver-side CUDA, torch, cuDNN, NCCL versions;
2. the CUDA tests: nvJPEG decoding and GPU augmentation equal to the CPU path, a bf16 autocast
   training run, NCCL over 2 GPUs (pytest, the tests that skip without CUDA);
3. `alexnet bench data`, `bench train`, `bench infer` on the device, each against torchvision's
   reference on the same GPU (img/s, ratio, share of the measured bf16 ceiling);
4. nvJPEG's stream hazard: the same batches decoded twice behind queued work, compared bit for bit;
5. the resident data path: an ImageNet-shaped resident set (1,281,167 random images at
   128 px, 63 GB, made on the GPU) and the photos resident at 256 px with 224 crops, the fast
   recipe's step fed by it against the step alone (target: data under 5% of the time);
6. a 2-minute `fast` training run on Imagenette (resident where it fits: img/s, data-wait share,
   MFU, top-1);
7. `alexnet train --minutes 2` on Imagenette prepared at 256 px (the budget recipe chooses
   the network and crops for this GPU): top-1, images/s, the whole command's wall time, the choice;
8. a 2-process NCCL training run when the machine has 2 or more GPUs, else skipped with the reason;
9. §3.2's towers on 2 GPUs (benchmarks/towers.py: step time and bytes sent per step, towers against
   data parallelism) and a 2-process `--set model.parallel=towers` training run, when the machine
   has 2 or more GPUs, else skipped with the reason (in smoke mode on a CPU: 2 gloo processes).
The data: --data PREPARED, else --source DIR (default ../shared/data/imagenette) prepared once into
OUT/imagenette (size 144, as benchmarks/imagenette_budget.py) and OUT/imagenette256 (the
resident stage's 224 crops). OUT/gpu_check.json is rewritten after
every stage, so a run cut short by a time limit keeps what it measured. Writes OUT/gpu_check.json and
OUT/gpu_check.md (the readable table, also printed). The exit status is 1 when a stage failed.

--smoke runs every stage with tiny sizes on whatever device there is (CPU here): the built-in
shapes instead of Imagenette, a few batches, a few seconds of training, and no nested pytest, so
that the script cannot rot between GPU sessions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"
sys.path.insert(0, str(ROOT))


def stage(report: dict, name: str):
    """A decorator-like runner: report[name] = {"status", "seconds", ...figures} or the error."""
    def run(fn, *args, **kwargs):
        t = time.time()
        print(f"== {name}", flush=True)
        try:
            result = fn(*args, **kwargs) or {}
            status = result.pop("status", "ok")
        except Exception as e:  # a failed stage must not hide the others' figures
            result, status = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}, "failed"
            print(result["traceback"], file=sys.stderr)
        report[name] = {"status": status, "seconds": round(time.time() - t, 1), **result}
        if "out" in report:  # written after every stage: a run cut short by a time limit keeps what it measured
            Path(report["out"], "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        return report[name]
    return run


def environment() -> dict:
    import torch

    from alexnet.envinfo import environment as env
    e = env()
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "devices": e.get("devices", []), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def cuda_tests(smoke: bool) -> dict:
    if smoke:
        return {"status": "skipped", "reason": "smoke mode runs no nested pytest"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_loader.py", "tests/test_runtime.py", "tests/test_resident.py",
           "-k", "cuda or gpu or nccl"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    return {"status": "ok" if proc.returncode == 0 else "failed", "summary": tail, "command": " ".join(cmd[2:]),
            "output_tail": proc.stdout[-1500:]}


def data_set(args) -> tuple[Path, Path | None, Path]:
    """(prepared data set, its source ImageFolder for the reference pipeline, the same photos
    prepared at 256 px for the resident stage's 224 crops)."""
    from alexnet.data.prepare import prepare
    if args.data:
        return Path(args.data), None, Path(args.data)
    out = Path(args.out)
    if args.smoke:
        from alexnet.data import synthetic
        src = out / "shapes-src"
        if not (src / "train").is_dir():
            synthetic.write_folder(src, {"train": 40, "val": 10}, size=72, seed=0)
        prepare(src, out / "shapes", size=72, progress=False)
        return out / "shapes", src / "train", out / "shapes"
    source = Path(args.source) if args.source else IMAGENETTE
    if not source.is_dir():
        raise FileNotFoundError(f"no --data given and {source} is absent: give --source or --data")
    prepare(source, out / "imagenette", size=144, progress=True)  # resumes / does nothing when done
    prepare(source, out / "imagenette256", size=256, progress=True)
    return out / "imagenette", source / "train", out / "imagenette256"


def bench_all(device: str, data: Path, source: Path | None, smoke: bool) -> dict:
    from alexnet import bench
    figures = {}
    batch = 16 if smoke else 256
    batches = 2 if smoke else 60  # a small data set is cycled (bench._rate)
    d = bench.bench_data(str(data), device=device, batch=batch, batches=batches,
                         workers=2 if smoke else min(16, os.cpu_count() or 1), source=str(source) if source else None,
                         crop=64 if smoke else 128, rounds=1 if smoke else 2)
    figures["data"] = {k: d[k] for k in ("images_per_s", "reference_images_per_s", "ratio",
                                         "bfloat16_channels_last_images_per_s", "decode_images_per_s_one_process",
                                         "augment_images_per_s_one_process", "workers", "batch")}
    t = bench.bench_train(device, batch=8 if smoke else 256, steps=1 if smoke else 20, size=64 if smoke else 224,
                          budget_s=5 if smoke else 60, compile=not smoke)
    figures["train"] = {k: t[k] for k in ("images_per_s", "ratios", "fraction_of_ceiling", "ceiling_flops",
                                          "ceiling_best", "precision_auto", "batch", "size")}
    i = bench.bench_infer(device, batch=8 if smoke else 256, repeats=1 if smoke else 5)
    figures["infer"] = {"rows": i["rows"], "ratio": i["ratio"], "best": i["best"]}
    over = {k: v for k, v in t["fraction_of_ceiling"].items() if v > 1}
    if over:  # the ceiling must bound every real workload (alexnet.mfu)
        figures["ceiling_exceeded"] = over
        figures["status"] = "failed"
    return figures


def train_run(device: str, data: Path, out: Path, smoke: bool, nproc: int = 1, minutes: float = 2,
              parallel: str = "data") -> dict:
    """`alexnet train --preset fast` for a wall-clock budget, read back from its run folder (a new
    one: the run of an earlier check in the same OUT would otherwise be resumed, finished, and
    reported at 0 img/s)."""
    if out.exists():
        shutil.rmtree(out)
    sets = ["train.precision=auto", f"train.device={'cuda' if device.startswith('cuda') else device}",
            "train.epochs=1000", "eval.every=1000", f"train.budget_minutes={0.1 if smoke else minutes}",
            "data.crop=64" if smoke else "data.crop=128", "train.log_every=5" if smoke else "train.log_every=20",
            f"model.parallel={parallel}"]
    if smoke:
        sets += ["model.width=0.25", "model.hidden=64", "train.batch_size=16", "data.workers=2", "eval.batch_size=32"]
    else:
        sets += ["train.batch_size=512", "data.workers=8"]
    cmd = ["-m", "alexnet", "train", "--preset", "fast", "--data", str(data), "--out", str(out),
           *[a for s in sets for a in ("--set", s)]]
    if nproc > 1:
        cmd = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", *cmd]
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"status": "failed", "command": " ".join(cmd), "output_tail": (proc.stdout + proc.stderr)[-3000:]}
    s = json.loads((out / "summary.json").read_text())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    last = steps[-1] if steps else {}
    return {"command": "python " + " ".join(cmd), "top1": s["top1"], "top5": s["top5"], "images_per_s": s["images_per_s"],
            "epochs_done": s["epochs_done"], "precision": s["precision"], "device": s["device"],
            "world_size": s["world_size"], "ranks_in_sync": s["ranks_in_sync"],
            "data_wait": last.get("data_wait"), "mfu": last.get("mfu"), "peak_memory_gib": s.get("peak_memory_gib"),
            "ceiling": s.get("ceiling")}


def towers_stage(device: str, out: Path, smoke: bool) -> dict:
    """benchmarks/towers.py on 2 GPUs (NCCL), bf16: §3.2's split against data parallelism (smoke
    mode on a CPU: 2 gloo processes, tiny sizes, fp32)."""
    result = out / "towers.json"
    cuda = device.startswith("cuda")
    sizes = ["--size", "64", "--batch", "8", "--steps", "1"] if smoke else ["--size", "224", "--batch", "256"]
    cmd = [sys.executable, "benchmarks/towers.py", "--device", "cuda" if cuda else "cpu",
           "--precision", "bf16" if cuda else "fp32", *sizes, "--json", str(result)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"status": "failed", "command": " ".join(cmd), "output_tail": (proc.stdout + proc.stderr)[-3000:]}
    r = json.loads(result.read_text())
    s, b = r["seconds"], r["bytes_sent"]
    return {"command": " ".join(cmd[1:]), "step_s": s, "bytes_sent": b, "device": r["device"],
            "summary": f"towers {1000 * s['towers']:.0f} ms/step, {b['towers'] / 1e6:.0f} MB sent; data parallel "
                       f"{1000 * s['data']:.0f} ms/step, {b['data'] / 1e6:.0f} MB: {s['data'] / s['towers']:.2f}x the "
                       f"step rate"}


def minutes_run(device: str, data: Path, out: Path, smoke: bool, minutes: float = 2) -> dict:
    """`alexnet train --minutes M`, timed whole: what the recipe chose and what it reached."""
    if out.exists():
        shutil.rmtree(out)
    # smoke: 30 s, of which start-up takes 5-7 s alone and 15 s or more when the test suite loads
    # both cores (a CI pre-check under load failed at 0.3 min: the recipe needs 10 s after start-up)
    minutes = 0.5 if smoke else minutes
    cmd = ["-m", "alexnet", "train", "--data", str(data), "--out", str(out), "--minutes", f"{minutes:g}",
           "--device", "cuda" if device.startswith("cuda") else device]
    if smoke:
        cmd += ["--set", "model.width=0.25", "--set", "model.hidden=64", "--set", "train.batch_size=16",
                "--set", "eval.batch_size=32"]
    start = time.time()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.time() - start
    if proc.returncode != 0:
        return {"status": "failed", "command": " ".join(cmd), "output_tail": (proc.stdout + proc.stderr)[-3000:]}
    s = json.loads((out / "summary.json").read_text())
    recipe = [line for line in proc.stdout.splitlines() if line.startswith(("--minutes", "measured", "chosen"))]
    return {"command": "python " + " ".join(cmd), "minutes": minutes, "command_s": wall,
            "within_5_percent": abs(wall - 60 * minutes) <= 0.05 * 60 * minutes, "top1": s["top1"], "top5": s["top5"],
            "images_per_s": s["images_per_s"], "epochs_done": s["epochs_done"], "precision": s["precision"],
            "eval_crop": s.get("eval_crop"), "train_crop": s.get("train_crop"), "views": s.get("views"),
            "raw_top1": (s.get("raw") or {}).get("top1"), "recipe": recipe}


RESIDENT_TARGET = 0.05  # the target: data under 5% of step time on an H200, at every crop size


def resident_stage(device: str, data: Path, data_224: Path, smoke: bool) -> dict:
    """The resident data path against the step alone (alexnet.feed), at ImageNet's scale and on real photos:
    (a) an ImageNet-shaped resident set, 1,281,167 random 128 px images made on the GPU (63 GB), the
        fast recipe's step at 112 and 128 px crops, fed against alone;
    (b) the prepared photos resident at 256 px, 224 crops, fed against alone, and the loader alone
        resident against streaming (`alexnet bench feed`).
    Status "failed" when data takes 5% of the time or more anywhere (the target), on a GPU."""
    import torch

    from alexnet import feed
    dev = torch.device(device)
    small = ("model.width=0.25", "model.hidden=64") if smoke else ()
    batch, steps = (16, 4) if smoke else (256, 200)
    n, size, crops = (2_000, 72, (64, 72)) if smoke else (1_281_167, 128, (112, 128))
    out = {}
    t = time.time()
    split, ds, res = feed.synthetic(n, size, 1000, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["synthetic"] = {"images": n, "size": size, "gib": res.nbytes / 2 ** 30, "made_s": round(time.time() - t, 1)}
    for crop in crops:
        loader = feed.train_loader(split, ds, res, dev, batch, crop, 0)
        out[f"imagenet-shaped, crop {crop}"] = feed.end_to_end(loader, steps, dev, 1000, sets=small)
    del res, split, ds
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    r = feed.bench_feed(str(data_224), device=device, batch=batch, workers=2 if smoke else min(16, os.cpu_count() or 1),
                        epochs=1 if smoke else 2, steps=steps, sets=small)
    out["photos, crop %d" % r["crop"]] = {**r["end_to_end"], "loader_alone": r["loader_alone"],
                                           "resident_vs_streamed": r["ratio"], "resident_load": r["resident_load"],
                                           "data": r["data"], "images": r["images"], "size": r["size"]}
    shares = {k: v["data_share"] for k, v in out.items() if isinstance(v, dict) and "data_share" in v}
    out["worst_data_share"] = max(shares.values())
    out["target"] = f"data < {RESIDENT_TARGET:.0%} of step time"
    if dev.type == "cuda" and out["worst_data_share"] >= RESIDENT_TARGET:
        out["status"] = "failed"
    return out


def nvjpeg_twice(device: str, data: Path, batches: int = 8, batch: int = 128) -> dict:
    """The nvJPEG hazard (pytorch/vision PR 9606): decode the same batches twice on a side stream,
    each time right after freeing tensors that kernels queued on that stream still read (behind a
    long matrix product), and compare the decodes bit for bit and the reductions with their values.
    store.decode_jpegs drains the stream first; without that, nvJPEG's hardware decoder can write
    into the freed blocks before the queued reductions have read them."""
    import torch

    from alexnet.data.store import decode_jpegs, open_prepared
    if not device.startswith("cuda"):
        return {"status": "skipped", "reason": "needs a CUDA device"}
    ds = open_prepared(data)
    split = ds.split("train")
    payloads = [split.payloads(range(i, min(i + batch, len(split)))) for i in range(0, len(split), batch)][:batches]
    side = torch.cuda.Stream()
    big = torch.randn(8192, 8192, device=device)
    pixels = 3 * ds.size * ds.size  # blocks of a decoded image's size: what the allocator hands the decoder
    wrong, results = 0, []
    for _ in range(2):
        decoded = []
        with torch.cuda.stream(side):
            for p in payloads:
                values = [k % 250 + 1 for k in range(len(p))]
                filled = [torch.full((pixels,), v, dtype=torch.uint8, device=device) for v in values]
                torch.cuda.current_stream().synchronize()
                _ = big @ big  # a long kernel, so that what follows is still queued when the decoder runs
                sums = [t.sum() for t in filled]  # queued reads of the blocks freed next
                del filled
                decoded.append([im.clone() for im in decode_jpegs(p, device)])
                torch.cuda.current_stream().synchronize()
                wrong += sum(int(s) != v * pixels for v, s in zip(values, sums))
        results.append(decoded)
    differ = sum(not torch.equal(a, b) for x, y in zip(*results) for a, b in zip(x, y))
    images = sum(len(x) for x in results[0])
    return {"status": "ok" if differ == 0 and wrong == 0 else "failed", "images": images, "decodes_differing": differ,
            "reductions_corrupted": wrong}


def table(report: dict) -> str:
    lines = [f"# GPU check: {report['environment'].get('gpu', 'no GPU')} ({report['mode']})", "",
             "| stage | status | s | figures |", "|---|---|---|---|"]
    for name, r in report.items():
        if not isinstance(r, dict) or "status" not in r:
            continue
        figures = ""
        if name == "bench" and "train" in r:
            d, t, i = r.get("data", {}), r.get("train", {}), r.get("infer", {})
            best = max(t.get("images_per_s", {"-": 0}), key=t.get("images_per_s", {"-": 0}).get)
            figures = (f"data {d.get('images_per_s', 0):.0f} img/s = {d.get('ratio', 0):.2f}x reference; "
                       f"train best {best} {t['images_per_s'][best]:.0f} img/s = {t['ratios'][best]:.2f}x, "
                       f"{100 * t['fraction_of_ceiling'][best]:.0f}% of ceiling; infer {i.get('ratio', 0):.2f}x")
        elif name == "resident" and "worst_data_share" in r:
            parts = [f"{k}: {v['end_to_end_images_per_s']:.0f} img/s fed = {100 * v['ratio']:.1f}% of the step alone"
                     for k, v in r.items() if isinstance(v, dict) and "data_share" in v]
            figures = "; ".join(parts) + f"; worst data share {100 * r['worst_data_share']:.1f}% (target < 5%)"
        elif name == "nvjpeg twice" and "images" in r:
            figures = (f"{r['images']} images decoded twice behind queued work: {r['decodes_differing']} differ, "
                       f"{r['reductions_corrupted']} reductions corrupted")
        elif name == "train --minutes" and "top1" in r:
            figures = (f"top-1 {100 * r['top1']:.1f}% ({r['views']} views at {r['eval_crop']} px) after "
                       f"{r['epochs_done']} epochs, {r['images_per_s']:.0f} img/s, whole command {r['command_s']:.0f} s "
                       f"for {r['minutes']:g} min")
        elif name.startswith("train") and "top1" in r:
            figures = (f"top-1 {100 * r['top1']:.1f}% after {r['epochs_done']} epochs, {r['images_per_s']:.0f} img/s, "
                       f"data wait {100 * (r['data_wait'] or 0):.0f}%, MFU {100 * (r['mfu'] or 0):.1f}%, {r['precision']}")
        elif "reason" in r:
            figures = r["reason"]
        elif "summary" in r:
            figures = r["summary"]
        elif "error" in r:
            figures = r["error"][:120]
        lines.append(f"| {name} | {r['status']} | {r['seconds']} | {figures} |")
    return "\n".join(lines) + "\n"


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


OPTIONAL = ("nvjpeg", "bench", "resident", "train", "minutes", "towers")  # the stages --only can pick


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="prepared data set (default: Imagenette, prepared into OUT/imagenette)")
    p.add_argument("--source", help="ImageFolder tree (train/, val/) to prepare when --data is not given "
                   "(default ../shared/data/imagenette; a device machine that cannot see it gets a copied subset)")
    p.add_argument("--out", default="gpu_check", help="folder for the report, data and runs (default gpu_check/)")
    p.add_argument("--train-minutes", type=positive, default=2, help="wall-clock budget of the fast training run")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device, in seconds")
    p.add_argument("--only", metavar="STAGES", help="comma-separated subset of " + ", ".join(OPTIONAL) +
                   " (environment and data always run): rerun what failed when device time is short")
    args = p.parse_args(argv)
    only = set(OPTIONAL) if args.only is None else {s.strip() for s in args.only.split(",")}
    if only - set(OPTIONAL):
        p.error(f"--only: unknown stage(s) {', '.join(sorted(only - set(OPTIONAL)))}; choose from {', '.join(OPTIONAL)}")
    import torch

    Path(args.out).mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("no CUDA device here: running the smoke mode instead (tiny sizes on the CPU)")
        args.smoke = True
    report = {"mode": "smoke" if args.smoke else "full", "device": device, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "out": str(args.out)}
    stage(report, "environment")(environment)
    stage(report, "cuda tests")(cuda_tests, args.smoke)
    found = {}
    prepared = stage(report, "data")(lambda: found.update(zip(("data", "source", "data_224"), data_set(args))))
    if prepared["status"] != "ok":  # nothing to measure without data: the report says why
        print(table(report))
        return 1
    data, source = found["data"], found["source"]
    for name, key in (("nvjpeg twice", "nvjpeg"), ("bench", "bench"), ("resident", "resident"),
                      ("train fast", "train"), ("train --minutes", "minutes"), ("train 2 processes", "train"),
                      ("towers", "towers"), ("train towers", "towers")):
        if key not in only:
            report[name] = {"status": "skipped", "seconds": 0, "reason": f"not in --only {args.only}"}
    if "nvjpeg" in only:
        stage(report, "nvjpeg twice")(nvjpeg_twice, device, data)
    if "bench" in only:
        stage(report, "bench")(bench_all, device, data, source, args.smoke)
    if "resident" in only:
        stage(report, "resident")(resident_stage, device, data, found["data_224"], args.smoke)
    gpus = torch.cuda.device_count()
    if "train" in only:
        stage(report, "train fast")(train_run, device, data, Path(args.out) / "run-fast", args.smoke,
                                    minutes=args.train_minutes)
    if "minutes" in only:
        stage(report, "train --minutes")(minutes_run, device, data if args.smoke else found["data_224"],
                                         Path(args.out) / "run-minutes", args.smoke, minutes=args.train_minutes)
    if "train" in only and gpus >= 2:
        stage(report, "train 2 processes")(train_run, device, data, Path(args.out) / "run-nccl", args.smoke, nproc=2,
                                           minutes=args.train_minutes)
    elif "train" in only:
        report["train 2 processes"] = {"status": "skipped", "seconds": 0,
                                       "reason": f"{gpus} GPU(s) here: the NCCL run needs 2 or more"}
    if "towers" in only and (gpus >= 2 or (args.smoke and device == "cpu")):
        stage(report, "towers")(towers_stage, device, Path(args.out), args.smoke)
        stage(report, "train towers")(train_run, device, data, Path(args.out) / "run-towers", args.smoke, nproc=2,
                                      minutes=args.train_minutes, parallel="towers")
    elif "towers" in only:
        for name in ("towers", "train towers"):
            report[name] = {"status": "skipped", "seconds": 0,
                            "reason": f"{gpus} GPU(s) here: §3.2's towers need 2 (one tower per GPU)"}
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = table(report)
    (Path(args.out) / "gpu_check.md").write_text(text)
    print("\n" + text)
    return 1 if any(isinstance(r, dict) and r.get("status") == "failed" for r in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
