"""The `alexnet` command: every subcommand's flags in one place, dispatched lazily.

    alexnet --version
    alexnet info --model alexnet2012
    alexnet train --preset paper --set optim.lr=0.02 --print-config

Each subcommand's handler lives in its own module (`alexnet.<module>:main(args) -> exit status`)
and is imported only when run, so `--help` answers without loading torch. Mistakes a user can fix
(a bad flag value, a missing file, an unknown preset or model) print one line to stderr and exit
with status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from . import __version__
from .errors import UserError

# command -> (handler "module:function", or None while the command is unwritten; the tracker entry an
# unwritten command arrives with, None for one that is written; one-line help)
COMMANDS: dict[str, tuple[str | None, int | None, str]] = {
    "prepare": ("alexnet.data.prepare:main", None, "convert ImageNet-style data (folders, ILSVRC tars, Kaggle, "
                                                   "WebDataset, CSV, Parquet) to the fast prepared format"),
    "train": ("alexnet.train:main", None, "train a network (the paper's recipe, torchvision's, or the fast one)"),
    "evaluate": ("alexnet.evaluate:main", None, "top-1/top-5 error of checkpoints (centre crop or the paper's 10 views)"),
    "predict": ("alexnet.predict:main", None, "top-k classes of image files"),
    "features": ("alexnet.features:main_features", None, "fc7 feature vectors of a data set"),
    "neighbors": ("alexnet.features:main_neighbors", None, "nearest training images in fc7 space (the paper's Fig. 4, right)"),
    "filters": ("alexnet.plots:main", None, "draw the conv1 kernels (the paper's Fig. 3)"),
    "export": ("alexnet.export:main", None, "export a checkpoint to ONNX, TorchScript, torch.export (.pt2) or "
                                            "safetensors"),
    "serve": ("alexnet.serve.server:main", None, "a web page and HTTP API for predictions"),
    "bench": ("alexnet.bench:main", None, "measure speed against torchvision's reference pipeline"),
    "ablate": ("alexnet.ablate:main", None, "re-measure the paper's claims (LRN, pooling, towers, PCA colour, "
                                            "dropout, ReLU, 10 views) as a table with error bars"),
    "info": ("alexnet.info:main", None, "layer table of a network (the paper's Fig. 2), or this machine"),
}

# The default of every command's --workers, as alexnet.runtime.loader_workers computes it (kept here, in
# words, because the command line is parsed before torch is imported)
WORKERS_RULE = ("default: this process's share of the cores (cores / processes on the node) less one on a GPU; "
                "a quarter of the share on a CPU, where the network computes on the rest")

# Explicit flags of config-driven commands and the config keys they set (`--set` reaches all keys).
CONFIG_FLAGS = {
    "--data": ("data.path", "prepared data set folder (default: the built-in generated set)"),
    "--out": ("train.out", "run folder (default: runs/<date>-<preset>)"),
    "--model": ("model.name", "alexnet2012 | alexnet_owt"),
    "--epochs": ("train.epochs", "epochs to train"),
    "--minutes": ("train.minutes", "wall time of the whole command: the budget recipe chooses the network, crops and "
                                   "epochs by measuring this machine (alexnet.budget)"),
    "--batch-size": ("train.batch_size", "global batch: per device x world size x accumulation"),
    "--lr": ("optim.lr", "learning rate per optim.lr_batch images"),
    "--device": ("train.device", "auto | cpu | cuda | cuda:N | mps"),
    "--precision": ("train.precision", "fp32 | bf16 | fp16 (autocast) | auto (bf16 where native, else fp32)"),
    "--seed": ("train.seed", "seed of every random stream"),
    "--workers": ("data.workers", "loader processes (alexnet.runtime.loader_workers' " + WORKERS_RULE + ")"),
    "--init": ("train.init", "start from weights: torchvision | CKPT | a state-dict .pth (fine-tuning)"),
    "--freeze": ("train.freeze", "none | features (conv1..conv5) | all-but-head"),
}


def at_least(low: int):
    """An argparse type: an integer >= low, else a one-line usage error naming the value."""
    def parse(text: str) -> int:
        value = int(text)  # a ValueError reads "invalid int value: 'x'"
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), not usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="base recipe: paper | torchvision | fast | quick | finetune "
                                    "(default: quick on the built-in data, paper with --data)")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="TOML/YAML/JSON file of [section] key = value overrides (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.02 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for flag, (key, text) in CONFIG_FLAGS.items():
        p.add_argument(flag, dest="flag_" + key.replace(".", "__"), metavar=key.split(".")[1].upper(),
                       help=f"{text} [{key}]")


QUICK_START = """The 2012 ImageNet network (Krizhevsky, Sutskever, Hinton), end to end.

