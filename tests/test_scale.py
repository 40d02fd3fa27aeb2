"""benchmarks/scale.py in its seconds-long mode: every step runs on two ImageNet-shaped sets and is
measured (CPU, memory of the process tree and of the largest worker, bytes written)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def filesystem(path: Path) -> str:
    """The type of the file system holding `path` (from /proc/mounts; "" where unknown)."""
    try:
        mounts = [line.split()[1:3] for line in open("/proc/mounts")]
    except OSError:
        return ""
    best = max((m for m in mounts if str(path.resolve()).startswith(m[0])), key=lambda m: len(m[0]), default=None)
    return best[1] if best else ""


def test_scale_benchmark_measures_every_step_at_two_sizes(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--classes", "12", "--per-class",
                           "1", "4", "--size", "72", "--workers", "1", "--quick", "--work", str(tmp_path / "w"),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["sizes"] == [12, 48] and set(r["ratio"]) == {"prepare", "open", "loader", "train", "evaluate",
                                                          "features", "neighbors"}
    for n in r["sizes"]:
        for step, m in r["runs"][str(n)].items():
            assert m["cpu_s"] > 0 and m["peak_rss_mb"] > 10 and m["written_mb"] >= 0, (n, step, m)
        assert r["runs"][str(n)]["loader"]["worker_peak_rss_mb"] > 0  # the worker process was seen
        if filesystem(tmp_path) != "tmpfs":  # the kernel accounts block-layer writes; tmpfs has none
            assert r["runs"][str(n)]["prepare"]["written_mb"] > 0
    folders = sorted(p.name for p in (tmp_path / "w" / "set4" / "src" / "train").iterdir())
    assert len(folders) == 12 and folders[0] == "n01440764"  # ImageNet's WNIDs, in order
    assert "| features |" in proc.stdout
