"""Bytes -> RGB pixels, as the paper's §2 preprocessing needs them, robust to what real data holds.

    img = open_rgb(data, min_side=256)          # PIL RGB image, EXIF-rotated; raises BadImage
    arr = resize_crop(img, 256)                 # (256, 256, 3) uint8: shorter side 256, centre crop
    jpg = encode_jpeg(arr, quality=90)

What real data holds (paper.md §2): greyscale and CMYK JPEGs, a PNG named .JPEG, palette and alpha
PNGs, 16-bit PNGs, EXIF-rotated photos, truncated downloads, empty and non-image files, camera
photos of 100 megapixels and more, panoramas and 6000x20 strips. Pillow picks the decoder from the
bytes, not the file name; every mode is converted to 8-bit RGB (alpha is composited over white,
16-bit values keep their top 8 bits); anything that cannot be decoded raises BadImage with a
reason, so that callers skip and report it.

One rule for damaged files: whatever exception a decoder raises while a file is
opened, loaded or converted (libavif's RuntimeError, a TypeError inside Pillow's TIFF reader, ...)
is the file's fault and becomes BadImage naming the format, the exception's class and the first
line of its message; only MemoryError (the machine's, not the file's) and interrupts go through.
prepare, predict, evaluate and serve all decode through open_rgb, so each of them skips such a file
with its reason (serve: a 400).

Formats (FORMATS): JPEG, PNG, GIF, BMP, WebP, TIFF (8- and 16-bit), AVIF, PNM (PBM/PGM/PPM) and
JPEG 2000, told apart by their first bytes (sniff()) as Pillow's own plugins tell them, and only
that format's decoder is run. Other formats Pillow can open (TGA, PSD, ICO, PCX, EPS, ...) are
refused as not an image: they are no photo formats, TGA and others have no signature junk could be
told from, and EPS would run Ghostscript on the bytes.

Junk costs no memory: read_file() reads a file's first HEAD bytes and checks
them and the file's size (at most max_file_bytes(), by default MAX_FILE_BYTES; the environment
variable ALEXNET_MAX_FILE_MB sets another) before it reads the file whole, so a 1.5 GB file of
zeros named .jpg is skipped after reading HEAD bytes.

Size limit: an image is refused only when what would be *decoded* exceeds the limit, by default
Pillow's hard decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS, ~179 MP); the environment
variable ALEXNET_MAX_PIXELS sets another. A JPEG is decoded at reduced scale (below), so a 108 MP
camera photo costs a 2 MP decode and passes; other formats are decoded whole and are also bound by
Pillow's own hard limit.

Speed (benchmarks/prepare.py, docs/benchmarks.md): for a JPEG at least 3x the target size,
Pillow's `draft` asks libjpeg-turbo to decode at 1/2, 1/4 or 1/8 scale in the DCT domain (never
below 1.5x the target), which is several times faster than a full decode; the centre crop is then
resampled straight from the source box in one antialiased bicubic resize, so no pixels outside the
crop are resized. On ImageNet's median 500x375 photo neither shortcut applies: decoding takes
~1.8 ms, the resize ~1.5 ms.
"""
from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ..errors import UserError

# Antialiased bicubic (Keys, a = -0.5; timm's ImageNet default): 0.7x LANCZOS's time, and on
# ImageNet's photos 42 dB from LANCZOS's pixels, 38 dB once both are stored at quality 90
# (docs/benchmarks.md); the cheaper BILINEAR and HAMMING fall below 35 dB there.
RESAMPLE = Image.Resampling.BICUBIC
# draft() decodes a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain, which is coarse: measured on
# ImageNet's 800x600 photos, decoding at 1/2 right down to 300x400 and resizing to 256 loses
# 4-6 dB against a full decode. Leaving 1.5x for the antialiased resize keeps it within 1 dB.
DRAFT_MARGIN = 1.5
MAX_PIXELS_ENV = "ALEXNET_MAX_PIXELS"
MAX_FILE_ENV = "ALEXNET_MAX_FILE_MB"
# bytes of one image file read whole: the size of the largest uncompressed 16-bit RGB TIFF within
# the default pixel limit (2 x 89,478,485 px x 6 bytes, 4 bytes short of 1 GiB); a photo is far less
MAX_FILE_BYTES = 1 << 30
MAX_ASPECT = 4.0  # --keep-aspect stores at most this longer/shorter side ratio (the central part)
JPEG_START = b"\xff\xd8\xff"
HEAD = 32  # bytes sniff() looks at (Pillow's plugins look at 16; BMP's DIB header size lies at 14..17)
# Pillow's format name -> what a reader calls it; sniff() tells each from its first bytes
FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP", "WEBP": "WebP", "TIFF": "TIFF",
           "AVIF": "AVIF", "PPM": "PNM", "JPEG2000": "JPEG 2000"}
