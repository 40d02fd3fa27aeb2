"""Tar archives read in place: members as byte ranges of the file itself, never extracted.

    with open_tar(path) as tar:
        files, skipped = tar_members(tar, path.name)    # regular files by name; [{path, reason}]

Tars are opened uncompressed and seekable, so a member's data offset is a byte offset in the file
itself: each image becomes a Sample(path, offset, size) that any worker can read with one seek. The
ILSVRC-2012 tars (ilsvrc.py) and WebDataset shards (webdataset.py) are read this way.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from ..errors import UserError

TRUNCATED = "member data runs past the end of the archive (truncated download)"  # a skip reason


def open_tar(path: Path) -> tarfile.TarFile:
    """`path` opened for reading as an uncompressed tar; UserError when it is not one (compressed,
    damaged)."""
    # plain "r:" (seekable, uncompressed): member offsets are then byte offsets in the file itself
    try:
        return tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"cannot read {path} as an uncompressed tar archive ({e}); "
                        "a compressed or damaged download has to be fetched again") from e


def tar_members(tar: tarfile.TarFile, prefix: str) -> tuple[list[tarfile.TarInfo], list[dict]]:
    """(regular files sorted by name, skipped entries). Folders are structure, not inputs; links and
    devices have no bytes of their own. A truncated archive keeps the members before the cut (the
    cut one is caught by its extent) and is itself reported, as the members after it are lost."""
    files, skipped = [], []
    try:
        for m in tar:
            if m.isfile():
                files.append(m)
            elif not m.isdir():
                skipped.append({"path": f"{prefix}/{m.name}", "reason": "not a regular file (a link?)"})
    except tarfile.TarError as e:
        skipped.append({"path": prefix, "reason": f"the archive ends early or is damaged ({e}); "
                                                  "the members after the last one listed are lost"})
    return sorted(files, key=lambda m: m.name), sorted(skipped, key=lambda e: e["path"])
