"""`alexnet prepare SRC OUT`: decode, resize and store a data set once, so training reads it fast.

    alexnet prepare ~/data/imagenette2 prepared/imagenette
    alexnet prepare ~/ILSVRC2012 prepared/imagenet --workers 32      # the official tars, in place
    alexnet prepare train.csv prepared/mine --size 160 --raw

Per §2 every image's shorter side is resized to S (default 256, antialiased) and the central SxS
crop is kept (`--keep-aspect` keeps the whole resized image), then stored as JPEG (quality 90 by
default; see docs/benchmarks.md for the size/fidelity trade-off) or raw uint8 (`--raw`) in the
format of alexnet.data.store, with the training split's statistics (mean image, channel mean/std,
RGB covariance and its eigen-decomposition for §4.1 PCA colour augmentation, 0-255 scale).

Decoding and resizing (alexnet.data.codecs, recorded in the manifest and the fingerprint): Pillow's,
or for jobs of 2,000 images per worker and more libjpeg-turbo through simplejpeg and torch's uint8
antialiased bicubic, 1.4x faster per photo once torch's 1.7 s import is paid (--decoder, --resampler).

Work is split into shards of consecutive samples (plan()), done in parallel by `--workers` processes
(0 or 1: in this process) by alexnet.data.shards, the worker side; this module is the rest: the
plan, the fingerprint, resuming, repair and the assembly of the pieces into the data set. A shard
is complete when its tar has been renamed into place and its index piece written beside it, so a
run stopped by Ctrl-C, kill -9 or a full disk resumes from the completed shards when the same
command is run again, and gives byte-identical output. Files that do not decode
are skipped, never abort the run, and are listed with their reason in the manifest: found =
written + skipped (a source where nothing decodes is an error that lists them in OUT/skipped.json). One
prepare at a time per OUT (a lock; a second is refused with the first one's pid), and a full disk at
any stage is one line that says to free space and run the same command again.

Run again over a finished OUT, the same command re-checks it against its manifest (shard sizes,
index and statistics SHA-256; `--verify` every shard's SHA-256 too) and rebuilds what is damaged
or missing (see repair()). `alexnet prepare --verify OUT` only checks, and names the damage.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, fileio, process
from ..errors import UserError
from . import codecs, store
from .decode import MAX_ASPECT, RESAMPLE, max_file_bytes, max_pixels
from .listing import Listing
from .shards import DEFAULT_QUALITY, Options, Task, finish_stats, piece_path, run_tasks, shard_path
from .sources import list_source
from .verify import check

MAX_SIZE = 8192  # px: --keep-aspect stores sides up to MAX_ASPECT x this, within the index's 65535


def shard_size_for(count: int) -> int:
    """Samples per shard: about 64 shards per split (parallelism, resume granularity), 16..8192."""
    return min(8192, max(16, math.ceil(count / 64)))


def plan(listing: Listing, shard_size: int | None) -> dict[str, list[tuple[int, int]]]:
    """split -> [(first, end)] sample ranges of its shards; depends only on the listing."""
    out = {}
    for split, samples in listing.splits.items():
        n = shard_size or shard_size_for(len(samples))
        out[split] = [(i, min(i + n, len(samples))) for i in range(0, len(samples), n)] or [(0, 0)]
    return out


def fingerprint(listing: Listing, options: Options, shards: dict) -> str:
    """Identifies the work: the same source listing, options and shard plan give the same value."""
    # Pillow's decoder and resampler were the only ones before the fields existed: left out at those
    # values, so that data sets prepared then keep their fingerprint (a re-run re-checks, never refuses)
    opts = {k: v for k, v in asdict(options).items() if not (k in ("decoder", "resampler") and v == "pillow")}
    h = hashlib.sha256(json.dumps([opts, shards, [c.to_json() for c in listing.classes]],
                                  sort_keys=True).encode())
    for split in sorted(listing.splits):
        for s in listing.splits[split]:
            h.update(f"{split}\t{s.key}\t{s.label}\t{s.offset}\t{s.size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass
class Job:
    """One `alexnet prepare`: what is read, how it is stored and where."""
    src: str | Path
    out: Path
    listing: Listing
    shards: dict[str, list[tuple[int, int]]]  # split -> [(first, end)] of plan()
    options: Options
    fp: str  # fingerprint()
    stats_split: str
    workers: int | None
    progress: bool
    started: float
    read_now: int = 0  # samples read by this run (not by an earlier, interrupted one)

    def task(self, split: str, shard: int) -> Task:
        first, end = self.shards[split][shard]
        return Task(split, shard, first, tuple(self.listing.splits[split][first:end]), str(self.out), self.options,
                    split == self.stats_split)


@dataclass(frozen=True)
class Request:
    """What `alexnet prepare` is asked for, as its flags say it: `prepare` resolves it into the
    stored Options (the defaults, "auto") and the run's settings.

    size: the stored side S in px (§2); keep_aspect: the whole resized image, up to 4:1; raw: uint8
    pixels instead of JPEG; quality: JPEG quality (None: DEFAULT_QUALITY); decoder, resampler:
    alexnet.data.codecs' names or "auto"; kind: SRC's layout (alexnet.data.sources.KINDS) or "auto";
    csv_columns: "PATH,LABEL[,SPLIT]" header names of a CSV list; shard_size: samples per shard (None:
    about 64 per split); workers: processes (None: all cores; 0 or 1: this one)."""
    size: int = 256
    keep_aspect: bool = False
    raw: bool = False
    quality: int | None = None
    decoder: str = "auto"
    resampler: str = "auto"
    kind: str = "auto"
    csv_columns: str | None = None
    shard_size: int | None = None
    workers: int | None = None

    def check(self) -> None:
        """Raises UserError for a value no run could use, naming the flag."""
        if self.size < 32:
            raise UserError(f"--size {self.size} is too small: the network needs at least 64 px crops")
        if self.size > MAX_SIZE:
            raise UserError(f"--size {self.size} is too large: at most {MAX_SIZE} px (the index holds sides up to "
                            f"65535 px, and --keep-aspect stores up to {MAX_ASPECT:g}x the size)")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise UserError(f"--quality must be in 1..100, got {self.quality}")
        if self.raw and self.quality is not None:
            raise UserError("--quality applies to JPEG storage; it has no effect with --raw")
        if self.shard_size is not None and self.shard_size < 1:
            raise UserError(f"--shard-size must be at least 1, got {self.shard_size}")
        for name, value, known in (("--decoder", self.decoder, codecs.DECODERS),
                                   ("--resampler", self.resampler, codecs.RESAMPLERS)):
            if value != "auto" and value not in known:
                raise UserError(f"{name} {value!r} is not one of auto, {', '.join(known)}")
        if self.decoder == "simplejpeg" and not codecs.simplejpeg_available():
            raise UserError("--decoder simplejpeg needs the simplejpeg package: pip install simplejpeg "
                            "(or --decoder pillow)")


def prepare(src: str | Path, out: str | Path, request: Request | None = None, *, progress: bool = True,
            verify: bool = False, **fields) -> dict:
    """Prepare `src` into `out` (resuming an interrupted run); returns the manifest. An `out` already
    prepared from the same source and options is checked against its manifest (shard sizes, index
    and statistics; with `verify` every shard's SHA-256 too) and what is damaged or missing rebuilt.

    request: a Request; `fields` are a shorthand for its fields (`prepare(src, out, size=64,
    workers=0)`). Decoder and resampler "auto": what OUT's interrupted or finished run used, else
    codecs.auto_choice for this job's size (simplejpeg + torch from codecs.AUTO_MIN images per
    worker). Raises UserError for bad options and sources, TypeError for an unknown field."""
    r = dataclasses.replace(request or Request(), **fields)
    r.check()
    refuse_prepared_source(src)
    refuse_foreign_out(src, out)
    started = time.time()
    # a bad ALEXNET_MAX_PIXELS or ALEXNET_MAX_FILE_MB is an error now, not a reason on every image
    max_pixels(), max_file_bytes()
    listing = list_source(src, r.kind, r.csv_columns)
    shards = plan(listing, r.shard_size)
    decoder, resampler, why = choose_codecs(Path(out), r.decoder, r.resampler, listing, r.workers)
    options = Options(r.size, r.keep_aspect, "raw" if r.raw else "jpeg",
                      0 if r.raw else (r.quality or DEFAULT_QUALITY), decoder, resampler)
    if why:
        say(progress, why)
    with_images = [s for s in sorted(listing.splits) if listing.splits[s]]
    job = Job(src, Path(out), listing, shards, options, fingerprint(listing, options, shards),
              "train" if "train" in with_images else with_images[0], r.workers, progress, started)
    lock = fileio.FolderLock(job.out, "output folder")  # one prepare per OUT: a second one is refused
    try:
        lock.acquire()
    except OSError as e:
        raise UserError(f"cannot write to {job.out}: {e.strerror or e}") from None
    try:
        with disk_errors(job.out):  # everywhere: shards, assembly, repair
            return _prepare(job, verify)
    finally:
        lock.release()


def choose_codecs(out: Path, decoder: str, resampler: str, listing: Listing,
                  workers: int | None) -> tuple[str, str, str | None]:
    """(decoder, resampler, a line saying why, or None) with "auto" resolved: to what OUT's run used
    (its manifest, or its interrupted run's state), so that the same command resumes and re-checks
    whatever --workers says now; else to codecs.auto_choice for this job."""
    if decoder != "auto" and resampler != "auto":
        return decoder, resampler, None
    recorded = {}
    for name, key in (("manifest.json", "options"), ("prepare-state.json", "options")):
        try:
            recorded = json.loads((out / name).read_text()).get(key) or {}
        except (OSError, ValueError, UnicodeDecodeError, AttributeError):
            continue
        break
    if recorded:
        return (recorded.get("decoder", "pillow") if decoder == "auto" else decoder,
                recorded.get("resampler", "pillow") if resampler == "auto" else resampler, None)
    images = sum(len(v) for v in listing.splits.values())
    procs = (os.cpu_count() or 1) if workers is None else workers
    auto_decoder, auto_resampler = codecs.auto_choice(images, procs)
    decoder = auto_decoder if decoder == "auto" else decoder
    resampler = auto_resampler if resampler == "auto" else resampler
    per = images / max(1, procs)
    return decoder, resampler, (f"decoder {decoder}, resampler {resampler}: {per:,.0f} images per worker "
                                f"({'at least' if per >= codecs.AUTO_MIN else 'fewer than'} {codecs.AUTO_MIN:,}, "
                                f"where torch's import pays; --decoder/--resampler choose)")


def refuse_foreign_out(src: str | Path, out: str | Path) -> None:
    """OUT must be a folder prepare owns: new, empty, or holding a (possibly interrupted) prepare's
    output; never SRC itself, a folder inside SRC (shards among the user's images, read back as
    images by the next prepare), or one holding anything else. Raises UserError."""
    src_r, out_r = Path(src).resolve(), Path(out).resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise UserError(f"OUT {out} is {'SRC itself' if out_r == src_r else 'inside SRC ' + str(src)}: prepare "
                        f"would write its shards among your images; give a folder outside it, e.g. "
                        f"{src_r.parent / (src_r.name + '-prepared')}")
    if not out_r.is_dir():
        return
    names = {p.name for p in out_r.iterdir() if not p.name.startswith(".")}
    if not names or names & {"manifest.json", "prepare-state.json"}:
        return  # ours: empty, prepared, or an interrupted prepare (its state is written first)
    raise UserError(f"OUT {out} is not empty and holds no alexnet prepare output (e.g. {sorted(names)[0]}); "
                    f"give a new or empty folder, so that nothing of yours is overwritten or mixed with shards")


def refuse_prepared_source(src: str | Path) -> None:
    """A prepared data set given as SRC would be read as an ImageFolder with classes `train`, `val`."""
    try:
        prepared = json.loads((Path(src) / "manifest.json").read_text()).get("format") == store.FORMAT
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return
    if prepared:
        raise UserError(f"{src} is already a prepared data set (the output of alexnet prepare): train on it with "
                        f"`alexnet train --data {src}`, check it with `alexnet prepare --verify {src}`, or give "
                        f"the folder of the original images as SRC")


@contextlib.contextmanager
def disk_errors(out: Path):
    """A full disk, or any other write error, is one line that says what to do (the work done so far
    is kept: the same command resumes)."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {out}: free some space and run the same command "
                            f"again to resume") from e
        raise UserError(f"cannot write to {out}: {e}") from e


