"""A self-describing run folder: config, versions, metrics, TensorBoard events, summary.

    runs/20261125-101500-quick/
        config.yaml       the resolved config (a valid --config for a rerun)
        env.json          command, git revision, library and device versions, world size, precision, ceiling
        code.diff         the uncommitted changes of the source tree, when there are any
        metrics.jsonl     one JSON object per line: training steps and validation epochs
        events.*          TensorBoard (tensorboard --logdir runs/)
        last.pt           the whole training state (2x the weights with SGD's momentum), to resume from
        last.prev.pt      the last.pt before it, the fallback when last.pt is damaged
        best.pt           the best validation's weights, without the optimizer's state (1x the weights)
        curves.png conv1.png summary.json
Only the main rank writes; the others get a RunLog that does nothing. A folder holds about 5x the
weights, 1.2 GB for a full-width AlexNet in fp32 (folder_bytes; docs/checkpoints.md).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from . import config as config_mod
from .envinfo import environment


def git_revision() -> dict:
    """The commit of the alexnet source tree in use, and whether it had local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
        return {"commit": rev.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {}


def git_diff() -> str:
    """The uncommitted changes to tracked files of the alexnet source tree ("" when unavailable)."""
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "diff", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class RunLog:
    def __init__(self, folder: Path, cfg, active: bool = True, extra_env: dict | None = None):
        self.folder, self.active = Path(folder), active
        self.tb = None
        if not active:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, self.folder / "config.yaml")
        env = {"command": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "git": git_revision(), **environment(), **(extra_env or {})}
        (self.folder / "env.json").write_text(json.dumps(env, indent=2, default=str) + "\n")
        if env["git"].get("dirty"):  # the code that ran, when it is not a commit (as airbench saves its source)
            (self.folder / "code.diff").write_text(git_diff())
        self.metrics = open(self.folder / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.folder))
        except ImportError:  # tensorboard is a dependency; tolerate its absence in odd installs
            self.tb = None

    def log(self, kind: str, step: int, **values) -> None:
        """One record: kind ("train" or "val"), the global optimizer step, and numbers."""
        if not self.active:
            return
        self.metrics.write(json.dumps({"kind": kind, "step": step, "time": round(time.time(), 3), **values}) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def write_json(self, name: str, data: dict) -> Path:
        path = self.folder / name
        if self.active:
            path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    def close(self) -> None:
        if self.active:
            self.metrics.close()
            if self.tb is not None:
                self.tb.close()


def folder_bytes(folder: Path) -> dict[str, int]:
    """{relative path: bytes} of every file under `folder`, largest first (what a run leaves on disk)."""
    folder = Path(folder)
    sizes = {}
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                sizes[str(path.relative_to(folder))] = path.stat().st_size
        except OSError:  # removed meanwhile (a temporary file renamed away)
            pass
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def size_text(n: float) -> str:
    """Bytes in decimal units with three significant digits: 456 MB, 1.14 GB, 12.3 kB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 999.5 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return ""


def read_metrics(folder: Path) -> list[dict]:
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
