"""`alexnet serve` as a real server process on 127.0.0.1: answers against the network run in-process,
every kind of bad upload, 16 concurrent clients, a full queue, SIGTERM, and the page in Chromium."""
import hashlib
import http.client
import io
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import cli, inference
from alexnet.data import synthetic
from alexnet.data.decode import open_rgb
from alexnet.features import neighbours, write_features
from alexnet.plots import kernel_grid
from conftest import terminate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """A briefly trained checkpoint on the built-in shapes (the suite's), the fc7 file of a gallery of
    60 of them, and photos whose ranking is clear (adjacent top-6 probabilities at least 1e-4 apart,
    far above the ~1e-7 by which a batched and a single forward pass may differ), with their
    probabilities computed in-process."""
    base = tmp_path_factory.mktemp("serve")
    data = synthetic.ensure(train_per_class=6, val_per_class=3, size=72, root=base, progress=False)
    ckpt = tiny_checkpoint
    net = inference.load(ckpt)
    write_features(net, str(data), "train", base / "fc7.npy", batch_size=64, workers=0, progress=False)
    photos = []
    for i in range(40):
        buf = io.BytesIO()
        Image.fromarray(synthetic.draw(i % 10, synthetic.image_rng(11, "val", i), 90 + i)).save(buf, "PNG")
        probs = {v: net.probabilities(net.preprocess([open_rgb(buf.getvalue())], v))[0] for v in (1, 2, 10)}
        top = probs[1].sort(descending=True).values[:6]
        if (top[:-1] - top[1:]).min() > 1e-4:
            photos.append({"png": buf.getvalue(), "probs": probs})
    assert len(photos) >= 8
    return {"ckpt": ckpt, "data": data, "features": base / "fc7.npy", "net": net, "photos": photos[:8]}


