"""`alexnet ablate`: the paper's design claims re-measured side by side, with their spread over seeds.

    alexnet prepare ~/data/imagenette2 prepared/imagenette128 --size 128
    alexnet ablate --data prepared/imagenette128 --epochs 8 --seeds 3 --out runs/ablate
    alexnet ablate --data prepared/imagenette128 --budget-minutes 2 --only lrn,dropout --seeds 2
    torchrun --nproc_per_node=8 -m alexnet ablate --data prepared/imagenet --epochs 30 --out runs/ablate

The claims (`CLAIMS`): response normalisation (§3.3), overlapping pooling (§3.4), two towers against
a one-tower net with half the kernels (§3.2), PCA colour augmentation (§4.1), dropout (§4.2), ReLU
against tanh (§3.1, Figure 1) and 10-view testing (§6). Each trained variant changes exactly one
config key of the baseline; 10 views need no training: the baseline's own checkpoints are evaluated
with 1 and 10 views (`alexnet evaluate --views 1|10`).

The baseline. The claims are about LRN, dropout, PCA colour noise, overlapping 3x3/2 pooling, two
towers and ReLUs, so the baseline must have all of them whatever the recipe: alexnet2012 with
model.norm=lrn (not the batch norm of the fast recipe: without LRN in the baseline the lrn variant
would compare batch norm with nothing), model.dropout=0.5, data.pca_std=0.1, pooling overlap,
towers 2, activation relu (`PREREQUISITES`). Without --preset the recipe around it is the fast one
scaled to a small CPU (`SMALL_CPU`, as benchmarks/imagenette_budget.py): a half-width network with
1024-unit FC layers, bf16 autocast where the CPU has it, batch 128, the paper's lr 0.01 (§5; the
fast recipe's 0.04 is for batch norm: on Imagenette the LRN baseline's loss sat at ln 10, chance,
from the third epoch on), a 1-epoch warm-up and a linear decay to 0 at the end of the budget,
crops of 7/8 of the prepared size (224 of 256 in the paper; 112 of 128), and the paper's
per-pixel mean image on the 0-255 scale (§2) rather than per-channel standardisation, because
LRN's constants (k=2, alpha=1e-4) assume the paper's activation scale: on unit-scale inputs LRN is
close to a constant factor. With --preset P the recipe is P's, with
the prerequisites applied; --set adjusts anything last. Validation runs only at the end.

Every run is an `alexnet train` run folder, DIR/<variant>-seed<k>, made by the command printed in
ablation.md (`alexnet train --config DIR/baseline.yaml --set KEY=VALUE --seed k --out ...`), run
as a child process with torchrun's variables removed. Seeds pair the runs: the baseline and every
variant with seed k start from the same seed (initialisation stream, data order, augmentation).
Resuming: a run folder with summary.json is kept and skipped; one without continues from its
checkpoint (`alexnet train` resumes a folder that holds last.pt); a folder trained with another
configuration is an error, never mixed in. Ctrl-C or SIGTERM reach the running child, which saves
a checkpoint; the same command resumes.

Under torchrun (WORLD_SIZE > 1), rank r trains runs i with i % world == r, one at a time, each in its
own single-process child (on CUDA pinned to its GPU with CUDA_VISIBLE_DEVICES; on a CPU with
torchrun's OMP_NUM_THREADS, 1 unless set, so that the processes share the cores); rank 0 waits for
every run's summary.json (or failure record), evaluates the views and writes the outputs. No process
group is formed: the ranks meet through the run folders.

Output in DIR (alexnet.ablate_report): ablation.md, ablation.json, ablation.png (effects with error
bars) and relu_tanh.png (Figure 1: training error against epochs).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import ablate_report
from . import config as config_mod
from .errors import UserError


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: the feature the baseline has, and the variant without it."""

    name: str  # the variant's name (folder prefix, --only)
    section: str
    feature: str  # what the baseline has and the variant lacks
    key: str | None  # the one config key the variant changes; None: an evaluation-only variant
    value: str | None  # its value in the variant
    paper: str  # the paper's figure, as the paper states it
    paper_top1: float | None = None  # points of top-1 error the feature is worth in the paper
    paper_top5: float | None = None


