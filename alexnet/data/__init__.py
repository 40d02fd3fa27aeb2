"""The data path: sources (the formats people have) -> prepare (decode, §2 resize, store) -> the loader.

    sources.py  list the samples of an ImageFolder tree, the Kaggle layout or a CSV list, with
                labels in sorted-WNID order; archives.py: the ILSVRC-2012 tars and WebDataset shards;
                parquet.py: Hugging Face's Parquet shards
    folders.py  what a folder holds: links followed, system files ignored, every file accounted for
    decode.py   bytes -> RGB image (any mode, EXIF-rotated) -> shorter side S, centre crop
    store.py    the prepared format: WebDataset-compatible tar shards + an index; writer and reader
    classes.py  the 1000 ILSVRC-2012 classes (WNID, name) shipped with the package
"""