def _prepare(job: Job, verify: bool) -> dict:
    out = job.out
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{manifest_path} is damaged (not JSON): move it aside and run the same command "
                            f"again to prepare {out} anew") from None
        if manifest.get("fingerprint") == job.fp:
            return repair(job, manifest, verify)
        raise UserError(f"{out} already holds a data set prepared from other data or options; "
                        f"choose another OUT or delete {out}")
    state_path = out / "prepare-state.json"
    _make_writable(out)
    if state_path.is_file() and _state_fingerprint(state_path) != job.fp:
        raise UserError(f"{out} holds an interrupted prepare of other data or options; "
                        f"choose another OUT or delete {out}")
    fileio.atomic_write(state_path, json.dumps({"fingerprint": job.fp, "source": str(job.src),
                                               "options": asdict(job.options)}).encode())
    for split in job.shards:
        (out / split).mkdir(exist_ok=True)
        for stale in (out / split).glob("*.tmp"):  # leftovers of an interrupted run
            stale.unlink()
    todo = [(split, k) for split, ranges in job.shards.items() for k in range(len(ranges))]
    resumed = sum(piece_done(out, split, k, verify) for split, k in todo)
    if resumed:
        say(job.progress, f"resuming: {resumed} shard(s) already done, {len(todo) - resumed} to go")
    run_shards(job, todo, verify)
    manifest = assemble(out, job.listing, job.shards, job.options, job.fp, job.stats_split, job.src,
                        time.time() - job.started)
    state_path.unlink(missing_ok=True)
    (out / "skipped.json").unlink(missing_ok=True)  # of an earlier run that had nothing to decode
    if job.progress:
        listed = sum(len(samples) for samples in job.listing.splits.values())
        print_summary(manifest, out, time.time() - job.started, job.read_now if job.read_now < listed else None)
    return manifest