CLAIMS: tuple[Claim, ...] = (
    Claim("lrn", "§3.3", "local response normalisation", "model.norm", "none",
          "-1.4 / -1.2 points top-1 / top-5", 1.4, 1.2),
    Claim("overlap", "§3.4", "overlapping pooling, 3x3/2 (vs 2x2/2)", "model.pooling", "nonoverlap",
          "-0.4 / -0.3 points", 0.4, 0.3),
    Claim("towers", "§3.2", "two towers (vs one tower, half the kernels)", "model.towers", "1",
          "-1.7 / -1.2 points", 1.7, 1.2),
    Claim("pca", "§4.1", "PCA colour augmentation", "data.pca_std", "0",
          "over -1 point top-1", 1.0, None),
    Claim("dropout", "§4.2", "dropout 0.5 on fc6/fc7", "model.dropout", "0",
          "prevents substantial overfitting; ~2x the iterations to converge"),
    Claim("relu", "§3.1", "ReLU units (vs tanh)", "model.activation", "tanh",
          "25% training error 6x sooner (CIFAR-10, 4-layer net, Fig. 1)"),
    Claim("views", "§6", "10-view testing (vs the centre crop)", None, None,
          "-1.5 / -1.3 points (ILSVRC-2010 test: 37.5 / 17.0 vs 39.0 / 18.3)", 1.5, 1.3),
)
CLAIM_NAMES = tuple(c.name for c in CLAIMS)

BASE_PRESET = "fast"
SMALL_CPU = {  # without --preset, on top of the fast preset (see the module docstring)
    "model.width": "0.5", "model.hidden": "1024", "data.mean": "pixel", "train.batch_size": "128",
    "optim.lr": "0.01", "optim.lr_batch": "128", "optim.weight_decay": "5e-4", "schedule.warmup_epochs": "1",
}
PREREQUISITES = {  # what the claims are about, in the baseline whatever the recipe
    "model.name": "alexnet2012", "model.norm": "lrn", "model.dropout": "0.5", "model.pooling": "overlap",
    "model.towers": "2", "model.activation": "relu", "data.pca_std": "0.1", "eval.views": "1",
}
DEFAULT_EPOCHS = 8  # per run, when neither --epochs nor --budget-minutes is given
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class AblationRun:
    """One `alexnet train` run of the ablation."""

    claim: str  # "baseline" or a claim's name
    seed: int
    folder: Path
    args: list[str]  # after `alexnet train`
    cfg: config_mod.Config = field(repr=False)

    @property
    def name(self) -> str:
        return self.folder.name

    def command(self) -> str:
        return "alexnet train " + " ".join(self.args)


@dataclass
class Plan:
    out: Path
    data: Path
    baseline: config_mod.Config
    claims: list[Claim]
    seeds: list[int]
    runs: list[AblationRun]
    budget: dict  # {"epochs": E} or {"minutes": M}


# ------------------------------------------------------------------------------------ the plan

def parse_only(only: str | None) -> list[Claim]:
    if not only:
        return list(CLAIMS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLAIM_NAMES]
    if unknown or not names:
        raise UserError(f"--only {only!r}: unknown claim(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(CLAIM_NAMES)}")
    return [c for c in CLAIMS if c.name in names]


