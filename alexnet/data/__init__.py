"""The data path: sources (the formats people have) -> prepare (decode, §2 resize, store) -> the loader.
Each module imports only modules listed above it, and from outside the package only alexnet.errors,
alexnet.fileio and alexnet.process (tests/test_layers.py: no import circle, nothing from above, no
private names).

    classes.py   the 1000 ILSVRC-2012 classes (WNID, name) shipped with the package
    layouts.py, textfile.py, decode.py   the layouts' one-line hints; user text files; bytes -> RGB
                 image (any mode, EXIF-rotated) -> shorter side S, centre crop
    listing.py   what every reader returns: Sample, Listing, and the label, split and key rules
    folders.py   ImageFolder trees: links followed, system files ignored, every file accounted for
    tars.py, ilsvrc.py, webdataset.py, kaggle.py, csvlist.py, parquet.py   one module per format
    sources.py   the registry: a source's kind detected, listed by its reader, any sample's bytes read
    store.py     the prepared format: WebDataset-compatible tar shards + an index; writer and reader
    codecs.py, verify.py   the decoder/resampler pairs; checking a prepared set against its manifest
    shards.py    prepare's worker side: one shard read, decoded, resized, stored and summed
    prepare.py   `alexnet prepare`: the plan, resume, repair and assembly of the shards
    synthetic.py the built-in data set, generated and prepared on first use
    augment.py, resident.py, loader.py   augmentation, data on the device, the training loader
"""