class Server:
    """`python -m alexnet serve --port 0 ...` in a child process; the port is read from its first line."""

    def __init__(self, *flags: str, log: Path):
        self.log = log
        # on the CPU, as the in-process reference (a GPU's TF32 convolutions would differ by ~1e-3)
        self.proc = subprocess.Popen([sys.executable, "-m", "alexnet", "serve", "--port", "0", "--device", "cpu",
                                      "--log-level", "warning", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=open(log, "w"), text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        assert "http://127.0.0.1:" in line, f"no URL in {line!r}; stderr: {log.read_text()[-2000:]}"
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert self.get("/v1/health")[0] == 200  # waits in the listen backlog while the model warms up

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            raw = r.read()
            kind = r.getheader("Content-Type", "")
            return r.status, dict(r.getheaders()), json.loads(raw) if kind.startswith("application/json") else raw
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def predict(self, body: bytes, query: str = "", kind: str = "image/png"):
        return self.request("POST", f"/v1/predict{query}", body, {"Content-Type": kind})

    def stop(self):
        terminate(self.proc)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    s = Server("--checkpoint", str(trained["ckpt"]), "--features", str(trained["features"]), "--max-upload-mb", "0.5",
               "--max-pixels", "200000", "--batch-window-ms", "20", log=tmp_path_factory.mktemp("log") / "serve.log")
    yield s
    s.stop()


def multipart(field: str, filename: str, data: bytes, kind: str = "image/png") -> tuple[bytes, dict]:
    boundary = "alexnet-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {kind}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def assert_matches(answer: dict, probs: torch.Tensor, net, topk: int):
    """The server's top-k equals the in-process network's: same classes, same order, same probabilities."""
    want = probs.topk(topk)
    got = answer["predictions"]
    assert [p["index"] for p in got] == want.indices.tolist()
    np.testing.assert_allclose([p["probability"] for p in got], want.values.numpy(), atol=1e-5)
    assert [(p["class"], p["name"]) for p in got] == [(net.classes[i]["id"], net.classes[i]["name"])
                                                     for i in want.indices.tolist()]


def test_predict_answers_as_the_network_does_in_process(server, trained):
    net, photo = trained["net"], trained["photos"][0]
    expected = net.classes[int(photo["probs"][1].argmax())]["name"]
    status, _, r = server.predict(photo["png"])
    assert status == 200 and r["predictions"][0]["name"] == expected
    assert_matches(r, photo["probs"][1], net, 5)
    assert r["model"]["sha256"] == hashlib.sha256(trained["ckpt"].read_bytes()).hexdigest()
    assert r["model"]["variant"] == "alexnet2012" and r["batch_size"] >= 1
    assert set(r["timing_ms"]) >= {"decode", "queue", "forward", "total"}
    body, headers = multipart("file", "photo.png", photo["png"])  # the same photo as a form upload, 10 views
    status, _, r = server.request("POST", "/v1/predict?topk=3&views=10", body, headers)
    assert status == 200
    assert_matches(r, photo["probs"][10], net, 3)
    status, _, r = server.predict(photo["png"], "?topk=3&views=2")  # the centre crop and its reflection
    assert status == 200
    assert_matches(r, photo["probs"][2], net, 3)
    status, _, r = server.predict(photo["png"], "?topk=50", kind="application/octet-stream")
    assert status == 200 and len(r["predictions"]) == len(net.classes)  # topk beyond the classes: all of them


def test_model_description_filters_and_docs(server, trained):
    net = trained["net"]
    status, _, m = server.get("/v1/model")
    assert status == 200 and m["variant"] == "alexnet2012" and m["input_size"] == net.crop and m["resize"] == net.size
    assert [c["name"] for c in m["classes"]] == list(synthetic.CLASSES)
    assert m["sha256"] == hashlib.sha256(trained["ckpt"].read_bytes()).hexdigest()
    assert m["normalisation"]["kind"] == "mean_image"
    np.testing.assert_allclose(m["normalisation"]["mean_rgb"], net.norm.mean_image.mean((1, 2)).numpy(), rtol=1e-5)
    assert m["features"]["count"] == 60 and m["limits"]["max_upload_bytes"] == 512 * 1024
    assert server.get("/v1/health")[2]["status"] == "ok"
    status, _, doc = server.get("/openapi.json")
    assert status == 200 and "/v1/predict" in doc["paths"] and "multipart/form-data" in json.dumps(doc)
    assert server.get("/docs")[0] == 404  # FastAPI's /docs would load scripts from a CDN
    status, _, page = server.get("/")
    assert status == 200 and b"/static/app.js" in page
    for path in ("/", "/static/app.js", "/static/style.css"):  # nothing is loaded from elsewhere: it works offline
        status, _, text = server.get(path)
        assert status == 200 and b"http://" not in text and b"https://" not in text, path
    # Fig. 3: the PNG's pixels are plots.kernel_grid of the checkpoint's conv1 (4x, tower 1 on top)
    status, headers, png = server.get("/v1/filters.png")
    assert status == 200 and headers["content-type"] == "image/png"
    weight = torch.load(trained["ckpt"], weights_only=True)["model"]["conv1.weight"]
    assert len(weight) == 24  # two towers of 12 (width 0.25): one row of 12 each
    tower1 = (kernel_grid(weight[:12], 12) * 255).round()
    shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[::4, ::4][:tower1.shape[0]]
    np.testing.assert_array_equal(shown, tower1.astype(np.uint8))


def test_nearest_training_images_match_alexnet_neighbors(server, trained, tmp_path):
    photo = trained["photos"][1]
    query = tmp_path / "q.png"
    query.write_bytes(photo["png"])
    want = neighbours(trained["net"], str(trained["data"]), "train", [query], k=4, features=str(trained["features"]),
                      workers=0, progress=False)
    status, _, r = server.predict(photo["png"], "?neighbors=4")
    assert status == 200
    assert [n["index"] for n in r["neighbors"]] == want["indices"][0]
    assert [n["key"] for n in r["neighbors"]] == want["keys"][0]
    np.testing.assert_allclose([n["distance"] for n in r["neighbors"]], want["distances"][0], rtol=1e-4, atol=1e-4)
    status, headers, jpeg = server.get(r["neighbors"][0]["url"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg)).size == (72, 72)
    assert server.get("/v1/images/60")[0] == 404


def test_a_features_file_must_come_from_this_checkpoint_and_data(trained, tmp_path):
    import shutil

    from alexnet.errors import UserError
    from alexnet.serve.figures import Gallery

    npy = tmp_path / "f.npy"
    shutil.copy(trained["features"], npy)
    meta = json.loads(trained["features"].with_suffix(".json").read_text())
    for change, words in [({"checkpoint_sha256": "0" * 64}, "another checkpoint"), ({"done": 10}, "10 of 60"),
                          ({"data": None}, "--data"), ({"data_checksum": "0" * 64}, "not the data set")]:
        npy.with_suffix(".json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(UserError, match=words):
            Gallery(npy, trained["net"])
    npy.with_suffix(".json").write_text(json.dumps({**meta, "data": None}))
    assert len(Gallery(npy, trained["net"], data=str(trained["data"])).keys) == 60  # --data names it


def png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares width x height (a decompression bomb's calling card)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_bad_uploads_get_json_errors_and_the_server_goes_on(server, trained):
    photo = trained["photos"][2]
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    big = io.BytesIO()
    Image.new("RGB", (600, 400), (200, 40, 40)).save(big, "PNG")  # 240,000 px > --max-pixels 200000, ~2 kB
    no_file, no_file_headers = multipart("photo", "a.png", photo["png"])
    empty_file, empty_file_headers = multipart("file", "a.png", b"")
    over = os.urandom(600 * 1024)  # > --max-upload-mb 0.5
    over_form, over_form_headers = multipart("file", "big.jpg", over)
    cases = [  # what, method, query, body, headers, status, words in the error
        ("not an image", "POST", "", b"hello, not a photo", {"Content-Type": "image/jpeg"}, 400, "not an image"),
        ("truncated JPEG", "POST", "", jpeg.getvalue()[:400], {"Content-Type": "image/jpeg"}, 400, "truncated"),
        ("empty body", "POST", "", b"", {"Content-Type": "image/png"}, 400, "empty"),
        ("empty file field", "POST", "", empty_file, empty_file_headers, 400, "empty"),
        ("no 'file' field", "POST", "", no_file, no_file_headers, 400, "'file'"),
        ("multipart without a boundary", "POST", "", no_file, {"Content-Type": "multipart/form-data"}, 400, "malformed"),
        ("text", "POST", "", photo["png"], {"Content-Type": "text/plain"}, 415, "multipart/form-data"),
        ("JSON", "POST", "", b'{"image": 1}', {"Content-Type": "application/json"}, 415, "not accepted"),
        ("over the upload limit", "POST", "", over, {"Content-Type": "image/jpeg"}, 413, "--max-upload-mb"),
        ("over the upload limit, as a form", "POST", "", over_form, over_form_headers, 413, "--max-upload-mb"),
        ("over the pixel limit", "POST", "", big.getvalue(), {"Content-Type": "image/png"}, 413, "--max-pixels"),
        ("bomb under Pillow's limit", "POST", "", png_declaring(9000, 9000), {"Content-Type": "image/png"}, 413,
         "81.0 Mpx"),
        ("bomb over Pillow's limit", "POST", "", png_declaring(100_000, 100_000), {"Content-Type": "image/png"}, 413,
         "too large"),
        ("views=3", "POST", "?views=3", photo["png"], {"Content-Type": "image/png"}, 422, "views"),
        ("topk=0", "POST", "?topk=0", photo["png"], {"Content-Type": "image/png"}, 422, "topk"),
        ("too many neighbours", "POST", "?neighbors=999", photo["png"], {"Content-Type": "image/png"}, 422, "neighbors"),
        ("GET on predict", "GET", "", None, {}, 405, "Method Not Allowed"),
        ("no such page", "GET", "/nowhere", None, {}, 404, "Not Found"),
    ]
    for what, method, query, body, headers, want_status, words in cases:
        path = query if query.startswith("/") else "/v1/predict" + query
        status, got_headers, r = server.request(method, path, body, headers)
        assert status == want_status and isinstance(r, dict) and words in r["error"], (what, status, r)
        status, _, ok = server.predict(photo["png"])  # and the server still answers
        assert status == 200, (what, ok)
        assert_matches(ok, photo["probs"][1], trained["net"], 5)
    # an upload over the limit without a declared length (chunked) is stopped while it streams in
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/predict", body=iter([over[i:i + 65536] for i in range(0, len(over), 65536)]),
                 headers={"Content-Type": "image/jpeg"}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and "--max-upload-mb" in json.loads(r.read())["error"]
    conn.close()
    assert server.get("/v1/health")[2]["status"] == "ok"


def test_200_requests_from_16_clients_are_all_answered_correctly(server, trained):
    photos, net = trained["photos"], trained["net"]
    before = server.get("/v1/health")[2]
    answers, errors = [], []

    def client(c: int):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)  # kept alive between requests
        for i in range(c, 200, 16):
            try:
                conn.request("POST", "/v1/predict", body=photos[i % len(photos)]["png"],
                             headers={"Content-Type": "image/png"})
                r = conn.getresponse()
                answers.append((i, r.status, json.loads(r.read())))
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append((i, repr(e)))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(answers) == 200
    for i, status, r in answers:
        assert status == 200, r
        assert_matches(r, photos[i % len(photos)]["probs"][1], net, 5)
    after = server.get("/v1/health")[2]
    assert after["images"] - before["images"] == 200
    assert after["forward_passes"] - before["forward_passes"] < 200  # requests shared forward passes
    assert max(r["batch_size"] for _, _, r in answers) > 1


def stalled_upload(port: int, png: bytes) -> socket.socket:
    """A request whose headers are sent but whose body is held back: it is in, and stays in."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
              f"Content-Length: {len(png)}\r\n\r\n".encode() + png[:20])
    return s


def finish(s: socket.socket, png: bytes) -> tuple[int, dict]:
    s.sendall(png[20:])
    r = http.client.HTTPResponse(s)
    r.begin()
    answer = (r.status, json.loads(r.read()))
    s.close()
    return answer


def test_full_queue_answers_503_and_sigterm_drains_the_requests_in_flight(trained, tmp_path):
    server = Server("--checkpoint", str(trained["ckpt"]), "--queue-size", "2", "--max-batch", "1", log=tmp_path / "log")
    photo = trained["photos"][3]
    try:
        held = [stalled_upload(server.port, photo["png"]) for _ in range(2)]
        deadline = time.time() + 30
        while server.get("/v1/health")[2]["admitted"] < 2 and time.time() < deadline:
            time.sleep(0.05)
        status, headers, r = server.predict(photo["png"])
        assert status == 503 and int(headers["retry-after"]) >= 1 and "--queue-size" in r["error"]

        server.proc.send_signal(signal.SIGTERM)  # stop accepting; the two requests in flight finish
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                time.sleep(0.05)
            except OSError:
                break  # refused: the server is shutting down
        else:
            pytest.fail("the server kept accepting connections after SIGTERM")
        assert server.proc.poll() is None  # still draining
        for s in held:
            status, r = finish(s, photo["png"])
            assert status == 200
            assert_matches(r, photo["probs"][1], trained["net"], 5)
        assert server.proc.wait(30) == 0
        out = server.proc.stdout.read()
        assert "stopped (SIGTERM) after 2 image(s)" in out, out
    finally:
        server.stop()


def test_sigterm_as_the_server_starts_stops_it(trained, tmp_path):
    """A scheduler's SIGTERM right after the URL is printed, before uvicorn's own handlers are in
    place: it was dropped and the server ran on for ever; now it stops, status 0, and says why."""
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "serve", "--port", "0", "--device", "cpu",
                             "--checkpoint", str(trained["ckpt"])], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert "http://127.0.0.1:" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "stopped (SIGTERM)" in out, out


def test_host_warning_and_port_in_use(trained, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # no serving needed here
    assert cli.main(["serve", "--checkpoint", str(trained["ckpt"]), "--host", "127.0.0.2", "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "no authentication" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["serve", "--checkpoint", str(trained["ckpt"]), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["serve", "--checkpoint", str(trained["ckpt"]), "--features", "nowhere.npy"]) == 2
    assert "nowhere.npy" in capsys.readouterr().err


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def test_the_page_in_a_real_browser(server, trained, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"needs a browser at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python "
                                                                 "(pip install -e '.[browser]')")
    photo = trained["photos"][4]
    path = tmp_path / "shape.png"
    path.write_bytes(photo["png"])
    status, _, want = server.predict(photo["png"], "?topk=5&neighbors=6")
    assert status == 200
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            validation = page.eval_on_selector("#validation", "e => e.hidden ? '' : e.textContent")
            page.set_input_files("#file", str(path))
            page.wait_for_function("document.querySelectorAll('#bars .bar').length === 5", timeout=30_000)
            page.wait_for_function("[...document.querySelectorAll('#neighbours img, #filters')]"
                                   ".every(i => i.complete && i.naturalWidth > 0) && "
                                   "document.querySelectorAll('#neighbours img').length === 6", timeout=30_000)
            names = page.eval_on_selector_all("#bars .bar-name", "els => els.map(e => e.firstChild.textContent)")
            shown = page.eval_on_selector_all("#bars .bar-value", "els => els.map(e => e.textContent)")
            photo_width = page.eval_on_selector("#photo", "img => img.naturalWidth")
            page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
        finally:
            browser.close()
    assert names == [p["name"] for p in want["predictions"]]
    assert shown == [f"{100 * p['probability']:.1f}%" for p in want["predictions"]]
    best = torch.load(trained["ckpt"], weights_only=False)["best"]  # the run's best validation, on the page
    assert validation.startswith(f"validation top-1 {100 * best['top1']:.2f}%, top-5 {100 * best['top5']:.2f}%")
    assert photo_width == Image.open(path).width
    assert (tmp_path / "serve-page.png").stat().st_size > 10_000


def test_the_page_says_when_the_model_is_at_chance_and_top5_is_meaningless():
    """/v1/model carries the run's best validation figures with the notes the
    page shows first: a top-1 at chance, and no top-5 figure for 5 classes or fewer."""
    from types import SimpleNamespace

    from alexnet.serve.app import validation_of
    classes = [{"id": str(i), "name": str(i)} for i in range(3)]
    dead = validation_of(SimpleNamespace(validation={"top1": 0.34, "top5": 1.0, "epoch": 4.0}, classes=classes))
    assert dead["at_chance"] and dead["top5"] is None and len(dead["notes"]) == 2
    assert "chance level for 3 classes" in dead["notes"][0] and "top-5 counts every image right" in dead["notes"][1]
    fine = validation_of(SimpleNamespace(validation={"top1": 0.8, "top5": 0.95, "epoch": 2.0}, classes=classes * 4))
    assert not fine["at_chance"] and fine["top5"] == 0.95 and fine["notes"] == []
    assert validation_of(SimpleNamespace(validation=None, classes=classes)) is None
