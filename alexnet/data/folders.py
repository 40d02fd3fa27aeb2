"""Folders as people really have them: what is walked, followed, ignored and skipped, and why.

    found = walk("/data/imagenet/train/n01440764", root="/data/imagenet")
    found.files, found.skipped, found.ignored          # paths; [{path, reason}]; [{path, reason}]
    listing = list_folder(Path("/data/imagenet"))       # an ImageFolder tree (see sources.py)

The rules (README "Preparing data"):
- Followed: symbolic links to folders and files, as torchvision's ImageFolder follows them; a link
  that leads back to a folder above it (a loop) is reported and not entered again.
- Ignored, and counted in the summary: hidden entries (names starting with "."), macOS metadata
  (__MACOSX/ folders of zips made on a Mac, AppleDouble "._*" files), and the folders and files
  that file systems, NAS boxes and Windows leave behind (@eaDir, lost+found, Thumbs.db, ...).
- Skipped, with the reason: every other file that is not a sample: a broken link, a FIFO or
  device, a file beside the class folders (no label), a folder that cannot be read.
So every file is either a sample, or listed as skipped or ignored: found = written + skipped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .classes import describe
from .listing import SPLITS, Listing, Sample, class_order, split_name

SYSTEM_NAMES = {"__MACOSX", "@eaDir", "lost+found", "$RECYCLE.BIN", "System Volume Information",
                "Thumbs.db", "ehthumbs.db", "desktop.ini", "Desktop.ini", "Icon\r"}
SYSTEM = "system files and folders (__MACOSX, @eaDir, lost+found, Thumbs.db, ...)"
HIDDEN = "hidden entries (.*, incl. AppleDouble ._* files)"
LOOSE = "not inside a class folder"
LOOP = "symbolic link loop (leads back to a folder above it): not entered again"
LOOSE_HINT = ("{split}: {n} file(s) are not inside a class folder, so they have no label: sort them into "
              "<class>/ folders (ImageNet's flat val folder: by the devkit's "
              "ILSVRC2012_validation_ground_truth.txt), or prepare the official ILSVRC2012_img_val.tar "
              "with the devkit beside it")


def junk(name: str) -> str | None:
    """Why an entry is no part of any data set (SYSTEM or HIDDEN), or None when it may be."""
    if name in SYSTEM_NAMES:
        return SYSTEM
    if name.startswith("."):
        return HIDDEN
    return None


@dataclass
class Found:
    files: list[str] = field(default_factory=list)  # paths as walked (through links), sorted per folder
    skipped: list[dict] = field(default_factory=list)  # {path, reason}: inputs that are not samples
    ignored: list[dict] = field(default_factory=list)  # {path, reason}: junk, link loops


def walk(folder: str, root: str, found: Found | None = None) -> Found:
    """Every file below `folder`, recursively, following links; paths in reasons relative to root."""
    found = found if found is not None else Found()

    def rel(path: str) -> str:
        return os.path.relpath(path, root)

    def visit(path: str, ancestors: frozenset) -> None:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            found.skipped.append({"path": rel(path), "reason": f"cannot read this folder: {e.strerror or e}"})
            return
        for e in entries:
            why = junk(e.name)
            if why:
                found.ignored.append({"path": rel(e.path), "reason": why})
                continue
            try:
                is_dir, is_file = e.is_dir(), e.is_file()  # both follow links
                ident = _identity(e.path) if is_dir else None
            except OSError:
                is_dir = is_file = False
            if is_dir:
                if ident in ancestors:
                    found.ignored.append({"path": rel(e.path), "reason": LOOP})
                elif e.is_symlink():  # what lies above the link's target counts as above it too
                    visit(e.path, ancestors | _above(e.path))
                else:
                    visit(e.path, ancestors | {ident})
            elif is_file:
                found.files.append(e.path)
            elif e.is_symlink():
                found.skipped.append({"path": rel(e.path), "reason": "broken symbolic link (its target does not exist)"})
            else:
                found.skipped.append({"path": rel(e.path), "reason": "not a regular file (a FIFO, socket or device)"})

    # the folders above where `folder` sits count as above it too (it may itself be a link)
    location = _above(os.path.dirname(os.path.abspath(folder)))
    if _identity(folder) in location:
        found.ignored.append({"path": rel(folder), "reason": LOOP})
    else:
        visit(folder, _above(folder) | location)
    return found


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)  # follows links: the folder a link leads to
    return st.st_dev, st.st_ino


def _above(path: str) -> frozenset:
    """The identities of a folder and of every folder above its real path, up to /: a link to any
    of them would walk in a circle (or through the whole file system)."""
    real = Path(os.path.realpath(path))
    return frozenset(_identity(str(p)) for p in (real, *real.parents))


def subfolders(folder: Path | str, ignored: list[dict], root: Path | str) -> list[os.DirEntry]:
    """The non-junk folders directly in `folder` (links followed), sorted; junk goes to `ignored`."""
    out = []
    with os.scandir(folder) as it:
        for e in sorted(it, key=lambda e: e.name):
            why = junk(e.name)
            if why:
                ignored.append({"path": os.path.relpath(e.path, root), "reason": why})
            elif _is_dir(e):
                out.append(e)
    return out


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


def _loose_files(folder: Path | str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not junk(e.name) and not _is_dir(e)), key=lambda e: e.name)


def _loose_reason(e: os.DirEntry) -> str:
    return "broken symbolic link (its target does not exist)" if e.is_symlink() and not os.path.exists(e.path) else LOOSE


def list_folder(root: Path) -> Listing:
    """ImageFolder: split folders of class folders (ROOT/train/<class>/*, any of train, val(idation),
    test), or one split folder of class folders (ROOT/<class>/*), named after ROOT when that is a
    split name, else train. In a tree of split folders every split-named folder is a split, even
    one without class folders (its files are skipped as loose, with a hint); anything else beside
    the split folders is reported as ignored."""
    ignored: list[dict] = []
    children = subfolders(root, ignored, root)
    named: dict[str, os.DirEntry] = {}
    for d in children:
        if split_name(d.name) in SPLITS:
            named.setdefault(split_name(d.name), d)
    if any(subfolders(d.path, [], root) for d in named.values()):
        split_dirs = {name: d.path for name, d in named.items()}
        ignored += [{"path": d.name, "reason": "a folder beside the split folders (train, val, test): not read"}
                    for d in children if split_name(d.name) not in SPLITS]
        ignored += [{"path": d.name, "reason": f"a second folder for split {split_name(d.name)} (the first, "
                                               f"{named[split_name(d.name)].name}, is read)"}
                    for d in children if split_name(d.name) in SPLITS and named[split_name(d.name)] is not d]
        ignored += [{"path": e.name, "reason": "a file beside the split folders: not read"} for e in _loose_files(root)]
    else:  # ROOT/<class>/*: one split (its junk is recorded again below)
        name = split_name(root.name)
        split_dirs, ignored = {name if name in SPLITS else "train": str(root)}, []
    warnings: list[str] = []
    walked: dict[str, list[tuple[str, Found]]] = {}  # split -> [(class folder name, what it holds)]
    skipped: dict[str, list[dict]] = {}
    for name, folder in sorted(split_dirs.items()):
        walked[name] = [(d.name, walk(d.path, str(root))) for d in subfolders(folder, ignored, root)]
        # loose files beside the class folders have no label
        skipped[name] = [{"path": os.path.relpath(e.path, root), "reason": _loose_reason(e)} for e in _loose_files(folder)]
        if skipped[name]:
            warnings.append(LOOSE_HINT.format(split=name, n=len(skipped[name])))
    class_ids = class_order({c for classes in walked.values() for c, _ in classes})
    index = {c: i for i, c in enumerate(class_ids)}
    splits = {}
    for name, classes in walked.items():
        splits[name] = sorted((Sample(os.path.relpath(f, root), index[c], f) for c, found in classes for f in found.files),
                              key=lambda s: s.key)
        skipped[name] = sorted(skipped[name] + [s for _, found in classes for s in found.skipped], key=lambda s: s["path"])
        ignored += [i for _, found in classes for i in found.ignored]
    return Listing("folder", str(root), describe(class_ids), splits, skipped, ignored, warnings)
