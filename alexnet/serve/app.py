"""The FastAPI app: the page, the JSON API, and what it does with every kind of upload.

    app = create_app(net, Settings(max_batch=32), gallery=None)   # served by uvicorn (server.py)

    POST /v1/predict?topk=5&views=1|2|10&neighbors=0   multipart (field `file`) or raw image bytes
         -> {"predictions": [{"index", "class", "name", "probability"}, ...], "model": {...},
             "timing_ms": {...}, "batch_size": n[, "neighbors": [...]]}
    GET  /v1/health     /v1/model     /v1/filters.png     /v1/images/{index}     /openapi.json
    GET  /              the page (static/), everything it loads comes from this server

A request's way: admitted (or 503 with Retry-After when `queue_size` are in), the content type
checked (415), its body read up to the upload limit (413); then, in a worker thread, the file taken
out of a multipart form, its declared size checked against the pixel limit before any pixel is
decoded (413: a 100 kB PNG may declare 100000 x 100000), decoded as `alexnet prepare` does and
preprocessed as in training (§2; 400 when it is not an image or is damaged, whatever the decoder
raised: alexnet.data.decode turns every decoder error into BadImage); then one share of a
batched forward pass (batching.py). Every error is JSON {"error": "..."} saying what is wrong; none stops the server.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from python_multipart.multipart import create_form_parser
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..data.decode import HEAD, BadImage, resize_crop, sniff
from ..evaluate import at_chance, result_notes
from ..inference import Network
from .batching import Batcher, Busy
from .figures import Gallery, filters_png

STATIC = Path(__file__).parent / "static"
VIEWS = (1, 2, 10)  # the centre crop; it and its reflection; §4.1's ten (alexnet.data.augment.view_offsets)
ACCEPTED = "multipart/form-data with the image in a field named 'file', or the image bytes as image/* or " \
           "application/octet-stream"
DRAIN = 64 << 20  # bytes of an over-limit body still read (and dropped) so the client sees the 413, not a reset


@dataclass
class Settings:
    max_batch: int = 32  # requests per forward pass (a 10-view request is 10 crops of it)
    batch_window_ms: float = 5.0  # the longest the first request of a batch waits for company
    queue_size: int = 64  # requests admitted at once (reading, decoding, waiting, computing); more get 503
    max_upload_mb: float = 20.0  # request body, MiB
    max_pixels: int = 50_000_000  # width x height of an uploaded image (Pillow's own limit is 89.5 M)
    max_neighbors: int = 50  # nearest training images per request, with --features


class ApiError(Exception):
    """Answered as {"error": message} with this status."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class TooManyPixels(Exception):
    pass


# ----------------------------------------------------------------------------- reading an upload

async def _stream(request: Request):
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:  # nobody will read the answer; this ends the request quietly
        raise ApiError(400, "the client went away before its upload was complete") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes (413 beyond it)."""
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    chunks, n = [], 0
    if not (declared.isdigit() and int(declared) > limit + DRAIN):
        async for chunk in _stream(request):
            n += len(chunk)
            too_big = too_big or n > limit
            if too_big:
                chunks = []
                if n > limit + DRAIN:
                    break
            else:
                chunks.append(chunk)
    if too_big:
        size = f"{int(declared):,} bytes" if declared.isdigit() else f"more than {limit:,} bytes"
        raise ApiError(413, f"upload of {size} is over this server's limit of {limit:,} bytes "
                            f"({limit / (1 << 20):g} MiB, --max-upload-mb)", {"Connection": "close"})
    return b"".join(chunks)


def check_content_type(request: Request) -> None:
    """415 unless the request's media type can carry an image (checked before the body is read)."""
    kind = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if not (kind == "multipart/form-data" or kind.startswith("image/") or kind == "application/octet-stream"):
        raise ApiError(415, f"content type {kind!r} is not accepted; send {ACCEPTED}")


def image_bytes(content_type: str, body: bytes) -> bytes:
    """The image file in a body: a multipart form's `file` field, or the body itself (400 when empty).
    Parsing a multipart body costs ~10 ms per MB: it runs in a worker thread, with the decoding."""
    data = body
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        fields: dict[bytes, bytes] = {}

        def on_file(f):  # the whole body is in memory already: the parser keeps files there too
            f.file_object.seek(0)
            fields.setdefault(f.field_name, f.file_object.read())

        try:
            parser = create_form_parser({"Content-Type": content_type.encode("latin-1")},
                                        lambda f: fields.setdefault(f.field_name, f.value or b""), on_file,
                                        config={"MAX_MEMORY_FILE_SIZE": len(body) + 1})
            parser.write(body)
            parser.finalize()
        except ValueError as e:  # python-multipart's FormParserError and its kin
            raise ApiError(400, f"malformed multipart/form-data body: {e}") from None
        if b"file" not in fields:
            names = ", ".join(repr(n.decode("latin-1")) for n in fields) or "none"
            raise ApiError(400, f"the multipart form has no field named 'file' (fields: {names})")
        data = fields[b"file"]
    if not data:
        raise ApiError(400, "empty upload: the request carries no image bytes")
    return data


