"""Every command line in README.md and the docs pages it leads to, run: a documented line that fails
verbatim is a newcomer's first hour lost, and the README's `--init runs/x/best.pt --freeze features`
line did.

The lines are read from the ```bash blocks of PAGES and run in that order, in a sandbox folder that
stands in for the user's home and working folder: `~/data/imagenette2`, `~/ILSVRC2012`, the Kaggle
tree, WebDataset and Parquet shards, the CSV lists, `~/my_photos`, `photo.jpg`, `runs/x` (one small
run of ours) and torchvision's weights file hold a few small images or a small network each. What
the test changes in a line, and only there:
- the budget: a training line trains 1 epoch (2 where it resumes one stopped after 1; as many as
  its preset's warm-up needs) with a batch that fits the stand-in, on a 1/4-width network unless
  the line starts from weights (--init, the finetune preset), whose network is the point of it;
- `torchrun --nproc_per_node=8` runs 2 processes, and the two-node line runs both nodes here, with
  one process each;
- a server takes a free port (`--port 0`), and the curl lines that follow are sent to it.
Lines that install or run this suite (`pip install`, `python -m pytest`) are what .ci/run does.
"""
import io
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import cli, config
from alexnet.train import train
from conftest import free_port, terminate

ROOT = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n02102040"]  # tench, English springer: ImageNet classes 0 and 217
TINY = ["--set", "model.width=0.25", "--set", "model.hidden=64"]
# The pages whose command lines run, in the order a reader meets them: what a line makes (prepared
# data, runs/x, train_fc7.npy) is there for the lines after it. tests/test_docs.py checks that every
# page with a bash block is listed.
PAGES = ["README.md", "docs/data.md", "docs/training.md", "docs/using.md", "docs/serving.md", "docs/paper.md",
         "docs/scaling.md"]


def readme_lines() -> list[list[str]]:
    """Each command of the bash blocks of PAGES as argv (continuations joined, comments dropped,
    `a && b` split)."""
    text = "\n".join((ROOT / page).read_text() for page in PAGES)
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return commands


def photo(seed: int, size=(160, 120)) -> Image.Image:
    """A small photo-like image (smooth colours plus noise), different per seed."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    base = rng.integers(0, 256, (3, 3, 3)).astype(np.float32)
    up = np.array(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    return Image.fromarray(np.clip(up + rng.normal(0, 12, up.shape), 0, 255).astype(np.uint8))


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    photo(seed).save(out, "JPEG", quality=90)
    return out.getvalue()


def image_folder(root: Path, splits=("train", "val"), per_class=(6, 2)) -> None:
    for split, n in zip(splits, per_class):
        for c, wnid in enumerate(WNIDS):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / wnid / f"{i}.jpg").write_bytes(jpeg(100 * c + i + (0 if split == "train" else 50)))


def tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The sandbox: the stand-ins every README line names, and torchvision's weights in its cache."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_messy_folders import parquet_shards
    from test_sources import ilsvrc_archives, kaggle_tree
    home = tmp_path_factory.mktemp("home")
    image_folder(home / "data" / "imagenette2")
    image_folder(home / "my_photos")
    image_folder(home / "imagenet", splits=("val",), per_class=(2,))
    ilsvrc_archives(home / "ILSVRC2012")
    kaggle_tree(home / "kaggle-imagenet")
    for split, n in (("train", 8), ("validation", 4)):
        tar(home / "imagenet-1k-wds" / f"imagenet1k-{split}-0000.tar",
            {f"{i:06d}.{ext}": (jpeg(i) if ext == "jpg" else str([0, 217][i % 2]).encode())
             for i in range(n) for ext in ("jpg", "cls")})
    parquet_shards(home / "hf" / "imagenet-1k")
    for i in range(12):
        (home / "pics").mkdir(exist_ok=True)
        photo(i).save(home / "pics" / f"{i}.jpg")
    (home / "train.csv").write_text("path,label\n" + "".join(f"pics/{i}.jpg,{'cat' if i % 2 else 'dog'}\n"
                                                             for i in range(12)))
    (home / "meta.csv").write_text("file_name,class_id,subset\n" + "".join(
        f"pics/{i}.jpg,{i % 2},{'train' if i < 8 else 'val'}\n" for i in range(12)))
    for name in ("photo.jpg", "a.jpg", "b.jpg"):
        photo(len(name)).save(home / name)
    (home / "holiday").mkdir()
    for i in range(2):
        photo(200 + i).save(home / "holiday" / f"{i}.jpg")
    (home / "my.toml").write_text("[train]\nepochs = 3\n")
    import torchvision
    owt = torchvision.models.alexnet(weights=None)  # stands in for torchvision's published weights
    torch.save(owt.state_dict(), home / "alexnet-owt-7be5be79.pth")
    (home / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    os.link(home / "alexnet-owt-7be5be79.pth", home / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    return home


@pytest.fixture
def sandbox(home, monkeypatch):
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("ALEXNET_CACHE", str(home / "cache"))
    monkeypatch.chdir(home)
    return home


def our_run(home: Path, out: str, data: str) -> None:
    """A small finished run of ours (what `runs/x` stands for in the README)."""
    if not (home / out / "best.pt").is_file():
        train(config.resolve("tiny", sets=[f"data.path={home / data}", f"train.out={home / out}", "train.batch_size=4",
                                           "eval.batch_size=4"]), progress=False)


def adapted(argv: list[str]) -> list[str]:
    """A training line with the stand-in's budget (see the module docstring)."""
    argv = [os.path.expanduser(a) for a in argv]
    at = argv.index("alexnet") if "alexnet" in argv else -1
    command = argv[at + 1] if 0 <= at < len(argv) - 1 else None
    if command not in ("train", "ablate"):
        return argv
    resume = "--resume" in argv
    epochs = "2" if resume else "1"
    if "--preset" in argv and not resume:  # a preset's warm-up must end within the run
        epochs = str(int(config.resolve(argv[argv.index("--preset") + 1]).schedule.warmup_epochs) + 1)
    if "--epochs" in argv:
        argv[argv.index("--epochs") + 1] = epochs
    else:
        argv += ["--epochs", epochs]
    if command == "ablate":  # one seed of the baseline and one variant
        argv += ["--seeds", "1"] + ([] if "--only" in argv else ["--only", "lrn"])
    from_weights = "--init" in argv or "finetune" in argv
    return argv + ([] if from_weights else TINY) + [
        "--set", "train.batch_size=4", "--set", "eval.batch_size=4", "--set", "data.workers=0"] + (
        ["--set", "data.builtin_per_class=8"] if command == "train" else [])


