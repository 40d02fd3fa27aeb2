"""The layouts `alexnet prepare` reads, in one sentence each: for its --help and its errors. Kept
free of imports, so that `alexnet --help` stays instant."""

HINTS = {
    "folder": "ROOT/train/<class>/<image>, ROOT/val/<class>/<image>, or ROOT/<class>/<image>",
    "ilsvrc": "a folder with ILSVRC2012_img_train.tar and/or ILSVRC2012_img_val.tar (the latter with "
              "ILSVRC2012_devkit_t12.tar.gz), or one of those files",
    "kaggle": "ILSVRC/Data/CLS-LOC/train/<wnid>/, ILSVRC/Data/CLS-LOC/val/, LOC_val_solution.csv "
              "and LOC_synset_mapping.txt",
    "webdataset": "a .tar shard or a folder of them holding <key>.jpg (or .png, ...) and <key>.cls "
                  "members; the split is read from the shard names",
    "csv": "a .csv or .tsv file of path,label[,split] rows, paths relative to the file",
    "parquet": "a .parquet file or a folder of them (or of data/*.parquet) with an image column "
               "({bytes, path} or bytes) and an integer label column, as Hugging Face publishes them",
}
