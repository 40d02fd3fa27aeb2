"""The ablation's outputs: ablation.md, ablation.json, ablation.png and relu_tanh.png (Figure 1).

    paths = ablate_report.write(plan)       # from the run folders of an alexnet.ablate.Plan

Read from the run folders only (summary.json, metrics.jsonl, views<V>.json), so the report can be
rewritten at any time and counts exactly the runs that finished. Units: errors are fractions in the
JSON and percent in the table; effects are points of error.

The effect of a feature, per seed: error without it (the variant) - error with it (the baseline,
same seed), so > 0 means the feature lowers the error, which is what the paper claims for every one.
Reported as mean +- sample standard deviation over the seeds (n-1 in the denominator); a mean within
two standard errors of 0 is marked as within the noise.

Figure 1 (§3.1): training error against epochs from the `train` records of metrics.jsonl (top-1 of
the augmented training batches, dropout active, averaged over each log interval of train.log_every
steps; a resumed run's repeated steps count once, the last one kept). The epoch at which a run
first reaches 25% is interpolated linearly between the two records around the crossing.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from .evaluate import at_chance  # noqa: F401 (the rule lives with the figures it judges)
from .plots import pyplot, save

THRESHOLD = 0.25  # §3.1 Figure 1: the training error the paper times ReLU and tanh to


# ------------------------------------------------------------------------------------ numbers

def stats(values: list[float]) -> dict:
    """{"mean", "std", "n", "values"}; std is None below two values."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values), "values": values}


def within_noise(s: dict) -> bool | None:
    """The mean is within two standard errors of 0 (None: too few values to tell)."""
    if s["n"] < 2:
        return None
    return abs(s["mean"]) <= 2 * s["std"] / math.sqrt(s["n"])


def training_error(records: list[dict]) -> list[tuple[float, float]]:
    """metrics.jsonl records -> [(epoch, training top-1 error)], one point per logged step."""
    by_step = {r["step"]: r for r in records if r.get("kind") == "train"}  # a resumed run's repeats: last wins
    return [(by_step[s]["epoch"], 1.0 - by_step[s]["top1"]) for s in sorted(by_step)]