def run_alexnet(argv: list[str]) -> int:
    return cli.main(argv[1:])


def test_every_readme_command_line_runs(sandbox, capsys, monkeypatch):
    from alexnet import budget
    # --minutes counts from the process's start, which for this in-process run is the test worker's
    monkeypatch.setattr(budget, "process_start", time.time)
    home = sandbox
    lines = readme_lines()
    ci = [line for line in lines if line[:1] in (["pip"], ["python3"], ["."]) or line[:3] == ["python", "-m", "pytest"]]
    assert ci, "README lost its install and test commands"
    server = None
    ran = []
    try:
        for argv in (line for line in lines if line not in ci):
            argv = [str(home / a[1:]) if a.startswith("/shared/") else a for a in adapted(argv)]  # a cluster's shared disk
            text = " ".join(argv)
            if argv[0] == "alexnet" and argv[1] == "prepare" and "--verify" not in argv:
                out = home / argv[3]
                if out.exists():  # the README's sources are alternatives writing one folder
                    shutil.rmtree(out)
            if text in ran:  # the same line in two places (the install block and the training section)
                continue
            if "runs/x/" in text:
                our_run(home, "runs/x", "prepared/imagenette")
            if "a.pt" in argv:  # an ensemble of five runs on the data set the line names
                our_run(home, "runs/e", argv[argv.index("--data") + 1])
                for name in "abcde":
                    if not (home / f"{name}.pt").exists():
                        os.link(home / "runs/e/best.pt", home / f"{name}.pt")
            if "--resume" in argv:  # the run it continues: the same line, stopped after its first epoch
                first = [a for a in argv if a != "--resume"]
                first[first.index("--epochs") + 1] = "1"
                assert run_alexnet(first) == 0, capsys.readouterr().err[-2000:]
            start = time.perf_counter()
            if argv[:2] == ["alexnet", "serve"]:
                if server is not None:
                    server.stop()
                server = Server(argv, home)
                timed(capsys, start, text)
                continue
            if argv[0] == "curl":
                assert server is not None, f"{text}: no server started by an earlier line"
                argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}") for a in argv]
                done = subprocess.run(argv + ["--fail-with-body", "-sS"], capture_output=True, text=True, timeout=120)
                assert done.returncode == 0 and "probability" in done.stdout, (text, done.stdout[-500:], done.stderr)
                continue
            if argv[0] == "torchrun":
                torchrun(argv, home)
                timed(capsys, start, text)
                continue
            capsys.readouterr()
            ran.append(text)
            code = run_alexnet(argv)
            err = capsys.readouterr().err
            assert code == 0, f"README line failed: {text}\n{err[-2000:]}"
            timed(capsys, start, text)
    finally:
        if server is not None:
            server.stop()
    assert len(ran) >= 20


def timed(capsys, start: float, text: str) -> None:
    """Each line's time on the terminal (pytest -s), to keep this test's cost in view."""
    with capsys.disabled():
        print(f"{time.perf_counter() - start:6.1f} s  {text}")


class Server:
    """An `alexnet serve` line in a child process on a free port (--port 0: the port is read from
    its first line of output)."""

    def __init__(self, argv: list[str], home: Path):
        if "--port" in argv:
            argv = argv[:argv.index("--port")] + argv[argv.index("--port") + 2:]
        self.proc = subprocess.Popen([sys.executable, "-m", *argv, "--port", "0", "--device", "cpu"], cwd=home,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        assert "http://127.0.0.1:" in line, f"{' '.join(argv)}: no URL in {line!r}"
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def stop(self):
        assert terminate(self.proc) == 0, self.proc.stderr.read()[-2000:]  # a clean stop (SIGTERM: status 0)


def torchrun(argv: list[str], home: Path) -> None:
    """A torchrun line with 2 processes in all; a multi-node line runs its nodes here, on a free port."""
    nodes = next((int(a.split("=")[1]) for a in argv if a.startswith("--nnodes=")), 1)
    per_node = 2 if nodes == 1 else 1  # two processes in all
    argv = [re.sub(r"^--nproc_per_node=\d+$", f"--nproc_per_node={per_node}", a) for a in argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nodes == 1:
        done = subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(argv)}\n{done.stderr[-3000:]}"
        return
    port = free_port()
    argv = [f"--rdzv-endpoint=127.0.0.1:{port}" if a.startswith("--rdzv-endpoint=") else a for a in argv]
    procs = [subprocess.Popen([a if not a.startswith("--node_rank=") else f"--node_rank={rank}" for a in argv], cwd=home,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for rank in range(nodes)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"{' '.join(argv)}\n{err[-3000:]}"
    summary = json.loads((home / argv[argv.index("--out") + 1] / "summary.json").read_text())
    assert summary["world_size"] == nodes and summary["ranks_in_sync"], summary  # one job across the nodes
