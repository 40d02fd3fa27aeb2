"""`alexnet serve`: load the network, bind the address, run the app under uvicorn, stop cleanly.

    alexnet serve --checkpoint runs/x/best.pt [--host 127.0.0.1] [--port 8000] [--features FILE]

It binds 127.0.0.1 unless told otherwise: the API has no authentication, so another --host prints
a warning. The socket is bound here, before uvicorn starts, so a port in use is a one-line error
(exit status 2) and `--port 0` takes a free port (the URL printed names it). Ctrl-C or SIGTERM stop
accepting connections, let the requests in flight finish (up to DRAIN_S seconds), end the batcher
and exit with status 0; a second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal
import socket
import sys

from PIL import Image

from .. import runtime
from ..errors import UserError
from ..inference import load_any
from .app import Settings, create_app

DRAIN_S = 30  # seconds the requests in flight get to finish after Ctrl-C / SIGTERM
LOCAL = ("127.0.0.1", "localhost", "::1")


def settings_from(args) -> Settings:
    s = Settings(max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, queue_size=args.queue_size,
                 max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels)
    if s.max_batch < 1 or s.queue_size < 1:
        raise UserError(f"--max-batch and --queue-size must be at least 1, got {s.max_batch} and {s.queue_size}")
    if s.batch_window_ms < 0:
        raise UserError(f"--batch-window-ms must be 0 or more, got {s.batch_window_ms}")
    if s.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be positive, got {s.max_upload_mb}")
    if not 0 < s.max_pixels <= Image.MAX_IMAGE_PIXELS:
        raise UserError(f"--max-pixels must be in 1..{Image.MAX_IMAGE_PIXELS} (Pillow's safety limit), "
                        f"got {s.max_pixels}")
    return s


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"cannot resolve --host {host}: {e.strerror}") from None
    # proto IPPROTO_TCP (not 0): asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # that say they are TCP; with it on, a response's last segment waits ~40 ms for a delayed ACK
    sock = socket.socket(info[0], socket.SOCK_STREAM, info[2] or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port "
                        f"(or stop the program using it)") from None
    sock.listen(2048)  # connections made while the model warms up wait here instead of being refused
    return sock


def main(args) -> int:
    import uvicorn

    settings = settings_from(args)
    rt = runtime.setup(args.device, args.precision, distributed_job=False)
    device = rt.device
    net = load_any(args.checkpoint, args.weights, rt.device, rt.dtype)
    gallery = None
    if args.features:
        from .figures import Gallery
        gallery = Gallery(args.features, net, args.data)
    elif args.data:
        raise UserError("--data names where the training images of --features are; give --features FILE too")
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    if args.host not in LOCAL:
        print(f"alexnet serve: warning: listening on {args.host}: the API has no authentication, anyone who can "
              f"reach this address can use it", file=sys.stderr)
    app = create_app(net, settings, gallery)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log,
                                           timeout_graceful_shutdown=DRAIN_S))
    # uvicorn handles SIGINT/SIGTERM while it runs (stop accepting, drain, shut down) and raises the
    # signal again once done; these handlers receive that, so a clean stop ends with status 0. One
    # that arrives before uvicorn's handlers are in place (a scheduler stopping the server as it
    # starts) asks uvicorn to stop after its start-up: before, it was dropped and the server ran on.
    # Installed before the URL is printed: a client (or a test) may act on that line at once
    stopped: list[int] = []

    def stop(signum, frame):
        stopped.append(signum)
        server.should_exit = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    shown = f"[{host}]" if ":" in host else host
    try:
        print(f"alexnet serve: {net.source} ({len(net.classes)} classes, {device}) at http://{shown}:{port}/  "
              f"API: /v1/predict, /openapi.json; Ctrl-C stops", flush=True)
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
    why = f" ({signal.Signals(stopped[0]).name})" if stopped else ""
    print(f"alexnet serve: stopped{why} after {app.state.batcher.images:,} image(s) in "
          f"{app.state.batcher.batches:,} forward pass(es)", flush=True)
    return 0
