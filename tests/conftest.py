"""What several test files share: the tiny built-in data set, one network trained on it with the
tiny preset (trained once per pytest process), and helpers for subprocess and resume tests."""
import socket
import time
from pathlib import Path

import pytest

from alexnet.data import synthetic


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGENETTE = SHARED_DATA / "imagenette"  # real ImageNet photographs, 10 classes, train/val


def needs_shared(path: Path):
    """A skipif marker for a test that reads the shared data folder `path`: one wording for all."""
    return pytest.mark.skipif(not path.is_dir(), reason=f"needs the shared data folder {path} (not on this machine)")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The built-in shapes, 8 training and 3 validation images per class at 72 px (read-only)."""
    return synthetic.ensure(train_per_class=8, val_per_class=3, size=72, root=tmp_path_factory.mktemp("shapes"),
                            progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny, tmp_path_factory):
    """last.pt of the tiny preset trained one epoch on `tiny` (read-only; its folder is a finished run
    folder with best.pt beside it). Trained once per pytest process, for every test that needs some
    trained network and not a particular one; copy the folder before writing into it."""
    from alexnet import config
    from alexnet.train import train
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    train(config.resolve("tiny", sets=[f"data.path={tiny}", f"train.out={out}"]), progress=False)
    return out / "last.pt"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 120.0) -> bool:
    """Poll `condition()` every 0.2 s until it is true (True) or `timeout` seconds pass (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.2)
    return False


def terminate(proc, timeout: float = 30) -> int:
    """SIGTERM a child process and wait `timeout` seconds for it, then SIGKILL; its exit status."""
    import signal
    import subprocess
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def straight_and_resumed(cfg, tmp_path: Path, monkeypatch) -> tuple[dict, dict]:
    """Train cfg(tmp_path / "straight") whole, and cfg(tmp_path / "split") stopped (KeyboardInterrupt)
    as its second epoch starts, then the same call again, which resumes it: both last.pt states."""
    from alexnet import checkpoint
    from alexnet import train as train_module
    train_module.train(cfg(tmp_path / "straight"), progress=False)
    real = train_module.train_epoch

    def stop_in_second_epoch(*args, **kwargs):
        if args[1] == 1:  # epoch index: the first epoch and its checkpoint are done
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(cfg(tmp_path / "split"), progress=False)
    monkeypatch.setattr(train_module, "train_epoch", real)
    train_module.train(cfg(tmp_path / "split"), progress=False)
    return checkpoint.load(tmp_path / "straight" / "last.pt"), checkpoint.load(tmp_path / "split" / "last.pt")