def check_pixels(data: bytes, max_pixels: int) -> None:
    """Reject an image whose header declares more than max_pixels, before decoding any pixel.
    Only the decoder of the format its first bytes name (decode.sniff) reads the header; what no
    decoder here reads is left to open_rgb, which says what is wrong (400)."""
    fmt = sniff(data[:HEAD])
    if fmt is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
            with Image.open(io.BytesIO(data), formats=[fmt]) as probe:  # reads the header only
                w, h = probe.size
    except Image.DecompressionBombError as e:  # over twice Pillow's limit: it refuses to open it
        raise TooManyPixels(f"image too large to decode safely ({e})") from None
    except Exception:  # not an image or a damaged header: open_rgb says what is wrong
        return
    if w * h > max_pixels:
        raise TooManyPixels(f"image of {w} x {h} = {w * h / 1e6:.1f} Mpx is over this server's limit of "
                            f"{max_pixels / 1e6:g} Mpx (--max-pixels)")


def image_pixels(net: Network, content_type: str, body: bytes, max_pixels: int) -> np.ndarray:
    """A request body -> (S, S, 3) uint8: decoded and §2 resized and centre-cropped as the network's
    training images were (Pillow only: the views and normalisation are made per batch, by the batcher)."""
    data = image_bytes(content_type, body)
    check_pixels(data, max_pixels)
    # the one decode of every command (Network.read_image): a JPEG at least 3x the network's S is
    # decoded at reduced DCT scale, exactly as in `alexnet predict` and the Python API
    return resize_crop(net.read_image(data), net.size)


# ----------------------------------------------------------------------------- describing the model

def describe_model(net: Network, settings: Settings, gallery: Gallery | None) -> dict:
    norm = net.norm
    if norm.mean_image is not None:
        normalisation = {"kind": "mean_image", "scale": "0-255", "size": int(norm.mean_image.shape[-1]),
                         "mean_rgb": norm.mean_image.float().mean((1, 2)).tolist()}
    else:
        normalisation = {"kind": "per_channel", "scale": "0-255", "mean": norm.mean.tolist(), "std": norm.std.tolist()}
    return {"variant": getattr(net.model, "variant", type(net.model).__name__), "source": net.source,
            "sha256": net.sha256, "num_classes": len(net.classes),
            "classes": [{"index": i, "class": c["id"], "name": c["name"]} for i, c in enumerate(net.classes)],
            "input_size": net.crop, "resize": net.size, "normalisation": normalisation,
            "views": list(VIEWS), "device": str(net.device), "features": gallery.describe() if gallery else None,
            "limits": {**asdict(settings), "max_upload_bytes": int(settings.max_upload_mb * (1 << 20))},
            "validation": validation_of(net), "version": __version__}


def validation_of(net: Network) -> dict | None:
    """The training run's best validation figures as the page shows them, with the notes a reader
    needs first (alexnet.evaluate.result_notes: a top-1 at chance, a top-5 that 5 or fewer classes
    make 100%); None when the weights carry none (torchvision's, a state dict)."""
    v, n = net.validation, len(net.classes)
    if not v:
        return None
    error = 1.0 - float(v["top1"])
    return {"top1": float(v["top1"]), "top5": float(v["top5"]) if n > 5 else None, "epoch": float(v["epoch"]),
            "classes": n, "at_chance": at_chance(error, n), "notes": result_notes(error, n)}


# ----------------------------------------------------------------------------- the app

PREDICT_DOC = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    "responses": {"400": {"description": "not an image, damaged, empty, or no 'file' field"},
                  "413": {"description": "over the upload or pixel limit"},
                  "415": {"description": "a content type other than multipart/form-data, image/*, "
                                         "application/octet-stream"},
                  "422": {"description": "a bad query parameter"},
                  "503": {"description": "the queue is full; retry after Retry-After seconds"}},
}