quick start:
  alexnet train                                      # the built-in data: a trained network in minutes on a CPU
  alexnet prepare PHOTOS prepared/mine               # your images (PHOTOS/train/<class>/..., PHOTOS/val/...)
  alexnet train --data prepared/mine --preset fast   # or --init torchvision --preset finetune
  alexnet predict photo.jpg --checkpoint runs/<run>/best.pt
  alexnet COMMAND --help                             # every command's options"""


def build_parser() -> Parser:
    debug = Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    parser = Parser(prog="alexnet", parents=[debug], description=QUICK_START,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, description: str = "", usage: str | None = None) -> Parser:
        text = COMMANDS[name][2]
        return sub.add_parser(name, parents=[debug], help=text, description=f"{text}.\n\n{description}".strip(),
                              usage=usage, formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("prepare", usage="alexnet prepare SRC OUT [options]\n       alexnet prepare --verify OUT",
                description="Per §2: shorter side to --size, centre crop, stored in shards with an index,\n"
                           "a manifest and training-set statistics (mean image, RGB covariance).\n\n"
                           "  alexnet prepare SRC OUT            # again over a finished OUT: re-check, rebuild damage\n"
                           "  alexnet prepare --verify OUT       # check every file, name the damage (exit 2)")
    from .data.layouts import HINTS
    p.epilog = "layouts of SRC (detected, or named with --source):\n" + "\n".join(
        textwrap.fill(f"{k}: {h}", 100, initial_indent="  ", subsequent_indent="      ") for k, h in HINTS.items())
    p.add_argument("source", metavar="SRC", help="data root, archive folder, shard folder (tar or Parquet) or CSV list")
    p.add_argument("out", metavar="OUT", nargs="?",
                   help="output folder of the prepared data set (`prepare --verify OUT`: the one to check)")
    p.add_argument("--verify", action="store_true",
                   help="check every file's SHA-256 against the manifest: alone (`--verify OUT`) name the damage "
                        "and exit 2; with SRC OUT rebuild what is damaged")
    p.add_argument("--source", dest="source_kind", default="auto",
                   choices=["auto", "folder", "ilsvrc", "kaggle", "webdataset", "csv", "parquet"],
                   help="layout of SRC (default: detected)")
    p.add_argument("--csv-columns", metavar="PATH,LABEL[,SPLIT]",
                   help="header names of the columns a CSV list is read from (default: recognised names, "
                        "else the first columns)")
    p.add_argument("--size", type=at_least(32), default=256, help="stored side S in px (default 256, §2)")
    p.add_argument("--keep-aspect", action="store_true",
                   help="keep the whole shorter-side-resized image (up to 4:1; longer ones keep their centre)")
    p.add_argument("--raw", action="store_true", help="store raw uint8 pixels instead of JPEG")
    p.add_argument("--quality", type=at_least(1), default=None, help="JPEG quality of the stored images")
    p.add_argument("--workers", type=at_least(0), default=None, help="processes (default: all cores; 0 or 1: in this process)")
    p.add_argument("--shard-size", type=at_least(1), default=None,
                   help="samples per shard (default: about 64 shards per split, 16..8192)")
    p.add_argument("--decoder", default="auto", choices=["auto", "pillow", "simplejpeg"],
                   help="JPEG decoder and encoder (default auto: simplejpeg from 2,000 images per worker, else "
                        "pillow; a resumed or re-checked OUT keeps its own)")
    p.add_argument("--resampler", default="auto", choices=["auto", "pillow", "torch"],
                   help="the antialiased bicubic resize (default auto: torch from 2,000 images per worker, where "
                        "its import pays, else pillow)")

    p = command("train", "Examples:\n  alexnet train                       # the built-in data set, on this machine\n"
                         "  alexnet train --data prepared/ --preset paper\n"
                         "  torchrun --nproc_per_node=8 -m alexnet train --data prepared/ --preset fast")
    add_config_flags(p)
    p.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                   help="continue from a checkpoint (default: the run folder's last)")

    p = command("evaluate", "Several checkpoints form an ensemble that averages their softmax (§6).")
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help="checkpoint files or run folders")
    p.add_argument("--checkpoint", dest="checkpoint_flag", action="append", default=[], metavar="CKPT",
                   help="the same as a CKPT (repeatable)")
    p.add_argument("--weights", help="'torchvision' (published AlexNet weights) or a .pth file")
    p.add_argument("--data", required=True, help="prepared data set or image folder")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--views", type=int, choices=[1, 2, 10], default=1,
                   help="1: centre crop; 2: and its reflection; 10: the paper's 10 views (§4.1)")
    p.add_argument("--batch-size", type=at_least(1), default=256, help="images per batch (default 256)")
    p.add_argument("--crop", type=at_least(32), metavar="PX",
                   help="side of the evaluation crops (default: the checkpoint's eval.crop, else its training crop)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (under torchrun: each rank's GPU)")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="loader processes (alexnet.runtime.loader_workers' " + WORKERS_RULE + ")")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="autocast dtype of the forward pass (default fp32, exact; auto: bf16 where native)")

    p = command("predict")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (recursive)")
    p.add_argument("--checkpoint", metavar="CKPT", help="checkpoint file or run folder (or first, before the images)")
    p.add_argument("--weights", help="'torchvision' or a .pth file, instead of --checkpoint")
    p.add_argument("--topk", type=at_least(1), default=5, help="classes per image (default 5)")
    p.add_argument("--views", type=int, choices=[1, 2, 10], default=1,
                   help="1: centre crop; 2: and its reflection; 10: the paper's 10 views (§4.1)")
    p.add_argument("--json", nargs="?", const="-", metavar="OUT", help="JSON to OUT (default stdout)")
    p.add_argument("--sheet", metavar="OUT.png", help="draw each image with its top-5 bars (Fig. 4, left)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="number format of the forward pass, the weights converted once (default fp32, exact; auto: bf16 where native)")

    p = command("features", "The fc7 codes (4096-d, after ReLU) of a split, as a memory-mapped .npy with a .json\n"
                            "(ids, labels, classes) beside it; an interrupted run continues where it stopped.")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help="checkpoint file or run folder (or --weights)")
    p.add_argument("--checkpoint", dest="checkpoint_flag", metavar="CKPT", help="the same as CKPT")
    p.add_argument("--weights", help="'torchvision' (published AlexNet weights) or a .pth file, instead of CKPT")
    p.add_argument("--data", required=True, help="prepared data set or image folder")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the vectors (.npy)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="loader processes (alexnet.runtime.loader_workers' " + WORKERS_RULE + ")")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="number format of the forward pass, the weights converted once (default fp32, exact; auto: bf16 where native)")

    p = command("neighbors")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help="checkpoint file or run folder (or --weights)")
    p.add_argument("--checkpoint", dest="checkpoint_flag", metavar="CKPT", help="the same as CKPT")
    p.add_argument("--weights", help="'torchvision' (published AlexNet weights) or a .pth file, instead of CKPT")
    p.add_argument("--data", required=True, help="prepared data set (its training split is searched)")
    p.add_argument("--query", nargs="+", required=True, metavar="IMAGE", help="query images")
    p.add_argument("--k", type=at_least(1), default=6, help="neighbours per query (default 6)")
    p.add_argument("--split", default="train", help="split searched (default train)")
    p.add_argument("--features", metavar="FILE", help="precomputed codes of that split (alexnet features)")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="loader processes (alexnet.runtime.loader_workers' " + WORKERS_RULE + ")")
    p.add_argument("--sheet", metavar="OUT.png", help="draw the queries and their neighbours")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="number format of the forward pass, the weights converted once (default fp32, exact; auto: bf16 where native)")

    p = command("filters")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help="checkpoint file or run folder")
    p.add_argument("--checkpoint", dest="checkpoint_flag", metavar="CKPT", help="the same as CKPT")
    p.add_argument("--out", default="conv1.png", metavar="PNG")

    p = command("export", "  alexnet export runs/x/best.pt model.onnx            # the format from the extension\n"
                          "  alexnet export --weights torchvision alexnet.pt   # .pt: TorchScript\n"
                          "  alexnet export runs/x/best.pt model.pt2             # torch.export, for torch.export.load\n"
                          "  alexnet export runs/x/best.pt model.safetensors     # the weights, readable as CKPT or --weights",
                usage="alexnet export CKPT OUT [--format onnx|torchscript|pt2|safetensors]\n"
                      "       alexnet export --weights W OUT")
    p.add_argument("paths", metavar="CKPT OUT", nargs="+", help="checkpoint file (or --weights) and the file to write")
    p.add_argument("--checkpoint", dest="checkpoint_flag", metavar="CKPT", help="the same as CKPT")
    p.add_argument("--weights", help="'torchvision' (published AlexNet weights) or a weights file (.pth, "
                                      ".safetensors), instead of CKPT")
    p.add_argument("--format", choices=["onnx", "torchscript", "pt2", "safetensors"],
                   help="default: from OUT's extension (.onnx: onnx; .pt, .pts, .torchscript: torchscript; "
                        ".pt2: pt2; .safetensors: safetensors)")

    p = command("serve", "Examples:\n  alexnet serve --checkpoint runs/x/best.pt      # then open http://127.0.0.1:8000/\n"
                         "  alexnet serve --checkpoint best.pt --features train_fc7.npy   # + nearest training images\n"
                         "  alexnet serve --weights torchvision --port 8080\n"
                         "  curl -F file=@photo.jpg 'http://127.0.0.1:8000/v1/predict?topk=5&views=10'")
    p.add_argument("checkpoint_pos", metavar="CKPT", nargs="?", help="the same as --checkpoint")
    p.add_argument("--checkpoint", metavar="CKPT", help="checkpoint file or run folder")
    p.add_argument("--weights", help="'torchvision' or a .pth file, instead of --checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; the API has "
                                                       "no authentication)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: a free one)")
    p.add_argument("--features", metavar="FILE", help="fc7 codes from alexnet features: the page shows the "
                                                      "nearest training images (Fig. 4, right)")
    p.add_argument("--data", help="where the training images of --features are (default: as recorded in its .json)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: cuda when present)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="number format of the forward pass, the weights converted once (default fp32: the same numbers as predict)")
    p.add_argument("--max-batch", type=int, default=32, help="requests per forward pass (default 32; 1: no batching; a views=10 request adds 10 crops)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="the longest a request waits for others to share its forward pass (default 5)")
    p.add_argument("--queue-size", type=int, default=64,
                   help="requests admitted at once; more are answered 503 with Retry-After (default 64)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default 20)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest image, width x height (default 50000000)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")

    p = command("bench", "Side by side in one run, against torchvision's reference on the same machine.")
    p.add_argument("what", choices=["data", "train", "infer", "feed"],
                   help="feed: the resident data path against streaming, and the step fed against the step alone")
    p.add_argument("--data", help="prepared data set (bench data, bench feed)")
    p.add_argument("--crop", type=at_least(1), default=None, help="crop side in px (bench feed; default min(224, size))")
    p.add_argument("--source", metavar="DIR", help="ImageFolder of the same images for the reference "
                                                    "(default: the folder the data set was prepared from)")
    p.add_argument("--device", default="auto", help="cpu | cuda (default: cuda when present)")
    p.add_argument("--batch-size", type=at_least(1), default=128)
    p.add_argument("--batches", type=at_least(1), default=30, help="timed batches per side (after 3 warm-up)")
    p.add_argument("--workers", type=at_least(0), default=None, help="loader processes, both sides (default: cores)")
    p.add_argument("--json", metavar="OUT", help="write the figures as JSON")

    p = command("ablate", "The baseline (alexnet2012 with LRN, dropout, PCA colour noise, overlapping pooling, two\n"
                          "towers and ReLUs) and one variant per claim, each changing one config key, N seeds each;\n"
                          "every run is an `alexnet train` folder in OUT, kept when finished and resumed when not.\n"
                          "Writes OUT/ablation.md, ablation.json, ablation.png and relu_tanh.png. Under torchrun,\n"
                          "the runs are spread over the ranks.\n\n"
                          "  alexnet ablate --data prepared/imagenette128 --epochs 8 --seeds 3 --out runs/ablate")
    p.add_argument("--data", required=True, help="prepared data set folder (alexnet prepare)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="epochs per run (default 8)")
    budget.add_argument("--budget-minutes", type=float, metavar="M", help="training minutes per run instead")
    p.add_argument("--seeds", type=int, default=3, help="runs per configuration (default 3)")
    p.add_argument("--only", metavar="CLAIMS", help="comma-separated subset of: lrn, overlap, towers, pca, dropout, "
                                                    "relu, views (default: all; the baseline always runs)")
    p.add_argument("--out", default="runs/ablate", metavar="DIR", help="folder of the runs and outputs "
                                                                         "(default runs/ablate)")
    p.add_argument("--preset", help="recipe of the baseline (default: fast, scaled to a small CPU)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="adjust the baseline, e.g. --set model.width=1 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print every run's command and stop")

    p = command("info", "Without --model: versions, devices and threads of this machine.")
    p.add_argument("--model", help="alexnet2012 | alexnet_owt")
    p.add_argument("--input-size", type=at_least(1), default=224, help="input side in px (default 224)")
    p.add_argument("--num-classes", type=at_least(2), default=1000)
    p.add_argument("--norm", choices=["lrn", "batchnorm", "none"], help="default: the variant's own")
    p.add_argument("--parallel", choices=["data", "towers"], default="data",
                   help="towers: what each of two devices holds and sends when alexnet2012's towers are split "
                        "(model.parallel=towers, §3.2), beside data parallelism's all-reduce")
    p.add_argument("--batch", type=at_least(1), help="with --parallel towers: images per step per "
                   "pair of devices (default 128, the paper's)")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="with --parallel towers: the number format of what crosses (default fp32)")
    p.add_argument("--json", metavar="OUT", help="also write the table as JSON")
    return parser


def resolve_config(args: argparse.Namespace):
    """The Config of a config-driven command: preset < --config files < --set < explicit flags.
    With no preset and no data named anywhere, `train` uses the built-in data set's preset, quick."""
    from . import config

    flags = {flag: (key, getattr(args, "flag_" + key.replace(".", "__")))
             for flag, (key, _) in CONFIG_FLAGS.items()}
    preset = args.preset
    if preset is None and args.flag_data__path is None and not args.config \
            and not any(a.replace(" ", "").startswith("data.path=") for a in args.set):
        preset = "quick"
    return config.resolve(preset, files=args.config, sets=args.set, flags=flags)


def run(args: argparse.Namespace) -> int:
    target, issue, _ = COMMANDS[args.command]
    if hasattr(args, "print_config"):
        args.cfg = resolve_config(args)
        if args.print_config:
            from . import config
            print(config.dump(args.cfg), end="")
            return 0
    if target is None:
        arrives = f" (it arrives with issue #{issue})" if issue is not None else ""
        print(f"alexnet {args.command}: not implemented yet{arrives}", file=sys.stderr)
        return 1
    module, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)(args) or 0
    finally:
        # only a command that imported torch.distributed can hold a process group; importing it
        # here otherwise would add torch's start-up (~1.5 s) to every `alexnet prepare`
        if "torch.distributed" in sys.modules:
            from . import distributed
            distributed.shutdown()


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt", ".safetensors")


def run_folder_checkpoint(path: str) -> str:
    """A run folder named where a checkpoint is wanted: its best.pt (else last.pt), said on stderr."""
    from pathlib import Path
    folder = Path(path)
    if not folder.is_dir():
        return path
    for name, what in (("best.pt", "its best validation top-1"), ("last.pt", "its last checkpoint")):
        if (folder / name).is_file():
            print(f"using {folder / name} ({what}) for the run folder {folder}", file=sys.stderr)
            return str(folder / name)
    raise UserError(f"{folder} is a folder without best.pt or last.pt: give a checkpoint file or a run folder of "
                    f"alexnet train")


def checkpoint_forms(args: argparse.Namespace) -> None:
    """One way to name a checkpoint everywhere: CKPT as a positional or as
    --checkpoint in every command, and a run folder for its best.pt."""
    from pathlib import Path
    flag = getattr(args, "checkpoint_flag", None)
    if isinstance(flag, list):  # evaluate: any number, either form
        args.checkpoints = list(args.checkpoints) + flag
    elif flag:
        if hasattr(args, "paths"):  # export: CKPT OUT
            args.paths = [flag, *args.paths]
        elif getattr(args, "checkpoint", None):
            raise UserError(f"give the checkpoint once: {args.checkpoint} and --checkpoint {flag}")
        else:
            args.checkpoint = flag
    if getattr(args, "checkpoint_pos", None):  # serve CKPT
        if args.checkpoint:
            raise UserError(f"give the checkpoint once: {args.checkpoint_pos} and --checkpoint {args.checkpoint}")
        args.checkpoint = args.checkpoint_pos
    if args.command == "predict" and not args.checkpoint and not args.weights and len(args.inputs) > 1:
        first = Path(args.inputs[0])  # `predict CKPT photo.jpg`, as the other commands take it
        if first.name.endswith(CHECKPOINT_SUFFIXES) or (first.is_dir() and (first / "best.pt").is_file()):
            args.checkpoint, args.inputs = str(first), args.inputs[1:]
    if getattr(args, "checkpoint", None):
        args.checkpoint = run_folder_checkpoint(args.checkpoint)
    if getattr(args, "checkpoints", None):
        args.checkpoints = [run_folder_checkpoint(c) for c in args.checkpoints]
    if hasattr(args, "paths") and len(args.paths) == 2:
        args.paths[0] = run_folder_checkpoint(args.paths[0])


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # positionals typed after options (`export CKPT --format onnx OUT`), else a usage error
        if hasattr(args, "paths") and not any(a.startswith("-") for a in extra):
            args.paths += extra
        else:  # named after the subcommand, with its help
            print(f"alexnet {args.command}: error: unrecognized arguments: {' '.join(extra)} "
                  f"(see alexnet {args.command} --help)", file=sys.stderr)
            raise SystemExit(2)
    try:
        checkpoint_forms(args)
        return run(args)
    except UserError as e:
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(e).split())  # always one line
        print(f"alexnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
