"""What several test files share: the tiny built-in data set and two helpers for subprocess tests."""
import socket
import time

import pytest

from alexnet.data import synthetic


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The built-in shapes, 8 training and 3 validation images per class at 72 px (read-only)."""
    return synthetic.ensure(train_per_class=8, val_per_class=3, size=72, root=tmp_path_factory.mktemp("shapes"),
                            progress=False)


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