def create_app(net: Network, settings: Settings | None = None, gallery: Gallery | None = None) -> FastAPI:
    settings = settings or Settings()
    batcher = Batcher(net, settings.max_batch, settings.batch_window_ms / 1000, settings.queue_size)
    # decoding and the neighbour search run here, off the event loop (Pillow and torch release the GIL)
    workers = ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="alexnet-decode")
    upload_limit = int(settings.max_upload_mb * (1 << 20))
    model_info = describe_model(net, settings, gallery)
    short_info = {k: model_info[k] for k in ("variant", "source", "sha256")}
    filters: list[bytes] = []  # drawn on first request

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()  # its warm-up pass makes the views of both kinds once
        yield  # uvicorn drains the requests in flight before this returns (graceful shutdown)
        await batcher.stop()
        workers.shutdown(wait=True)

    # no /docs or /redoc: FastAPI builds them from JavaScript on a CDN, and nothing here may load from
    # elsewhere; the OpenAPI document itself is at /openapi.json, for any OpenAPI tool
    app = FastAPI(title="alexnet", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Classify photos with a trained AlexNet (Krizhevsky et al. 2012). "
                              "No authentication: keep it on 127.0.0.1 or behind a proxy that has some.")
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse({"error": e.message}, e.status, headers=e.headers)

    @app.exception_handler(HTTPException)  # 404, 405, ...
    async def http_error(request: Request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        text = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}" for err in e.errors())
        return JSONResponse({"error": text}, 422)

    @app.exception_handler(Exception)  # a bug or a failing device: the request fails, the server goes on
    async def internal_error(request: Request, e: Exception):
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    @app.post("/v1/predict", openapi_extra=PREDICT_DOC)
    async def predict(request: Request,
                      topk: int = Query(5, ge=1, description="classes returned, most probable first"),
                      views: int = Query(1, description="1: the centre crop; 2: and its reflection; "
                                                        "10: the paper's ten views (§4.1)"),
                      neighbors: int = Query(0, ge=0, description="nearest training images (needs --features)")):
        """The top-k classes of one image."""
        start = time.perf_counter()
        if views not in VIEWS:
            raise ApiError(422, f"views must be 1, 2 or 10, got {views}")
        if neighbors and gallery is None:
            raise ApiError(400, "this server has no training images to compare with: start it with --features FILE")
        if neighbors > settings.max_neighbors:
            raise ApiError(422, f"neighbors must be at most {settings.max_neighbors}, got {neighbors}")
        loop = asyncio.get_running_loop()
        try:
            with batcher.slot() as ticket:
                check_content_type(request)
                body = await read_body(request, upload_limit)
                read = time.perf_counter()
                try:
                    pixels = await loop.run_in_executor(workers, image_pixels, net,
                                                        request.headers.get("content-type", ""), body, settings.max_pixels)
                except BadImage as e:
                    raise ApiError(400, f"cannot read the upload as an image: {e}") from None
                except TooManyPixels as e:
                    raise ApiError(413, str(e)) from None
                decoded = time.perf_counter()
                result = await ticket.submit(pixels, views, codes=neighbors > 0)
                found = None
                if neighbors:
                    found = await loop.run_in_executor(workers, gallery.nearest, result.code, neighbors)
        except Busy:
            raise ApiError(503, f"busy: {settings.queue_size} requests are already in (--queue-size); retry shortly",
                           {"Retry-After": "1"}) from None
        p = result.probabilities
        values, indices = p.topk(min(topk, len(p)))
        answer = {
            "predictions": [{"index": i, "class": net.classes[i]["id"], "name": net.classes[i]["name"],
                             "probability": v} for v, i in zip(values.tolist(), indices.tolist())],
            "model": short_info,
            "timing_ms": {"read": 1000 * (read - start), "decode": 1000 * (decoded - read), "queue": result.queue_ms,
                          "forward": result.forward_ms, "total": 1000 * (time.perf_counter() - start)},
            "batch_size": result.batch_size,
        }
        if found is not None:
            answer["neighbors"] = [{**n, "url": f"/v1/images/{n['index']}"} for n in found]
        return answer

    @app.get("/v1/health")
    async def health():
        return {"status": "ok", "admitted": batcher.admitted, "queued": batcher.queue.qsize(),
                "forward_passes": batcher.batches, "images": batcher.images}

    @app.get("/v1/model")
    async def model():
        return model_info

    @app.get("/v1/filters.png", response_class=Response)
    async def conv1_filters():
        """The conv1 kernels (the paper's Figure 3)."""
        if not filters:
            filters.append(await asyncio.get_running_loop().run_in_executor(workers, filters_png, net))
        return Response(filters[0], media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/images/{index}", response_class=Response)
    async def training_image(index: int):
        """A thumbnail of training image `index` of the --features file (a nearest neighbour)."""
        if gallery is None:
            raise ApiError(404, "this server has no training images: start it with --features FILE")
        try:
            jpeg = await asyncio.get_running_loop().run_in_executor(workers, gallery.thumbnail, index)
        except KeyError as e:
            raise ApiError(404, e.args[0]) from None
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