def _state_fingerprint(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def piece_done(out: Path, split: str, shard: int, checksums: bool = False) -> bool:
    """A shard is done when its piece is readable and its tar has the size (with `checksums`, the
    SHA-256) the piece recorded for it."""
    tar = shard_path(out, split, shard)
    try:
        with np.load(piece_path(out, split, shard)) as piece:
            meta = json.loads(str(piece["meta"]))
    except (OSError, ValueError, KeyError):
        return False
    if not tar.is_file() or tar.stat().st_size != meta["bytes"]:
        return False
    return not checksums or fileio.sha256_file(tar) == meta["sha256"]


def run_shards(job: Job, keys: list[tuple[str, int]], checksums: bool = False) -> None:
    """Make the shards `keys` [(split, shard)] that are not done yet (their tars and pieces)."""
    tasks = [job.task(split, k) for split, k in keys if not piece_done(job.out, split, k, checksums)]
    job.read_now += sum(len(t.samples) for t in tasks)
    try:
        with process.sigterm_as_interrupt():
            run_tasks(tasks, sum(len(t.samples) for t in tasks), job.workers, job.progress)
    except KeyboardInterrupt:
        # the pool's workers are stopped now; a signal can land in one before its shard writer's
        # own cleanup is armed (seen under load: a train-00002.tar.tmp left behind), so sweep here
        for split in {t.split for t in tasks}:
            for stale in (job.out / split).glob("*.tmp"):
                stale.unlink(missing_ok=True)
        print("\ninterrupted: run the same command again to resume from the completed shards",
              file=sys.stderr)
        raise


def repair(job: Job, manifest: dict, verify: bool) -> dict:
    """Check a finished data set against its manifest and rebuild what is damaged or missing.

    A damaged or missing shard is made again from the source; it comes out byte-identical (same
    source, options and libraries), so the index and statistics stand. A damaged index, damaged
    statistics, or a rebuilt shard that differs (the source files or the image libraries changed
    since) mean that split's shards are all made again and it is assembled anew, with the
    statistics when it is their split; a format 1 data set is then rebuilt whole, in format 2."""
    out = job.out
    damage = check(store.open_prepared(out), checksums=verify, progress=job.progress)
    if not damage:
        checked = ("every file's SHA-256" if verify else
                   "shard sizes, index and statistics SHA-256; --verify reads every shard's SHA-256 too")
        old = (f"; format {manifest['format_version']}: its samples carry no checksums, prepare into a new folder "
               f"to get them" if manifest["format_version"] < store.FORMAT_VERSION else "")
        say(job.progress, f"{out} is already prepared from this source with these options and checks out "
                          f"({checked}){old}; nothing to do")
        return manifest
    for d in damage:
        say(job.progress, f"damaged: {d.line()}")
    whole = {d.split for d in damage if d.shard is None and d.split is not None}
    if any(d.split is None for d in damage):  # the statistics: made from their split's images
        whole.add(job.stats_split)
    redo = {(d.split, d.shard) for d in damage if d.shard is not None}

    def everything_of(splits):
        if manifest["format_version"] != store.FORMAT_VERSION:
            splits = set(job.shards)  # one format in one data set
        return sorted(redo | {(s, k) for s in splits for k in range(len(job.shards[s]))})

    for split in job.shards:
        for stale in (out / split).glob("*.tmp"):
            stale.unlink()
    todo = everything_of(whole) if whole else sorted(redo)
    run_shards(job, todo, checksums=True)  # a piece left by an interrupted repair counts if its tar is intact
    recorded = {(s, k): info["sha256"] for s, v in manifest["splits"].items() for k, info in enumerate(v["shards"])}
    differ = sorted({s for s, k in redo if s not in whole and _piece_sha(out, s, k) != recorded[(s, k)]})
    if differ:
        say(job.progress, f"the rebuilt shard(s) of {', '.join(differ)} differ from the recorded ones (the source "
                          f"files or the image libraries changed since): making all of {', '.join(differ)} again")
        whole |= set(differ)
        todo = everything_of(whole)
        run_shards(job, todo, checksums=True)
    rebuilt = [f"{s}/{shard_path(out, s, k).name}" for s, k in todo]
    if whole:
        if manifest["format_version"] != store.FORMAT_VERSION:
            whole = set(job.shards)
        manifest = assemble(out, job.listing, job.shards, job.options, job.fp, job.stats_split, job.src,
                            time.time() - job.started, previous=manifest, only=whole)
        rebuilt += [f"{s}/{name}" for s in sorted(whole) for name in ("index.npy", "keys.txt")]
        rebuilt += ["stats.npz"] if job.stats_split in whole else []
    for s, k in todo:
        piece_path(out, s, k).unlink(missing_ok=True)
    say(job.progress, f"rebuilt {len(rebuilt)} file(s): {', '.join(sorted(rebuilt))}")
    return manifest


def _piece_sha(out: Path, split: str, shard: int) -> str:
    with np.load(piece_path(out, split, shard)) as piece:
        return json.loads(str(piece["meta"]))["sha256"]


def say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


def _make_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror or e}") from None