def first_crossing(curve: list[tuple[float, float]], threshold: float) -> float | None:
    """The first epoch at which the error reaches `threshold` (linear between records), or None."""
    previous = None
    for epoch, error in curve:
        if error <= threshold + 1e-12:  # errors are 1 - accuracy: 1 - 0.7 is 0.30000000000000004
            if previous is None or previous[1] == error:
                return epoch
            (e0, y0) = previous
            return e0 + (epoch - e0) * (y0 - threshold) / (y0 - error)
        previous = (epoch, error)
    return None


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_records(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ collecting

def class_count(data: Path) -> int | None:
    """The number of classes of a prepared data set (its manifest), None when it has none."""
    manifest = read_json(Path(data) / "manifest.json")
    return len(manifest["classes"]) if manifest and manifest.get("classes") else None


def run_results(plan) -> list[dict]:
    rows = []
    classes = class_count(plan.data)
    for run in plan.runs:
        s, failed = read_json(run.folder / "summary.json"), read_json(run.folder / "failed.json")
        row = {"name": run.name, "claim": run.claim, "seed": run.seed, "folder": str(run.folder),
               "command": run.command(), "state": "done" if s else "failed" if failed else "missing"}
        if s:
            curve = training_error(read_records(run.folder))
            last_epoch = [e for x, e in curve if x > math.ceil(curve[-1][0]) - 1] if curve else []
            row.update({k: s.get(k) for k in ("top1_error", "top5_error", "epochs_done", "training_time_s",
                                              "images_per_s", "precision", "device")},
                       train_error_last_epoch=statistics.fmean(last_epoch) if last_epoch else None,
                       at_chance=at_chance(s["top1_error"], classes))
            for views in (1, 10):
                v = read_json(run.folder / f"views{views}.json")
                if v:
                    row[f"views{views}"] = {"top1_error": v["top1_error"], "top5_error": v["top5_error"],
                                            "n_images": v["n_images"]}
        if failed:
            row["error"] = failed["error"]
        rows.append(row)
    return rows


def claim_results(plan, rows: list[dict]) -> list[dict]:
    done = {(r["claim"], r["seed"]): r for r in rows if r["state"] == "done"}
    out = []
    for c in plan.claims:
        pairs = []  # (with the feature, without it), per seed
        for seed in plan.seeds:
            base = done.get(("baseline", seed))
            if c.key is None:  # views: the baseline's checkpoints, 10 views against 1
                if base and "views1" in base and "views10" in base:
                    pairs.append((base["views10"], base["views1"]))
            elif base and (c.name, seed) in done:
                pairs.append((base, done[(c.name, seed)]))
        entry = {"name": c.name, "section": c.section, "feature": c.feature,
                 "change": f"{c.key}={c.value}" if c.key else "alexnet evaluate --views 1 (vs --views 10)",
                 "paper": c.paper, "paper_top1": c.paper_top1, "paper_top5": c.paper_top5, "seeds": len(pairs)}
        for metric in ("top1_error", "top5_error"):
            short = metric.split("_")[0]
            entry[f"with_{short}"] = stats([w[metric] for w, _ in pairs])
            entry[f"without_{short}"] = stats([wo[metric] for _, wo in pairs])
            effect = stats([100 * (wo[metric] - w[metric]) for w, wo in pairs])  # points
            entry[f"effect_{short}"] = effect
            entry[f"agrees_{short}"] = None if effect["mean"] is None else effect["mean"] > 0
            entry[f"noise_{short}"] = within_noise(effect) if effect["n"] else None
        if c.name == "dropout":  # §4.2 overfitting: validation error - training error at the end
            entry["overfitting_gap"] = {
                side: stats([100 * (r["top1_error"] - r["train_error_last_epoch"]) for r in
                             [p[i] for p in pairs] if r.get("train_error_last_epoch") is not None])
                for i, side in ((0, "with"), (1, "without"))}
        out.append(entry)
    return out


def figure1(plan) -> dict | None:
    """§3.1: the ReLU baseline's and the tanh variant's training-error curves and crossing epochs."""
    if not any(c.name == "relu" for c in plan.claims):
        return None
    curves = {"relu": {}, "tanh": {}}
    for run in plan.runs:
        side = "relu" if run.claim == "baseline" else "tanh" if run.claim == "relu" else None
        if side and (run.folder / "summary.json").is_file():
            curve = training_error(read_records(run.folder))
            if curve:  # none when a short budget ended the run before its first logged step
                curves[side][run.seed] = curve
    seeds = sorted(set(curves["relu"]) & set(curves["tanh"]))
    if not seeds:
        return None
    result = {"threshold": THRESHOLD, "seeds": seeds,
              "curves": {side: {str(s): curves[side][s] for s in seeds} for side in curves}}

    def at(threshold):
        cross = {side: [first_crossing(curves[side][s], threshold) for s in seeds] for side in curves}
        both = [(r, t) for r, t in zip(cross["relu"], cross["tanh"]) if r is not None and t is not None]
        return {"threshold": threshold, "relu_epochs": cross["relu"], "tanh_epochs": cross["tanh"],
                "ratio": (statistics.fmean(t for _, t in both) / statistics.fmean(r for r, _ in both)
                          if len(both) == len(seeds) else None),
                "ratio_per_seed": stats([t / r for r, t in both])}

    result["at_threshold"] = at(THRESHOLD)
    result["lowest"] = {side: min(min(e for _, e in curves[side][s]) for s in seeds) for side in curves}
    result["epochs_done"] = {side: max(curves[side][s][-1][0] for s in seeds) for side in curves}
    if result["at_threshold"]["ratio"] is None:  # also where every curve gets to, rounded up to a percent
        common = max(min(e for _, e in curves[side][s]) for side in curves for s in seeds)
        result["at_common"] = at(math.ceil(round(100 * common, 6)) / 100)
    return result


# ------------------------------------------------------------------------------------ writing

def write(plan) -> list[Path]:
    rows = run_results(plan)
    claims = claim_results(plan, rows)
    fig1 = figure1(plan)
    done = [r for r in rows if r["state"] == "done"]
    result = {"data": str(plan.data), "out": str(plan.out), "budget": plan.budget, "seeds": plan.seeds,
              "written": time.strftime("%Y-%m-%d %H:%M:%S"), "baseline": str(plan.out / "baseline.yaml"),
              "baseline_config": _config_dict(plan.baseline), "claims": claims, "figure1": fig1, "runs": rows,
              "device": sorted({str(r["device"]) for r in done}), "precision": sorted({str(r["precision"]) for r in done})}
    paths = [plan.out / "ablation.json", plan.out / "ablation.png"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    plot_effects(claims, rows, paths[1])
    if fig1:
        paths.append(plot_relu_tanh(fig1, plan.out / "relu_tanh.png"))
    md = plan.out / "ablation.md"
    md.write_text(markdown(plan, result))
    return [md, *paths]


def _config_dict(cfg) -> dict:
    from . import config as config_mod
    return config_mod.to_dict(cfg)


def pm(s: dict, scale: float = 100.0, signed: bool = False) -> str:
    if not s or s["n"] == 0:
        return "-"
    sign = "+" if signed else ""
    text = f"{scale * s['mean']:{sign}.2f}"
    return text + (f" ± {scale * s['std']:.2f}" if s["std"] is not None else "")


def agreement(entry: dict, short: str) -> str:
    a = entry[f"agrees_{short}"]
    if a is None:
        return "-"
    return ("yes" if a else "no") + (" (noise)" if entry[f"noise_{short}"] else "")


def figure1_text(f: dict) -> str:
    t, pct = f["at_threshold"], f"{100 * f['threshold']:.0f}%"
    mean = lambda xs: statistics.fmean(xs)  # noqa: E731
    if t["ratio"] is not None:
        return (f"ReLU reached {pct} training error after {mean(t['relu_epochs']):.2f} epochs and tanh after "
                f"{mean(t['tanh_epochs']):.2f} (means over {len(f['seeds'])} seed(s)): tanh needed "
                f"**{t['ratio']:.2f}x** the epochs (per seed {pm(t['ratio_per_seed'], 1)}); the paper: 6x, on "
                f"CIFAR-10 with a four-layer network.")
    relu = [e for e in t["relu_epochs"] if e is not None]
    text = (f"{pct} training error was not reached by every run within the budget ({f['epochs_done']['relu']:.1f} "
            f"epochs; lowest training error: ReLU {100 * f['lowest']['relu']:.1f}%, tanh "
            f"{100 * f['lowest']['tanh']:.1f}%).")
    if relu and not any(e is not None for e in t["tanh_epochs"]):
        text += (f" ReLU reached it after {mean(relu):.2f} epochs, tanh not within {f['epochs_done']['tanh']:.1f}: "
                 f"a ratio above {f['epochs_done']['tanh'] / mean(relu):.1f}x.")
    c = f.get("at_common")
    if c and c["ratio"] is not None:
        text += (f" At {100 * c['threshold']:.0f}%, which every run reached: ReLU after "
                 f"{mean(c['relu_epochs']):.2f} epochs, tanh after {mean(c['tanh_epochs']):.2f}, a ratio of "
                 f"**{c['ratio']:.2f}x** (per seed {pm(c['ratio_per_seed'], 1)}).")
    return text


def markdown(plan, r: dict) -> str:
    budget = (f"{plan.budget['epochs']} epoch(s)" if "epochs" in plan.budget
              else f"{plan.budget['minutes']:g} minute(s) of training")
    b = plan.baseline
    lines = [
        "# The paper's claims, re-measured (`alexnet ablate`)", "",
        f"Data: `{r['data']}`; {len(plan.seeds)} seed(s) ({', '.join(map(str, plan.seeds))}) per configuration; "
        f"{budget} per run; device {', '.join(r['device']) or '-'}, precision {', '.join(r['precision']) or '-'}; "
        f"written {r['written']}.", "",
        f"Baseline (`{r['baseline']}`, preset {b.preset}): {b.model.name} with LRN, dropout {b.model.dropout:g}, "
        f"PCA colour noise (std {b.data.pca_std:g}), {b.model.pooling} pooling, {b.model.towers} towers, "
        f"{b.model.activation} units; width x{b.model.width:g}, {b.model.hidden}-unit FC layers, {b.data.crop} px crops, "
        f"batch {b.train.batch_size}, lr {b.optim.lr:g} per {b.optim.lr_batch}, schedule {b.schedule.name}. Each variant "
        f"changes exactly one config key. Errors: validation, %, centre crop unless stated, mean ± std over seeds. "
        f"Effect of a feature = error without it - error with it, in points, paired by seed: > 0 means the feature "
        f"lowers the error, as the paper claims; \"(noise)\": the mean is within two standard errors of 0.", "",
        "| claim | variant (one change) | paper | top-1 error with -> without | top-5 error with -> without "
        "| effect top-1 | effect top-5 | sign agrees top-1 / top-5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["claims"]:
        lines.append(f"| {c['section']} {c['feature']} | `{c['change']}` | {c['paper']} | "
                     f"{pm(c['with_top1'])} -> {pm(c['without_top1'])} | {pm(c['with_top5'])} -> {pm(c['without_top5'])} | "
                     f"{pm(c['effect_top1'], 1, True)} | {pm(c['effect_top5'], 1, True)} | "
                     f"{agreement(c, 'top1')} / {agreement(c, 'top5')} |")
    lines += ["", "![effects](ablation.png)", ""]
    if r["figure1"]:
        lines += ["## Figure 1: ReLU against tanh (§3.1)", "", figure1_text(r["figure1"]), "",
                  "![training error, ReLU and tanh](relu_tanh.png)", ""]
    drop = next((c for c in r["claims"] if c["name"] == "dropout" and "overfitting_gap" in c), None)
    if drop and drop["seeds"]:
        g = drop["overfitting_gap"]
        lines += ["## Dropout and overfitting (§4.2)", "",
                  f"Validation top-1 error minus training error of the last epoch (augmented batches, dropout "
                  f"active), in points: with dropout {pm(g['with'], 1, True)}, without {pm(g['without'], 1, True)}. "
                  f"The paper: without dropout the network overfits substantially, and dropout roughly doubles "
                  f"the iterations needed to converge, which a short budget feels as a cost.", ""]
    dead = [row["name"] for row in r["runs"] if row.get("at_chance")]
    if dead:
        lines += [f"**Warning: {len(dead)} run(s) did not learn** (validation top-1 below 1.5x chance): "
                  f"{', '.join(dead)}. Effects computed from them mean nothing; a diverged or dead network "
                  f"usually means too high a learning rate for this recipe (`--set optim.lr=...`).", ""]
    lines += ["## Runs", "", "Each is an `alexnet train` run folder; the command re-runs (or resumes) it.", "",
              "| run | state | top-1 error | top-5 error | epochs | training time | img/s |", "|---|---|---|---|---|---|---|"]
    for row in r["runs"]:
        if row["state"] == "done":
            state = "done, **at chance**" if row.get("at_chance") else "done"
            lines.append(f"| {row['name']} | {state} | {100 * row['top1_error']:.2f} | {100 * row['top5_error']:.2f} | "
                         f"{row['epochs_done']:g} | {row['training_time_s'] / 60:.1f} min | {row['images_per_s']:.0f} |")
        else:
            lines.append(f"| {row['name']} | {row['state']}{': ' + row['error'] if row.get('error') else ''} "
                         f"| - | - | - | - | - |")
    lines += ["", "```"] + [row["command"] for row in r["runs"]]
    if any(c["name"] == "views" for c in r["claims"]):
        lines += [f"alexnet evaluate {Path(row['folder']) / 'last.pt'} --data {r['data']} --views {v} "
                  f"--json {Path(row['folder']) / f'views{v}.json'}"
                  for row in r["runs"] if row["claim"] == "baseline" for v in (1, 10)]
    lines += ["```", "",
              "The paper's figures are for ImageNet (1.2 million images, 1000 classes) trained to convergence "
              "(about 90 epochs); these are for the data and budget above. Effects that need convergence "
              "(dropout's) or many classes (top-5) can differ in size or sign on small data with a short budget.", ""]
    return "\n".join(lines)


def plot_effects(claims: list[dict], rows: list[dict], path: Path) -> Path:
    """Left: top-1 error per configuration (bars: mean, error bars: std, dots: seeds). Right: each
    feature's effect in points, top-1 and top-5, with the paper's figures as markers."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8))
    names = ["baseline"] + [c["name"] for c in claims if c["name"] != "views"]
    groups = [[100 * x["top1_error"] for x in rows if x["claim"] == n and x["state"] == "done"] for n in names]
    if any(c["name"] == "views" for c in claims):
        names.append("1 view")
        groups.append([100 * x["views1"]["top1_error"] for x in rows if x["claim"] == "baseline" and "views1" in x])
    labels = [n if n in ("baseline", "1 view") else f"-{n}" for n in names]
    for i, g in enumerate(groups):
        if g:
            ax1.bar(i, statistics.fmean(g), yerr=statistics.stdev(g) if len(g) > 1 else 0, capsize=4,
                    color="tab:gray" if i == 0 else "tab:blue", alpha=0.7)
            ax1.plot([i] * len(g), g, "k.", ms=5)
    ax1.set_xticks(range(len(names)), labels, rotation=30)
    ax1.set(ylabel="validation top-1 error (%)", title="top-1 error: the baseline and each variant without one feature")
    x = range(len(claims))
    for offset, short, color in ((-0.2, "top1", "tab:blue"), (0.2, "top5", "tab:orange")):
        means = [c[f"effect_{short}"]["mean"] or 0 for c in claims]
        errs = [c[f"effect_{short}"]["std"] or 0 for c in claims]
        ax2.bar([i + offset for i in x], means, width=0.4, yerr=errs, capsize=4, color=color, alpha=0.75,
                label=f"ours, {short} (mean ± std over seeds)")
        paper = [(i + offset, c[f"paper_{short}"]) for i, c in zip(x, claims) if c[f"paper_{short}"] is not None]
        if paper:
            ax2.plot(*zip(*paper), "kD" if short == "top1" else "kd", mfc="none" if short == "top5" else "k",
                     label=f"paper, {short}")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(list(x), [f"{c['section']}\n{c['name']}" for c in claims])
    ax2.set(ylabel="effect (points of error)", title="error without the feature - error with it (> 0: it helps)")
    ax2.legend(fontsize=8)
    save(fig, path, dpi=110)
    return path


def plot_relu_tanh(f: dict, path: Path) -> Path:
    """Figure 1 re-measured: training error against epochs, ReLU solid and tanh dashed, one line per seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for side, style, color in (("relu", "-", "tab:blue"), ("tanh", "--", "tab:red")):
        for i, (seed, curve) in enumerate(f["curves"][side].items()):
            ax.plot([e for e, _ in curve], [100 * y for _, y in curve], style, color=color, alpha=0.8, lw=1.2,
                    label=f"{'ReLU' if side == 'relu' else 'tanh'}" if i == 0 else None)
    ax.axhline(100 * f["threshold"], color="k", lw=0.8, ls=":", label=f"{100 * f['threshold']:.0f}% (the paper's mark)")
    ratio = f["at_threshold"]["ratio"]
    ax.set(xlabel="epochs", ylabel="training error (%)", ylim=(0, None),
           title="Figure 1 re-measured: ReLU vs tanh" + (f" ({ratio:.2f}x at 25%)" if ratio else ""))
    ax.legend()
    save(fig, path, dpi=110)
    return path