_BMP_HEADERS = (12, 40, 52, 56, 64, 108, 124)  # DIB header sizes after the 14-byte file header (Pillow's list)


class BadImage(ValueError):
    """The bytes are not a decodable image; the message is the reason recorded in the manifest."""


def sniff(head: bytes) -> str | None:
    """The format of a file (a key of FORMATS) from its first HEAD bytes, or None when they are
    not those of any format decoded here. The checks are Pillow's plugins' own (`_accept`), with
    BMP's and PNM's tightened so that text starting "BM" or "P3" is not taken for an image."""
    if head.startswith(JPEG_START):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_HEADERS:
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"mif1", b"msf1"):
        return "AVIF"
    if head[:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6") and head[2:3].isspace():
        return "PPM"
    if head.startswith((b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n")):
        return "JPEG2000"
    return None


def _not_an_image(head: bytes) -> BadImage:
    return BadImage(f"not an image: starts with {head[:8]!r}, which is none of the formats read here "
                    f"({', '.join(FORMATS.values())})")


def max_file_bytes() -> tuple[int | None, str]:
    """(the most bytes one image file may hold to be read whole, where that limit comes from)."""
    value = os.environ.get(MAX_FILE_ENV)
    if value:
        try:
            limit = int(float(value) * (1 << 20))
        except ValueError:
            raise UserError(f"{MAX_FILE_ENV}={value!r} is not a number of megabytes (e.g. 2048)") from None
        return (limit if limit > 0 else None), MAX_FILE_ENV
    return MAX_FILE_BYTES, f"the default; set {MAX_FILE_ENV}=<MiB> to change it"


def check_head(head: bytes, size: int) -> str:
    """The format of a file of `size` bytes whose first bytes are `head` (at least HEAD of them,
    fewer only when the file is shorter), checked before the file is read whole.
    Raises BadImage: empty, not one of FORMATS, or larger than max_file_bytes()."""
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    fmt = sniff(head)
    if fmt is None:
        raise _not_an_image(head)
    limit, source = max_file_bytes()
    if limit is not None and size > limit:
        raise BadImage(f"file of {size:,} bytes is over the limit of {limit:,} bytes for one {FORMATS[fmt]} "
                       f"image ({source}); it was not read")
    return fmt


def read_file(path: str | os.PathLike, offset: int = -1, size: int = -1) -> bytes:
    """The bytes of an image file (or of the `size` bytes at `offset` inside one, an archive
    member), read whole only once its first bytes and its size have passed check_head().
    Raises BadImage (not an image, over the size limit), OSError (cannot be read, or ends early)."""
    with open(path, "rb") as f:
        if offset < 0:
            size = os.fstat(f.fileno()).st_size
        else:
            f.seek(offset)
        head = f.read(min(HEAD, size))
        check_head(head, size)
        data = head + f.read(size - len(head))
    if len(data) != size:
        raise OSError(f"{os.fspath(path)} ends before the {size:,} bytes at offset {offset:,} do "
                      f"(truncated archive?)" if offset >= 0 else f"{os.fspath(path)} became shorter while it was read")
    return data


def max_pixels() -> tuple[int | None, str]:
    """(the most pixels an image may decode to, where that limit comes from)."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value:
        try:
            limit = int(float(value))
        except ValueError:
            raise UserError(f"{MAX_PIXELS_ENV}={value!r} is not a number of pixels (e.g. 300e6)") from None
        return (limit if limit > 0 else None), MAX_PIXELS_ENV
    if Image.MAX_IMAGE_PIXELS is None:
        return None, "PIL.Image.MAX_IMAGE_PIXELS is None"
    return 2 * Image.MAX_IMAGE_PIXELS, "Pillow's decompression-bomb limit"


def too_large(width: int, height: int, kind: str, decoded: tuple[int, int] | None, limit: int, source: str) -> BadImage:
    """The BadImage for a picture of width x height over the pixel limit (max_pixels()), whichever decoder met it."""
    at = f", decoded at {decoded[0]}x{decoded[1]}" if decoded and decoded != (width, height) else ""
    return BadImage(f"too large to decode: {width}x{height} {kind} ({width * height / 1e6:.0f} megapixels{at}) "
                    f"exceeds the limit of {limit / 1e6:.0f} megapixels ({source}); set {MAX_PIXELS_ENV}=<pixels> "
                    f"to change it")


def _open(data: bytes, fmt: str) -> Image.Image:
    """A lazily decoded image of format `fmt` (sniff()'s). JPEGs skip Image.open's size check: it
    would refuse a 108 MP camera photo before draft() had a chance to decode it at 1/8 scale;
    open_rgb checks what is decoded."""
    fp = io.BytesIO(data)
    if fmt == "JPEG":
        return JpegImagePlugin.JpegImageFile(fp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked after
        return Image.open(fp, formats=[fmt])  # that decoder only: no other plugin guesses at the bytes


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200] or type(e).__name__


def open_rgb(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode an image file's bytes to an 8-bit RGB PIL image with its EXIF orientation applied.

    min_side: the caller will shrink the shorter side to this size; JPEGs at least 3x as large
    are decoded at a reduced scale whose shorter side stays >= 1.5 x min_side (DRAFT_MARGIN).
    Raises BadImage: empty, not one of FORMATS, truncated or damaged (whatever the decoder raised:
    its class and first line are the reason), or too large (see max_pixels()). MemoryError and
    interrupts are not the file's and pass through.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    fmt = sniff(data[:HEAD])
    if fmt is None:
        raise _not_an_image(data)
    kind = FORMATS[fmt]
    limit, source = max_pixels()
    try:
        img = _open(data, fmt)
        width, height = img.size
        if min_side and fmt == "JPEG" and min(img.size) >= 2 * DRAFT_MARGIN * min_side:
            scale = DRAFT_MARGIN * min_side / min(img.size)
            img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        if limit is not None and img.width * img.height > limit:
            raise too_large(width, height, kind, img.size, limit, source)
        img.load()
        try:  # in place: otherwise an upright image is copied whole (~0.1 ms of a 500x375 photo)
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # a damaged EXIF block must not lose the image: keep it unrotated
            pass
        return to_rgb(img)
    except (BadImage, MemoryError):  # ours, or the machine's memory (never the file's fault)
        raise
    except UnidentifiedImageError:  # the first bytes looked right, the header does not
        raise BadImage(f"damaged {kind}: the {kind} decoder does not recognise its header") from None
    except Image.DecompressionBombError as e:  # a non-JPEG beyond Pillow's own hard limit
        raise BadImage(f"too large to decode: {e} (Pillow's hard limit for {kind} files)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # what Pillow raises for truncated or damaged data
        raise BadImage(f"truncated or damaged {kind}: {_first_line(e)}") from None
    except Exception as e:  # any other decoder failure is the file's too: libavif's
        # RuntimeError "Missing or empty image item", a TypeError inside Pillow's TIFF reader, ...
        raise BadImage(f"truncated or damaged {kind} ({type(e).__name__} in the decoder: "
                       f"{_first_line(e)})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit greyscale: keep the top byte
        a = np.asarray(img).astype(np.int32)  # I is int32 already; int64 would double a 100 MP copy
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a >> 8
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK (Adobe-inverted CMYK handled by Pillow), YCbCr, LAB, HSV


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Size after resizing the shorter side to `size` (§2), aspect ratio kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def crop_box(width: int, height: int, size: int, keep_aspect: bool = False) -> tuple[int, int, int, int, int, int]:
    """(resized width, resized height, left, top, crop width, crop height), all px, of §2's shorter
    side to `size` and the central size x size crop; with keep_aspect the whole resized image, at
    most MAX_ASPECT x `size` on a side (its central part)."""
    tw, th = target_size(width, height, size)
    if keep_aspect:
        cw, ch = min(tw, math.floor(MAX_ASPECT * size)), min(th, math.floor(MAX_ASPECT * size))
    else:
        cw, ch = size, size
    return tw, th, (tw - cw) // 2, (th - ch) // 2, cw, ch


def resize_crop_image(img: Image.Image, size: int, keep_aspect: bool = False,
                      resample: Image.Resampling = RESAMPLE) -> Image.Image:
    """§2: shorter side to `size`, then the central size x size crop, as a PIL image.

    keep_aspect: the whole shorter-side-resized image instead (for scale-jitter training), but at
    most MAX_ASPECT times as long as it is wide: a 6000x20 strip would otherwise be stored as
    76800x256 (beyond what a JPEG can hold); longer images keep their central part.
    The crop box is the one a resize-then-crop would take (offsets floor((w - size) / 2)), mapped
    back to source coordinates, so only the kept pixels are resampled.
    """
    w, h = img.size
    tw, th, left, top, cw, ch = crop_box(w, h, size, keep_aspect)
    sx, sy = w / tw, h / th
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    # reducing_gap: a large non-JPEG (no draft) is first shrunk by an integer factor with a box
    # filter, then resampled; at a gap of 3 the result is indistinguishable (Pillow's docs)
    return img.resize((cw, ch), resample, box=box, reducing_gap=3.0)


def resize_crop(img: Image.Image, size: int, keep_aspect: bool = False,
                resample: Image.Resampling = RESAMPLE) -> np.ndarray:
    """§2 resize and centre crop -> (size, size, 3) uint8 (or (H, W, 3) with keep_aspect)."""
    return np.asarray(resize_crop_image(img, size, keep_aspect, resample))


def encode_jpeg(image: np.ndarray | Image.Image, quality: int) -> bytes:
    """(H, W, 3) uint8 or an RGB PIL image -> baseline JPEG bytes (4:2:0 chroma, libjpeg-turbo),
    deterministic."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image, "RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
