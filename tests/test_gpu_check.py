"""benchmarks/gpu_check.py in its smoke mode: every stage runs on the CPU with tiny sizes, so the
script that proves the GPU path cannot rot between the sessions that have a GPU."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_stage_in_smoke_mode(tmp_path, capsys):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "smoke"
    stages = {k: v["status"] for k, v in report.items() if isinstance(v, dict) and "status" in v}
    assert stages["environment"] == stages["bench"] == stages["train fast"] == "ok", stages
    assert set(stages) == {"environment", "cuda tests", "data", "nvjpeg twice", "bench", "resident", "train fast",
                           "train --minutes", "train 2 processes", "towers", "train towers"}
    # §3.2's towers: on a CPU in smoke mode, 2 gloo processes; the bytes are the plan's
    assert stages["towers"] == stages["train towers"] == "ok", report["towers"]
    assert report["towers"]["bytes_sent"]["towers"] < report["towers"]["bytes_sent"]["data"]
    assert report["train towers"]["world_size"] == 2 and report["train towers"]["ranks_in_sync"]
    minutes = report["train --minutes"]  # the budget recipe's run, timed whole
    assert stages["train --minutes"] == "ok" and 0 <= minutes["top1"] <= 1 and minutes["images_per_s"] > 0
    assert minutes["views"] == 2 and any(line.startswith("chosen:") for line in minutes["recipe"])
    assert stages["data"] == stages["resident"] == "ok" and stages["nvjpeg twice"] == "skipped"
    resident = report["resident"]  # the resident path's step fed against the step alone, at two crops and on photos
    fed = {k: v for k, v in resident.items() if isinstance(v, dict) and "data_share" in v}
    assert len(fed) == 3 and all(v["step_alone_images_per_s"] > 0 and v["end_to_end_images_per_s"] > 0
                                 for v in fed.values())
    assert resident["worst_data_share"] == max(v["data_share"] for v in fed.values())
    photos = next(v for k, v in fed.items() if k.startswith("photos"))
    assert set(photos["loader_alone"]) == {"streamed", "resident"}
    bench = report["bench"]
    assert bench["data"]["images_per_s"] > 0 and bench["data"]["reference_images_per_s"] > 0
    assert set(bench["train"]["ratios"]) >= {"torchvision fp32 NCHW", "ours fp32 channels_last"}
    assert all(0 < f < 1 for f in bench["train"]["fraction_of_ceiling"].values())  # the ceiling bounds them
    run = report["train fast"]
    assert 0 <= run["top1"] <= 1 and run["images_per_s"] > 0 and run["data_wait"] is not None
    assert 0 < run["mfu"] < 1 and run["epochs_done"] > 0
    assert "| train fast | ok |" in (tmp_path / "gpu_check.md").read_text()
    # a second check into the same OUT trains anew (it resumed the finished run and said 0 img/s);
    # --only reruns that stage alone (what a short device lease needs after one stage failed). Called
    # in this process: the script runs once, its main a second time for the one stage.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check
    argv = ["--smoke", "--out", str(tmp_path), "--only", "train"]
    status = gpu_check.main(argv)
    printed = capsys.readouterr()
    again = subprocess.CompletedProcess(argv, status, printed.out, printed.err)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second = json.loads((tmp_path / "gpu_check.json").read_text())
    assert second["train fast"]["images_per_s"] > 0
    assert second["bench"]["status"] == second["resident"]["status"] == second["train --minutes"]["status"] == "skipped"


def test_data_rate_times_neither_warm_up_nor_prefetched_batches_and_cycles_small_sets(monkeypatch):
    """bench._rate on a fake loader of 5 batches per epoch and a fake clock that moves one second
    per batch made: the WARMUP + in-flight batches (made ahead while workers start) are not timed,
    and a run longer than the data set continues into the next epochs."""
    sys.path.insert(0, str(ROOT))
    from alexnet import bench
    clock, made, epochs_asked = [0.0], [], []

    def epochs(k):
        epochs_asked.append(k)
        for i in range(5):
            made.append((k, i))
            if len(made) > bench.WARMUP + 4:  # the prefetched ones cost no time when read
                clock[0] += 1.0
            yield (None, [0] * 8)  # (images, labels): 8 images

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    rate = bench._rate(epochs, batches=9, in_flight=4)
    assert len(made) == bench.WARMUP + 4 + 9 and epochs_asked == [0, 1, 2, 3]
    assert rate == 8.0  # 9 batches of 8 images in 9 fake seconds


def test_bench_data_on_a_set_smaller_than_224_px_crops_the_whole_image(tmp_path):
    """`alexnet bench data` has no crop option: on a set prepared with --size below 224 it ended in
    a ValueError traceback (exit 1); it now takes the whole image, and an explicit larger crop is
    one UserError line."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import pytest
    from PIL import Image

    from alexnet import bench
    from alexnet.errors import UserError
    from alexnet.data.prepare import prepare
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "src" / "train" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(tmp_path / "src" / "train" / c / f"{i}.png")
    prepare(tmp_path / "src", tmp_path / "p", size=40, workers=0, progress=False)
    r = bench.bench_data(str(tmp_path / "p"), batch=2, batches=1, workers=0, rounds=1)
    assert r["crop"] == 40 and r["images_per_s"] > 0 and r["reference_images_per_s"] > 0
    with pytest.raises(UserError, match="crop 64 is larger than"):
        bench.bench_data(str(tmp_path / "p"), batch=2, batches=1, workers=0, rounds=1, crop=64)
