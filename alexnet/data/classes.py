"""The 1000 ILSVRC-2012 classes in sorted-WNID order (n01440764 "tench" = 0 ... n15075141 = 999).

`ilsvrc2012_classes.tsv` holds index, WNID, a short name (torchvision's category names, with the two
duplicate "crane" and "maillot" classes told apart) and the WordNet lemmas of the devkit's meta.mat.
Sorted-WNID order is what ImageFolder, Caffe, Kaggle and Hugging Face use; the devkit's own
ILSVRC2012_ID order differs and is mapped to this one by the ILSVRC source (paper.md §2).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("ilsvrc2012_classes.tsv")


@dataclass(frozen=True)
class ClassInfo:
    id: str  # WNID, folder name or label as text
    name: str  # human-readable name

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name}


@functools.cache
def ilsvrc2012() -> tuple[ClassInfo, ...]:
    rows = [line.split("\t") for line in TABLE.read_text().splitlines() if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == list(range(1000)), "ilsvrc2012_classes.tsv is damaged"
    return tuple(ClassInfo(r[1], r[2]) for r in rows)


@functools.cache
def wnid_names() -> dict[str, str]:
    return {c.id: c.name for c in ilsvrc2012()}


def describe(class_ids: list[str]) -> list[ClassInfo]:
    """Class ids -> ClassInfo, naming the ILSVRC WNIDs; other ids are their own names."""
    names = wnid_names()
    return [ClassInfo(c, names.get(c, c)) for c in class_ids]
