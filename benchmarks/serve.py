"""`alexnet serve` under load: requests/s and latency with batching on and off, side by side in one run.

    python benchmarks/serve.py                                  # AlexNet (torchvision's shape), random weights
    python benchmarks/serve.py --checkpoint runs/x/best.pt --json out.json
    python benchmarks/serve.py --requests 16 --clients 1,4      # a quick check that it runs

Two servers run at once on loopback, the same network in each: "batching on" (`--max-batch 32
--batch-window-ms 5`, the defaults) and "batching off" (`--max-batch 1`: one forward pass per
request). For each number of concurrent clients (1, 4, 16), each server in turn gets `--requests`
POST /v1/predict requests (the photo bytes, image/jpeg) from that many client threads, each on its
own keep-alive connection, after a warm-up of two requests per client; the other server is idle
meanwhile, and the order alternates so that drift on a shared machine hits both. Reported per cell:
requests/s (requests / wall time), the client-side p50 and p99 latency, and the mean batch size the
server formed; then the ratio of requests/s at 16 clients. Every answer must be 200, and both servers
must give every photo the same top-1 class and probability (within 1e-4; classes closer than that
may swap, as batched and single passes round differently).

Why batching should win: a forward pass reads AlexNet's ~230 MB of fully connected weights whatever
the batch size, so one pass over 16 images costs far less than 16 passes over one. The photos are
what users send (style: median ImageNet photo ~500x375): ../shared/data/imagenet-photos when present,
else 500x375 JPEGs drawn from the built-in shapes. The clients run in this process and share the
CPU with the servers; on a 2-core machine that is part of the cost being measured.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PHOTOS = ROOT.parent / "shared" / "data" / "imagenet-photos"
MODES = {"on": ["--max-batch", "32", "--batch-window-ms", "5"], "off": ["--max-batch", "1", "--batch-window-ms", "0"]}


def photos(n: int) -> list[bytes]:
    """Up to n photos: real ImageNet JPEGs when present, else 500x375 JPEGs of the built-in shapes."""
    files = sorted(PHOTOS.rglob("*.JPEG"))[:n] if PHOTOS.is_dir() else []
    if files:
        return [f.read_bytes() for f in files]
    from PIL import Image

    from alexnet.data import synthetic
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(synthetic.draw(i % 10, synthetic.image_rng(0, "val", i), 500)[:375]).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Server:
    def __init__(self, model_flags: list[str], mode_flags: list[str], log):
        cmd = [sys.executable, "-m", "alexnet", "serve", "--port", "0", "--log-level", "warning",
               "--queue-size", "256", *model_flags, *mode_flags]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        if "http://127.0.0.1:" not in line:
            raise SystemExit(f"the server did not start: {line!r} (see its log)")
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


def load(port: int, images: list[bytes], clients: int, requests: int) -> dict:
    """`requests` predictions from `clients` threads; latencies in ms, answers by photo index."""
    latencies, answers, errors = [], {}, []

    def client(c: int, plan: list[int]):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        # as curl, browsers and urllib3 do: http.client sends a body over 2000 bytes apart from the
        # headers, and with Nagle's algorithm on, its last segment waits ~40 ms for the server's
        # delayed ACK, which would measure the client, not the server
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in plan:
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=images[i % len(images)], headers={"Content-Type": "image/jpeg"})
                r = conn.getresponse()
                body = json.loads(r.read())
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
                continue
            latencies.append(1000 * (time.perf_counter() - t))
            if r.status != 200:
                errors.append(f"{r.status}: {body}")
            else:
                answers.setdefault(i % len(images), []).append(body)
        conn.close()

    threads = [threading.Thread(target=client, args=(c, list(range(c, requests, clients)))) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
    batches = [a["batch_size"] for group in answers.values() for a in group]
    return {"requests_per_s": requests / wall, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "mean_batch": float(np.mean(batches)), "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="serve this checkpoint (default: AlexNet with random weights)")
    ap.add_argument("--weights", help="'torchvision' or a .pth file, instead of --checkpoint")
    ap.add_argument("--requests", type=int, default=200, help="timed requests per cell (default 200)")
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated (default 1,4,16)")
    ap.add_argument("--photos", type=int, default=64, help="distinct photos cycled through (default 64)")
    ap.add_argument("--precision", default="fp32", help="serve --precision of both servers (default fp32)")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    images = photos(args.photos)
    tmp = tempfile.TemporaryDirectory()
    if args.checkpoint:
        model_flags = ["--checkpoint", args.checkpoint]
    elif args.weights:
        model_flags = ["--weights", args.weights]
    else:  # torchvision's AlexNet shape with random weights: the time of a pass does not depend on the values
        import torch
        import torchvision
        torch.manual_seed(0)
        path = Path(tmp.name) / "alexnet-random.pth"
        torch.save(torchvision.models.alexnet().state_dict(), path)
        model_flags = ["--weights", str(path)]
    model_flags += ["--precision", args.precision]
    log = open(Path(tmp.name) / "servers.log", "w")
    servers = {mode: Server(model_flags, flags, log) for mode, flags in MODES.items()}
    rows, first_answers = [], {}
    try:
        for k, c in enumerate(clients):
            for mode in (("on", "off") if k % 2 == 0 else ("off", "on")):
                load(servers[mode].port, images, c, 2 * c)  # warm-up: connections, allocations
                r = load(servers[mode].port, images, c, args.requests)
                for i, group in r.pop("answers").items():
                    for a in group:  # every answer for a photo agrees, across clients and both modes
                        ref = first_answers.setdefault(i, a["predictions"])
                        got = a["predictions"]
                        close = {p["index"] for p in ref if p["probability"] >= ref[0]["probability"] - 1e-4}
                        if got[0]["index"] not in close or abs(got[0]["probability"] - ref[0]["probability"]) > 1e-4:
                            raise SystemExit(f"photo {i}: batching {mode} at {c} clients answered {got[0]}, "
                                             f"elsewhere {ref[0]}")
                rows.append({"clients": c, "batching": mode, **r})
                print(f"{c:>3} clients  batching {mode:<3}  {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  mean batch {r['mean_batch']:5.1f}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    rate = {(r["clients"], r["batching"]): r["requests_per_s"] for r in rows}
    top = max(clients)
    ratio = rate[(top, "on")] / rate[(top, "off")]
    print("\n| clients | batching | requests/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['batching']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['mean_batch']:.1f} |")
    print(f"\nbatching on / off at {top} clients: {ratio:.2f}x requests/s "
          f"({len(images)} photos, {args.requests} requests per cell, {os.cpu_count()} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio_at_max_clients": ratio, "clients": clients,
                                               "requests": args.requests, "photos": len(images),
                                               "model": model_flags[1], "precision": args.precision,
                                               "cores": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