def assemble(out: Path, listing: Listing, shards: dict, options: Options, fp: str, stats_split: str,
             src, elapsed: float, previous: dict | None = None, only: set[str] | None = None) -> dict:
    """Join the shards' pieces into each split's index, the statistics and the manifest. In a repair
    (`previous`: the manifest), only the splits in `only` are joined anew; the others, and the
    statistics unless their split is among them, stay as `previous` has them."""
    only = set(shards) if only is None else only
    splits, stats_parts = {}, []
    for split, ranges in shards.items():
        if split not in only:
            splits[split] = previous["splits"][split]
            continue
        rows, keys, skipped, shard_info = [], [], list(listing.skipped.get(split, [])), []
        for shard in range(len(ranges)):
            with np.load(piece_path(out, split, shard)) as piece:
                meta = json.loads(str(piece["meta"]))
                rows.append(piece["rows"])
                if split == stats_split:
                    stats_parts.append({k: piece[k] for k in piece.files if k not in ("rows", "meta")})
            keys += meta["keys"]
            skipped += meta["skipped"]
            shard_info.append({"file": f"{split}/{shard_path(out, split, shard).name}",
                               "count": len(meta["keys"]), "bytes": meta["bytes"], "sha256": meta["sha256"]})
        index = np.concatenate(rows)
        store.atomic_save_npy(out / split / "index.npy", index)
        key_lines = "".join(k + "\n" for k in keys).encode("utf-8")
        fileio.atomic_write(out / split / "keys.txt", key_lines)
        checksum = store.split_checksum((out / split / "index.npy").read_bytes(), [s["sha256"] for s in shard_info])
        splits[split] = {"count": len(index), "skipped": skipped, "found": listing.found(split),
                         "shard_size": ranges[0][1] - ranges[0][0], "shards": shard_info,
                         "bytes": sum(s["bytes"] for s in shard_info), "sha256": checksum,
                         "keys_sha256": hashlib.sha256(key_lines).hexdigest()}
        assert splits[split]["count"] + len(skipped) == splits[split]["found"], split  # all accounted for
    if stats_split in only:
        if not sum(int(p["images"]) for p in stats_parts):
            raise nothing_decoded(out, stats_split, {name: s["skipped"] for name, s in splits.items()})
        stats = finish_stats(stats_parts)
        buf = io.BytesIO()
        np.savez(buf, **stats)
        fileio.atomic_write(out / "stats.npz", buf.getvalue())
        stats_info = {"split": stats_split, "file": "stats.npz", "scale": "0-255",
                      **{k: v.tolist() for k, v in stats.items() if k != "mean_image"},
                      "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    else:
        stats_info = previous["stats"]
    manifest = {
        "format": store.FORMAT, "format_version": store.FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "alexnet": __version__,
        "source": {"path": str(Path(src).resolve()), "kind": listing.kind},
        "options": {**asdict(options), "resample": RESAMPLE.name.lower()}, "fingerprint": fp,
        "classes": [c.to_json() for c in listing.classes],
        "splits": splits,
        "ignored": summarise(listing.ignored), "warnings": listing.warnings,
        "stats": stats_info,
        "elapsed_s": round(elapsed, 1),
    }
    if previous is not None:  # a repair: when it was made, and when mended
        manifest.update(created=previous["created"], elapsed_s=previous["elapsed_s"],
                        repaired=manifest["created"])
    fileio.atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    for split in only:  # the pieces are folded into the index now
        for shard in range(len(shards[split])):
            piece_path(out, split, shard).unlink(missing_ok=True)
    return manifest


def nothing_decoded(out: Path, split: str, skipped: dict[str, list[dict]]) -> UserError:
    """No statistics without images: the skipped files, every one in OUT/skipped.json, the first few
    in the message."""
    path = out / "skipped.json"
    fileio.atomic_write(path, (json.dumps(skipped, indent=1) + "\n").encode())
    files = skipped.get(split, [])
    examples = "; ".join(f"{s['path']}: {s['reason']}" for s in files[:3])
    return UserError(f"no image of the {split} split could be decoded: {len(files)} file(s) skipped, e.g. {examples}"
                     f"{' ...' if len(files) > 3 else ''}; the full list is in {path}")


def summarise(ignored: list[dict], examples: int = 5) -> list[dict]:
    """[{path, reason}] -> [{reason, count, examples}]: a folder of a million AppleDouble files
    must not make a million-line manifest."""
    out: dict[str, dict] = {}
    for item in ignored:
        entry = out.setdefault(item["reason"], {"reason": item["reason"], "count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < examples:
            entry["examples"].append(item["path"])
    return list(out.values())


def print_summary(manifest: dict, out: Path, elapsed: float, read_now: int | None = None) -> None:
    """The table of splits and the closing line; after a resume (`read_now`: the samples this run
    read, fewer than listed) its speed counts only those, not the shards an earlier run made."""
    written = sum(s["count"] for s in manifest["splits"].values())
    print(f"\n{'split':<8}{'found':>10}{'written':>10}{'skipped':>9}{'shards':>8}{'MB':>10}")
    for name, s in manifest["splits"].items():
        print(f"{name:<8}{s['found']:>10,}{s['count']:>10,}{len(s['skipped']):>9,}{len(s['shards']):>8}"
              f"{s['bytes'] / 1e6:>10.1f}")
    for name, s in manifest["splits"].items():
        for item in s["skipped"][:5]:
            print(f"  skipped ({name}) {item['path']}: {item['reason']}")
        if len(s["skipped"]) > 5:
            print(f"  ... and {len(s['skipped']) - 5} more in {out / 'manifest.json'}")
    for entry in manifest.get("ignored", []):
        print(f"  ignored {entry['count']:,} {entry['reason']}, e.g. {', '.join(entry['examples'][:3])}")
    for warning in manifest.get("warnings", []):
        print(f"  warning: {warning}")
    empty = [name for name, s in manifest["splits"].items() if s["count"] == 0]
    if "val" not in manifest["splits"] or "val" in empty:  # what `alexnet train` validates on by default
        print(f"  note: no validation images (no {'images in the ' if 'val' in empty else ''}val split): `alexnet "
              f"train` validates on one and will refuse; add SRC/val/<class>/ and run this again into a new OUT, or "
              f"train with --set data.val_split=<a split with images>")
    st = manifest["stats"]
    print(f"{len(manifest['classes'])} classes; {manifest['stats']['split']} mean RGB "
          f"{np.round(st['mean'], 1).tolist()}, PCA sqrt-eigenvalues {np.round(np.sqrt(st['eigval']), 1).tolist()}")
    if read_now is None:
        print(f"wrote {written:,} images in {elapsed:.0f} s ({written / max(elapsed, 1e-9):.0f} images/s) to {out}")
    else:  # resumed: the earlier run's shards took no time now
        print(f"wrote {written:,} images to {out}: {read_now:,} read in {elapsed:.0f} s by this run "
              f"({read_now / max(elapsed, 1e-9):.0f} images/s), the rest done by an earlier run")


def main(args) -> int:
    if args.out is None:
        if not args.verify:
            raise UserError("give SRC and OUT: the images to prepare and the folder to write (or --verify OUT "
                            "to check a prepared data set)")
        from .verify import verify_command
        verify_command(args.source)
        return 0
    prepare(args.source, args.out, Request(args.size, args.keep_aspect, args.raw, args.quality, args.decoder,
                                           args.resampler, args.source_kind, args.csv_columns, args.shard_size,
                                           args.workers), verify=args.verify)
    return 0