def default_crop(size: int) -> int:
    """7/8 of the prepared size (224 of 256, §4.1), a multiple of 8, at least 64 px (the network's
    smallest input) and at most the size."""
    return min(size, max(64, size * 7 // 8 // 8 * 8))


def baseline_config(data: Path, preset: str | None, sets: list[str], epochs: int | None,
                    minutes: float | None) -> tuple[config_mod.Config, dict]:
    """The baseline's resolved config (train.out unset, train.seed the first seed), and the budget."""
    from .data.store import open_prepared

    if not (data / "manifest.json").is_file():
        raise UserError(f"--data {data}: not a prepared data set (no manifest.json); make one with "
                        f"`alexnet prepare SRC {data}`")
    ds = open_prepared(data)
    base = {}
    if preset is None:
        base = {**SMALL_CPU, "data.crop": str(default_crop(ds.size))}
    if minutes is not None:
        budget, run_epochs = {"minutes": minutes}, 1000  # the clock ends the run and drives the decay
    else:
        budget = {"epochs": epochs or DEFAULT_EPOCHS}
        run_epochs = budget["epochs"]
    warmup = float(base.get("schedule.warmup_epochs", config_mod.preset(preset or BASE_PRESET).schedule.warmup_epochs))
    base.update(PREREQUISITES)
    base.update({"data.path": str(data.resolve()), "train.epochs": str(run_epochs), "eval.every": str(run_epochs),
                 "train.budget_minutes": "none" if minutes is None else str(minutes),
                 "schedule.warmup_epochs": str(min(warmup, run_epochs / 4))})
    cfg = config_mod.resolve(preset or BASE_PRESET, sets=[f"{k}={v}" for k, v in base.items()] + list(sets))
    if cfg.train.out is not None:
        raise UserError("--set train.out: ablate names every run's folder itself (use --out DIR)")
    return cfg, budget


def config_diff(a: config_mod.Config, b: config_mod.Config, ignore=("train.out",)) -> dict[str, tuple]:
    """{dotted key: (a's value, b's value)} for every key that differs."""
    da, db = config_mod.to_dict(a), config_mod.to_dict(b)
    diff = {}
    for section, values in da.items():
        if not isinstance(values, dict):
            if values != db[section] and section not in ignore:
                diff[section] = (values, db[section])
            continue
        for key, value in values.items():
            if value != db[section][key] and f"{section}.{key}" not in ignore:
                diff[f"{section}.{key}"] = (value, db[section][key])
    return diff


def make_plan(data: str | Path, out: str | Path, *, seeds: int = 3, only: str | None = None,
              epochs: int | None = None, minutes: float | None = None, preset: str | None = None,
              sets: list[str] = (), write: bool = True) -> Plan:
    """Every run of the ablation, its command and its config, resolved exactly as `alexnet train`
    resolves the command (from DIR/baseline.yaml, written here)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    if minutes is not None and minutes <= 0:
        raise UserError(f"--budget-minutes must be positive, got {minutes}")
    out, data = Path(out), Path(data)
    claims = parse_only(only)
    baseline, budget = baseline_config(data, preset, list(sets), epochs, minutes)
    if any(c.name == "views" for c in claims) and json.loads((data / "manifest.json").read_text())["options"].get(
            "keep_aspect"):
        raise UserError(f"{data} keeps aspect ratios (alexnet prepare --keep-aspect): the views claim evaluates "
                        f"the paper's 10 views of centre-cropped images; prepare it without --keep-aspect or "
                        f"leave views out with --only")
    yaml_path = out / "baseline.yaml"
    first = baseline.train.seed
    seed_list = list(range(first, first + seeds))
    runs = []
    for seed in seed_list:  # seed by seed, so that a partial ablation is balanced
        for claim in [None, *[c for c in claims if c.key is not None]]:
            name = "baseline" if claim is None else claim.name
            folder = out / f"{name}-seed{seed}"
            change = [] if claim is None else ["--set", f"{claim.key}={claim.value}"]
            args = ["--config", str(yaml_path), *change, "--seed", str(seed), "--out", str(folder)]
            cfg = config_mod.from_dict(config_mod.to_dict(baseline))
            if claim is not None:
                config_mod.apply(cfg, {claim.key: claim.value}, source=f"the {name} variant")
            config_mod.apply(cfg, {"train.seed": seed, "train.out": str(folder)}, source="ablate")
            config_mod.validate(cfg)
            runs.append(AblationRun(name, seed, folder, args, cfg))
    for claim in claims:
        if claim.key is not None:
            variant = next(r for r in runs if r.claim == claim.name)
            base = next(r for r in runs if r.claim == "baseline" and r.seed == variant.seed)
            if list(config_diff(base.cfg, variant.cfg)) != [claim.key]:
                raise UserError(f"the baseline already has {claim.key}={claim.value}: the {claim.name} variant "
                                f"would change nothing; change the baseline or leave it out with --only")
    plan = Plan(out, data.resolve(), baseline, claims, seed_list, runs, budget)
    if write:
        write_baseline(plan)
    return plan


def write_baseline(plan: Plan) -> Path:
    """DIR/baseline.yaml, the --config of every run's command."""
    from .fileio import atomic_write
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write(plan.out / "baseline.yaml", config_mod.dump(plan.baseline).encode())
    return plan.out / "baseline.yaml"


# ------------------------------------------------------------------------------------ running

def child_env(local_rank: int | None = None) -> dict[str, str]:
    """This environment without torchrun's variables (each run is a world of one), with this
    package first on PYTHONPATH, and on CUDA machines under torchrun the rank's own GPU."""
    env = {k: v for k, v in os.environ.items()
           if k not in TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC_")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    if local_rank is not None:
        from . import runtime
        device = runtime.pick_device("auto", local_rank)  # this rank's GPU (alexnet.runtime), or the CPU
        if device.type == "cuda":
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(device.index + 1)]
            env["CUDA_VISIBLE_DEVICES"] = ids[device.index]
    return env


def run_state(run: AblationRun) -> str:
    """"done" (summary.json), "failed" (a failure record, no summary), "partial" (a folder without a
    summary: interrupted, to be resumed) or "new"; a folder of another configuration is an error."""
    if (run.folder / "config.yaml").is_file():
        import yaml
        saved = config_mod.from_dict(yaml.safe_load((run.folder / "config.yaml").read_text()),
                                     source=str(run.folder / "config.yaml"))
        diff = config_diff(saved, run.cfg)
        if diff:
            key, (theirs, ours) = next(iter(diff.items()))
            raise UserError(f"{run.folder} was trained with another configuration ({key}: {theirs!r}, now "
                            f"{ours!r}{f', and {len(diff) - 1} more key(s)' if len(diff) > 1 else ''}); "
                            f"use another --out, or the same data, budget, preset and --set as before")
    if (run.folder / "summary.json").is_file():
        return "done"
    if (run.folder / "failed.json").is_file():
        return "failed"
    return "partial" if run.folder.is_dir() else "new"


def last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    return (errors or lines or ["(no output)"])[-1][:400]


def execute(argv: list[str], log: Path, env: dict[str, str]) -> int:
    """Run a child `python -m alexnet ...`, its output appended to `log`. Ctrl-C reaches the child
    too (same process group) and SIGTERM is passed on: the child saves a checkpoint; then this
    raises KeyboardInterrupt."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n$ alexnet {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "alexnet", *argv], stdout=f, stderr=subprocess.STDOUT, env=env)
        terminated = []

        def forward(signum, frame):
            terminated.append(signum)
            proc.send_signal(signum)

        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, forward) if main_thread else None
        try:
            try:
                code = proc.wait()
            except KeyboardInterrupt:
                proc.wait()  # it got the same SIGINT: it finishes its step and saves a checkpoint
                raise
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
    if terminated:
        raise KeyboardInterrupt
    return code


def train_run(run: AblationRun, env: dict[str, str], say) -> str:
    """Train one run (or continue it); returns its state afterwards: "done" or "failed"."""
    log = run.folder / "train.log"
    (run.folder / "failed.json").unlink(missing_ok=True)
    started = time.time()
    code = execute(["train", *run.args], log, env)
    if (run.folder / "summary.json").is_file():
        s = json.loads((run.folder / "summary.json").read_text())
        say(f"{run.name}: done in {fmt_time(time.time() - started)}: top-1 error {100 * s['top1_error']:.2f}%, "
            f"top-5 error {100 * s['top5_error']:.2f}% ({s['epochs_done']:g} epoch(s), {s['images_per_s']:.0f} img/s)"
            + ("; AT CHANCE: it did not learn (too high an lr?)"
               if ablate_report.at_chance(s["top1_error"], ablate_report.class_count(run.cfg.data.path)) else ""))
        return "done"
    if code == 0:  # stopped by a signal it received (e.g. from a process manager): saved, resumable
        raise KeyboardInterrupt
    message = last_error(log)
    # the record first: under torchrun rank 0 waits for every run's summary or failure
    (run.folder / "failed.json").write_text(json.dumps({"returncode": code, "error": message, "log": str(log),
                                                        "command": run.command()}, indent=2) + "\n")
    if code == 2 and "diverged" not in message:  # a mistake in the input: every other run would fail alike
        raise UserError(f"{run.command()} failed: {message} (log: {log})")
    say(f"{run.name}: FAILED (exit status {code}): {message}; log: {log}")
    return "failed"


def fmt_time(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s"


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def wait_for(runs: list[AblationRun], stall_s: float, say, poll_s: float = 5.0) -> list[AblationRun]:
    """Rank 0 under torchrun: wait until every run has a summary or a failure record, for as long as
    the other ranks make progress (a run folder's log or metrics grow); returns the runs still
    missing once nothing has changed for `stall_s` seconds (a rank that died without a word)."""
    reported, last_change, activity = -1, time.time(), None
    while True:
        missing = [r for r in runs if not (r.folder / "summary.json").is_file() and not (r.folder / "failed.json").is_file()]
        if not missing:
            return []
        now_activity = [(st.st_mtime_ns, st.st_size) for r in missing
                        for f in (r.folder / "train.log", r.folder / "metrics.jsonl") if (st := _stat(f))]
        if now_activity != activity:
            activity, last_change = now_activity, time.time()
        elif time.time() - last_change >= stall_s:
            return missing
        if len(missing) != reported:
            say(f"waiting for {len(missing)} run(s) of the other ranks: {', '.join(r.name for r in missing[:6])}"
                f"{' ...' if len(missing) > 6 else ''}")
            reported = len(missing)
        time.sleep(poll_s)


def evaluate_views(plan: Plan, env: dict[str, str], say) -> None:
    """§6: each finished baseline checkpoint (last.pt) through `alexnet evaluate` with 1 and 10 views,
    into baseline-seed<k>/views<V>.json (kept, and skipped next time)."""
    for run in plan.runs:
        if run.claim != "baseline" or not (run.folder / "summary.json").is_file():
            continue
        for views in (1, 10):
            report = run.folder / f"views{views}.json"
            if report.is_file():
                continue
            args = ["evaluate", str(run.folder / "last.pt"), "--data", str(plan.data), "--views", str(views),
                    "--json", str(report)]
            say(f"{run.name}: evaluating with {views} view(s)")
            if execute(args, run.folder / "evaluate.log", env) != 0:
                raise UserError(f"alexnet {' '.join(args)} failed: {last_error(run.folder / 'evaluate.log')}")


# ------------------------------------------------------------------------------------ the command

def main(args) -> int:
    plan = make_plan(args.data, args.out, seeds=args.seeds, only=args.only, epochs=args.epochs,
                     minutes=args.budget_minutes, preset=args.preset, sets=args.set, write=False)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None
    prefix = f"rank {rank}: " if world > 1 else ""

    def say(text: str) -> None:
        print(prefix + text, flush=True)

    states = {run.name: run_state(run) for run in plan.runs}  # every folder's config, before writing anything
    write_baseline(plan)
    if args.dry_run:
        for run in plan.runs:
            print(f"{run.command()}  # {states[run.name]}")
        return 0
    mine = [run for i, run in enumerate(plan.runs) if i % world == rank]
    budget = (f"{plan.budget['epochs']} epoch(s)" if "epochs" in plan.budget
              else f"{plan.budget['minutes']:g} minute(s)")
    say(f"{len(plan.runs)} runs ({len(plan.seeds)} seed(s) x {len(plan.runs) // len(plan.seeds)} configurations), "
        f"{budget} each, in {plan.out}; {sum(s == 'done' for s in states.values())} finished earlier"
        + (f"; this rank takes {len(mine)} of them" if world > 1 else ""))
    env = child_env(local_rank)
    try:
        for i, run in enumerate(mine, 1):
            state = run_state(run)
            if state == "done":
                say(f"[{i}/{len(mine)}] {run.name}: finished earlier, kept")
                continue
            say(f"[{i}/{len(mine)}] {run.name}: {'resuming' if state == 'partial' else 'training'} "
                f"(log: {run.folder / 'train.log'})\n    {run.command()}")
            train_run(run, env, say)
    except KeyboardInterrupt:
        say("stopped: finished runs are kept and the interrupted one saved a checkpoint; run the same "
            "command to resume")
        raise
    if rank != 0:
        say("this rank's runs are done; rank 0 writes the table")
        return 0
    missing = []
    if world > 1:  # as long as the other ranks' runs progress; 30 minutes without a sign of life ends it
        missing = wait_for(plan.runs, 1800.0, say)
    if any(c.name == "views" for c in plan.claims):
        evaluate_views(plan, env, say)
    paths = ablate_report.write(plan)
    say("wrote " + ", ".join(str(p) for p in paths))
    failed = [r.name for r in plan.runs if (r.folder / "failed.json").is_file()]
    if missing or failed:
        say(f"incomplete: {len(missing)} run(s) missing ({', '.join(r.name for r in missing)}), {len(failed)} "
            f"failed ({', '.join(failed)}); run the same command to retry them")
        return 1
    return 0
