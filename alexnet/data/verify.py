"""Check a prepared data set against its manifest: what `alexnet prepare --verify OUT` reports and
what `alexnet prepare SRC OUT` rebuilds.

    alexnet prepare --verify prepared/imagenet       # every file's SHA-256; exit 2 naming the damage
    damage = verify.check(open_prepared(out), checksums=True)   # [Damage(file, problem, split, shard, samples)]

Cheap checks (always): every shard is there with the size the manifest records, each split's index,
keys.txt (format 2) and the statistics have their recorded SHA-256 (small files, read in full).
With `checksums`: every shard's SHA-256 too (reading the whole data set once, at disk speed), and in
a shard that differs, each sample's bytes against the checksum (XXH3-64) of its index row, so that the report
names the damaged images (format 2; format 1 indexes hold no per-sample checksum).
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fileio import FolderLock, sha256_file
from . import store

SHOWN = 10  # damaged samples named per shard; the rest are counted


@dataclass
class Damage:
    file: str  # relative to the data set's folder: "train/train-00003.tar", "train/index.npy", "stats.npz"
    problem: str  # what is wrong, in words
    split: str | None = None  # None: the statistics
    shard: int | None = None  # the shard's number within its split; None: the split's index
    samples: list[str] | None = None  # "i (key)" of each sample whose bytes differ; None: not looked at

    def line(self) -> str:
        text = f"{self.file}: {self.problem}"
        if self.samples:
            more = len(self.samples) - SHOWN
            text += f"; damaged sample(s): {', '.join(self.samples[:SHOWN])}" + (f" and {more} more" if more > 0 else "")
        elif self.samples == []:
            text += "; every sample's bytes are intact (the damage is in the tar's headers or label members)"
        return text


def damaged_samples(file: Path, index: np.ndarray, shard: int, keys: list[str]) -> list[str]:
    """The samples of one shard whose stored bytes are cut off or differ from their checksum."""
    rows = np.flatnonzero(index["shard"] == shard)
    out = []
    with open(file, "rb") as f:
        size = f.seek(0, 2)
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        for i in rows.tolist():
            start, n = int(index[i]["offset"]), int(index[i]["size"])
            if start + n > size or store.checksum(m[start:start + n]) != int(index[i]["xxh3"]):
                out.append(f"{i} ({keys[i] if i < len(keys) else '?'})")
    return out


def check(ds: store.PreparedDataset, checksums: bool = False, progress: bool = False) -> list[Damage]:
    """Everything about `ds` that disagrees with its manifest (empty when all is well)."""
    from tqdm import tqdm

    m, root = ds.manifest, ds.root
    out = []
    total = sum(s["bytes"] for info in m["splits"].values() for s in info["shards"]) if checksums else 0
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="verify", disable=not (progress and checksums))
    with bar:
        for name, info in m["splits"].items():
            problem = store.index_problem(root / name / "index.npy", info, m["format_version"])
            if problem:
                out.append(Damage(f"{name}/index.npy", problem, name))
            if "keys_sha256" in info and _sha256(root / name / "keys.txt") != info["keys_sha256"]:
                out.append(Damage(f"{name}/keys.txt", "SHA-256 differs from the manifest", name))
            index = None if problem else np.load(root / name / "index.npy", mmap_mode="r")
            per_sample = checksums and index is not None and "xxh3" in index.dtype.names
            keys = None
            for k, shard in enumerate(info["shards"]):
                file = root / shard["file"]
                problem = store.shard_problem(file, shard)
                if problem is None and checksums and sha256_file(file) != shard["sha256"]:
                    problem = "SHA-256 differs from the manifest"
                bar.update(shard["bytes"])
                if problem is None:
                    continue
                samples = None
                if per_sample and problem != "missing":
                    if keys is None:
                        keys = _keys(root / name / "keys.txt")
                    samples = damaged_samples(file, index, k, keys)
                out.append(Damage(shard["file"], problem, name, k, samples))
    problem = store.stats_problem(root / "stats.npz", m["stats"])
    if problem:
        out.append(Damage("stats.npz", problem))
    return out


def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _keys(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def verify_command(folder: str | Path, progress: bool = True) -> None:
    """`alexnet prepare --verify OUT`: check every file; print the damage and raise UserError (exit 2)
    naming it, or print that the data set checks out."""
    ds = store.open_prepared(folder)  # a missing or damaged manifest is an error already
    root, m = ds.root, ds.manifest
    with FolderLock(root, "prepared data set", shared=True):  # not while a prepare rewrites it
        damage = check(ds, checksums=True, progress=progress)
    shards = sum(len(info["shards"]) for info in m["splits"].values())
    if not damage:
        mb = sum(info["bytes"] for info in m["splits"].values()) / 1e6
        note = ("" if m["format_version"] >= 2 else
                f" (format {m['format_version']}: samples carry no checksums, so a damaged shard cannot be narrowed "
                f"down to its images; prepare into a new folder to get them)")
        print(f"{root} checks out against its manifest (SHA-256): {shards} shard(s) of {mb:,.1f} MB, "
              f"{len(m['splits'])} index(es) and the statistics{note}")
        return
    for d in damage:
        print(f"damaged: {d.line()}")
    names = ", ".join(d.file for d in damage[:3]) + (" ..." if len(damage) > 3 else "")
    raise UserError(f"{root}: {len(damage)} damaged file(s) ({names}); run `alexnet prepare "
                    f"{m['source']['path']} {root}` to rebuild them")
