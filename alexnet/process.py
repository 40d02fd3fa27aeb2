"""The process's life and death: how it ends on SIGTERM, how its workers end with it, and whether
another process still lives. A lower layer like alexnet.fileio: it imports nothing of alexnet.

    with process.sigterm_as_interrupt(): ...   # `kill` ends the work as Ctrl-C does (KeyboardInterrupt)
    process.die_with_parent()                  # in a worker: the kernel kills it when its parent dies
    process.alive(pid)                         # whether that process exists (another user's included)
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's stop, `kill`) ends the work inside as Ctrl-C does: KeyboardInterrupt,
    so that `finally` clauses remove temporary files and the command prints its one line, instead of
    dying silently mid-write. Only the main thread can set handlers; elsewhere SIGTERM stays as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux's PR_SET_PDEATHSIG; a
    no-op elsewhere). For worker processes (the loader's, prepare's pool): after a kill -9 of the
    job they would otherwise live on, still mapping its files and using its memory, until they
    next look for their parent."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        libc.prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (signal 0 probes without sending anything); a
    process of another user, which we may not signal, counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True
