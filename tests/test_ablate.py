"""`alexnet ablate`: one key per variant, the tables from the run folders, resume, bad input."""
import json

import pytest

from alexnet import ablate, ablate_report, cli, config
from alexnet.errors import UserError

TINY = ["--set", "model.width=0.25", "--set", "model.hidden=64", "--set", "data.crop=64", "--set", "data.workers=0",
        "--set", "train.batch_size=16", "--set", "eval.batch_size=16", "--set", "train.log_every=1"]


def sets(args):
    return [a for a in args if a != "--set"]


def test_each_variant_changes_exactly_its_key(tiny, tmp_path):
    plan = ablate.make_plan(tiny, tmp_path / "abl", seeds=2, epochs=3, sets=sets(TINY))
    assert {r.claim for r in plan.runs} == {"baseline", "lrn", "overlap", "towers", "pca", "dropout", "relu"}
    assert len(plan.runs) == 14 and plan.seeds == [0, 1]
    base = config.to_dict(plan.baseline)
    # the claims' features are in the baseline: LRN (not batch norm), dropout, PCA noise, 3x3/2, 2 towers, ReLU
    assert (base["model"]["norm"], base["model"]["dropout"], base["data"]["pca_std"], base["model"]["pooling"],
            base["model"]["towers"], base["model"]["activation"]) == ("lrn", 0.5, 0.1, "overlap", 2, "relu")
    assert base["train"]["epochs"] == 3 and base["train"]["budget_minutes"] is None and base["data"]["crop"] == 64
    expected = {"lrn": ("model", "norm", "none"), "overlap": ("model", "pooling", "nonoverlap"),
                "towers": ("model", "towers", 1), "pca": ("data", "pca_std", 0.0),
                "dropout": ("model", "dropout", 0.0), "relu": ("model", "activation", "tanh")}
    parser = cli.build_parser()
    for run in plan.runs:
        # the printed command, through the real CLI, resolves to the run's config
        args = parser.parse_args(["train", *run.args])
        assert config.to_dict(cli.resolve_config(args)) == config.to_dict(run.cfg), run.name
        assert run.folder == tmp_path / "abl" / f"{run.claim}-seed{run.seed}"
        got = config.to_dict(run.cfg)
        assert got["train"]["seed"] == run.seed and got["train"]["out"] == str(run.folder)
        pair = config.to_dict(next(r.cfg for r in plan.runs if r.claim == "baseline" and r.seed == run.seed))
        diffs = [(section, key, value) for section, values in got.items() if isinstance(values, dict)
                 for key, value in values.items() if value != pair[section][key] and key != "out"]
        assert diffs == ([] if run.claim == "baseline" else [expected[run.claim]]), run.name
        if run.claim == "baseline":
            assert got == {**base, "train": {**base["train"], "seed": run.seed, "out": str(run.folder)}}


def test_budget_preset_and_defaults(tiny, tmp_path):
    timed = ablate.make_plan(tiny, tmp_path / "a", seeds=1, minutes=2.5, only="lrn", sets=sets(TINY))
    assert timed.budget == {"minutes": 2.5} and timed.baseline.train.budget_minutes == 2.5
    assert timed.baseline.train.epochs == timed.baseline.eval.every == 1000
    assert [r.claim for r in timed.runs] == ["baseline", "lrn"]
    paper = ablate.make_plan(tiny, tmp_path / "b", seeds=1, preset="paper", only="views", sets=["data.crop=64"])
    assert paper.baseline.preset == "paper" and paper.baseline.model.width == 1.0  # the preset's own recipe
    assert paper.baseline.train.epochs == ablate.DEFAULT_EPOCHS and [r.claim for r in paper.runs] == ["baseline"]
    assert [ablate.default_crop(s) for s in (256, 128, 144, 72)] == [224, 112, 120, 64]


def test_bad_input_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(UserError, match="unknown claim.*bogus"):
        ablate.make_plan(tiny, tmp_path, only="lrn,bogus")
    with pytest.raises(UserError, match="already has model.norm=none"):
        ablate.make_plan(tiny, tmp_path, only="lrn", sets=["model.norm=none", *sets(TINY)])
    with pytest.raises(UserError, match="not a prepared data set"):
        ablate.make_plan(tmp_path, tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:  # argparse: one line, status 2
        cli.main(["ablate", "--data", str(tiny), "--epochs", "2", "--budget-minutes", "1"])
    assert exit_.value.code == 2


def test_training_error_and_crossing():
    records = [{"kind": "train", "step": 1, "epoch": 0.5, "top1": 0.2}, {"kind": "val", "step": 2, "top1": 0.9},
               {"kind": "train", "step": 2, "epoch": 1.0, "top1": 0.5},
               {"kind": "train", "step": 2, "epoch": 1.0, "top1": 0.6},  # the resumed run's repeat wins
               {"kind": "train", "step": 3, "epoch": 1.5, "top1": 0.9}]
    curve = ablate_report.training_error(records)
    assert [e for e, _ in curve] == [0.5, 1.0, 1.5] and [y for _, y in curve] == pytest.approx([0.8, 0.4, 0.1])
    assert ablate_report.first_crossing(curve, 0.25) == pytest.approx(1.0 + 0.5 * (0.4 - 0.25) / (0.4 - 0.1))
    assert ablate_report.first_crossing(curve, 0.9) == 0.5 and ablate_report.first_crossing(curve, 0.05) is None
    s = ablate_report.stats([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx((7 / 3) ** 0.5)


def test_tiny_ablation_on_two_ranks_writes_the_table_and_resumes(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "abl"
    argv = ["ablate", "--data", str(tiny), "--epochs", "1", "--seeds", "1", "--only", "relu,views", "--out", str(out),
            *TINY]
    # as under torchrun (the ranks one after another here): rank r trains runs i with i % world == r
    # (baseline-seed0, relu-seed0) in children of world size 1
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29999", "TORCHELASTIC_RUN_ID": "x"}.items():
        monkeypatch.setenv(key, value)
    assert cli.main(argv) == 0
    assert [p.parent.name for p in out.glob("*/summary.json")] == ["relu-seed0"]
    assert not (out / "ablation.md").exists() and "rank 0 writes the table" in capsys.readouterr().out
    assert json.loads((out / "relu-seed0" / "env.json").read_text())["world_size"] == 1  # torchrun's env not passed on
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert cli.main(argv) == 0  # trains its own run, finds the other's summary, evaluates, writes the outputs
    printed = capsys.readouterr().out
    assert "rank 0: [1/1] baseline-seed0: training" in printed and "relu-seed0: training" not in printed
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key)
    for name in ("ablation.md", "ablation.json", "ablation.png", "relu_tanh.png", "baseline.yaml"):
        assert (out / name).is_file(), name
    result = json.loads((out / "ablation.json").read_text())
    base, tanh = (json.loads((out / f"{n}-seed0" / "summary.json").read_text()) for n in ("baseline", "relu"))
    relu, views = result["claims"]
    assert (relu["name"], views["name"], relu["seeds"], views["seeds"]) == ("relu", "views", 1, 1)
    # recomputed here from the runs' own files, in points
    assert relu["effect_top1"]["values"] == pytest.approx([100 * (tanh["top1_error"] - base["top1_error"])])
    reports = {v: json.loads((out / "baseline-seed0" / f"views{v}.json").read_text()) for v in (1, 10)}
    assert all(r["n_images"] == 30 and r["views"] == v for v, r in reports.items())
    assert views["effect_top5"]["values"] == pytest.approx([100 * (reports[1]["top5_error"] - reports[10]["top5_error"])])
    assert result["figure1"]["seeds"] == [0] and len(result["figure1"]["curves"]["tanh"]["0"]) == 5
    md = (out / "ablation.md").read_text()
    assert "| §3.1 ReLU units (vs tanh) | `model.activation=tanh` |" in md and "## Figure 1" in md
    assert f"alexnet train --config {out / 'baseline.yaml'} --set model.activation=tanh --seed 0 --out {out / 'relu-seed0'}" in md
    assert f"--views 10 --json {out / 'baseline-seed0' / 'views10.json'}" in md

    # the same command again: nothing is trained or evaluated, the outputs are rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.suffix in (".pt", ".json", ".log")}
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, kept") == 2 and ": training (" not in printed and "evaluating" not in printed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # an interrupted run (no summary yet, a checkpoint) continues from its checkpoint
    (out / "relu-seed0" / "summary.json").unlink()
    assert cli.main(argv) == 0
    assert "relu-seed0: resuming" in capsys.readouterr().out
    log = (out / "relu-seed0" / "train.log").read_text()
    assert log.count("$ alexnet train") == 2 and "resuming" in log
    assert (out / "relu-seed0" / "summary.json").is_file()
    assert (out / "baseline-seed0" / "last.pt").stat().st_mtime_ns == stamps[out / "baseline-seed0" / "last.pt"]

    # another configuration in the same folder is refused, nothing is touched
    assert cli.main([*argv, "--set", "optim.lr=0.02"]) == 2
    assert "trained with another configuration (optim.lr" in capsys.readouterr().err
    assert config.from_dict(__import__("yaml").safe_load((out / "baseline.yaml").read_text())).optim.lr == 0.01


def fake_run(folder, top1_error, top5_error, errors):
    """A finished run folder as `alexnet train` leaves it: summary.json, and training errors per log step."""
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "top1_error": top1_error, "top5_error": top5_error, "epochs_done": 2, "training_time_s": 60.0,
        "images_per_s": 100.0, "precision": "fp32", "device": "cpu"}))
    lines = [{"kind": "train", "step": i + 1, "epoch": (i + 1) / 2, "top1": 1 - e} for i, e in enumerate(errors)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_the_report_pairs_seeds_and_times_figure_1(tiny, tmp_path):
    """Three seeds of hand-made run folders: the effects, their spread, the signs and Figure 1's ratio."""
    plan = ablate.make_plan(tiny, tmp_path / "abl", seeds=3, only="lrn,relu,views", epochs=2, sets=sets(TINY))
    base_top1, lrn_top1 = [0.30, 0.32, 0.34], [0.31, 0.35, 0.34]  # effects +1, +3, 0 points
    for s in range(3):
        fake_run(plan.out / f"baseline-seed{s}", base_top1[s], 0.05, [0.8, 0.5, 0.3, 0.2])  # 25% at 1.75 epochs
        fake_run(plan.out / f"lrn-seed{s}", lrn_top1[s], 0.04, [0.8, 0.6, 0.5, 0.4])
        fake_run(plan.out / f"relu-seed{s}", 0.5, 0.1, [0.9, 0.7, 0.5, 0.3])  # never 25%: lowest 30%
        for views, (t1, t5) in ((1, (0.30, 0.05)), (10, (0.28, 0.06))):
            (plan.out / f"baseline-seed{s}" / f"views{views}.json").write_text(json.dumps(
                {"top1_error": t1, "top5_error": t5, "n_images": 30}))
    paths = ablate_report.write(plan)
    assert [p.name for p in paths] == ["ablation.md", "ablation.json", "ablation.png", "relu_tanh.png"]
    r = json.loads((plan.out / "ablation.json").read_text())
    lrn, _, views = r["claims"]
    assert lrn["effect_top1"]["values"] == pytest.approx([1.0, 3.0, 0.0])
    assert lrn["effect_top1"]["mean"] == pytest.approx(4 / 3) and lrn["effect_top1"]["std"] == pytest.approx((7 / 3) ** 0.5)
    assert lrn["agrees_top1"] and lrn["noise_top1"]  # 1.33 < 2 * 1.53 / sqrt(3)
    assert lrn["effect_top5"]["mean"] == pytest.approx(-1.0) and lrn["agrees_top5"] is False and not lrn["noise_top5"]
    assert views["effect_top1"]["mean"] == pytest.approx(2.0) and views["effect_top5"]["mean"] == pytest.approx(-1.0)
    f1 = r["figure1"]
    assert f1["at_threshold"]["relu_epochs"] == pytest.approx([1.75] * 3) and f1["at_threshold"]["ratio"] is None
    # 30% is where every run got to: ReLU at 1.5 epochs, tanh at 2.0
    assert f1["at_common"]["threshold"] == pytest.approx(0.30) and f1["at_common"]["ratio"] == pytest.approx(2.0 / 1.5)
    md = (plan.out / "ablation.md").read_text()
    assert "| +1.33 ± 1.53 | -1.00 ± 0.00 | yes (noise) / no |" in md
    assert "ReLU reached it after 1.75 epochs, tanh not within 2.0" in md and "**1.33x**" in md
    assert "did not learn" not in md

    # a run at chance (10 classes: top-1 below 15%) is flagged in the table and above it
    assert ablate_report.at_chance(0.86, 10) and not ablate_report.at_chance(0.84, 10)
    summary = plan.out / "relu-seed2" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "top1_error": 0.9}))
    ablate_report.write(plan)
    md = (plan.out / "ablation.md").read_text()
    assert "**Warning: 1 run(s) did not learn** (validation top-1 below 1.5x chance): relu-seed2." in md
    assert "| relu-seed2 | done, **at chance** | 90.00 |" in md
    # a run a short budget ended before its first logged step has no curve: Figure 1 leaves its seed out
    (plan.out / "relu-seed1" / "metrics.jsonl").write_text("")
    ablate_report.write(plan)
    assert json.loads((plan.out / "ablation.json").read_text())["figure1"]["seeds"] == [0, 2]


def test_a_child_that_fails_on_its_input_stops_the_ablation(tiny, tmp_path, capsys):
    out = tmp_path / "abl"
    status = cli.main(["ablate", "--data", str(tiny), "--epochs", "1", "--seeds", "2", "--only", "lrn",
                       "--out", str(out), *TINY, "--set", "train.device=cuda:7"])
    assert status == 2
    err = capsys.readouterr().err
    assert "baseline-seed0 failed: alexnet train: error: device cuda:7" in err
    assert not (out / "lrn-seed0").exists()  # stopped at the first: the others would fail alike
    assert "device cuda:7" in json.loads((out / "baseline-seed0" / "failed.json").read_text())["error"]


def test_rank_0_waits_while_the_other_ranks_progress(tiny, tmp_path):
    """Under torchrun rank 0 waits for the other ranks' runs as long as their logs grow, and gives
    up on a run whose folder has shown no sign of life for the stall time."""
    import threading
    import time
    plan = ablate.make_plan(tiny, tmp_path / "abl", seeds=1, only="lrn", epochs=1, sets=sets(TINY))
    base, lrn = plan.runs
    for run in plan.runs:
        run.folder.mkdir(parents=True)
        (run.folder / "train.log").write_text("started\n")
    said = []
    assert ablate.wait_for(plan.runs, 0.3, said.append, poll_s=0.05) == [base, lrn]  # no sign of life

    def progress():  # lrn logs for 0.6 s (longer than the stall time), then finishes; base has failed
        (base.folder / "failed.json").write_text("{}")
        for _ in range(6):
            time.sleep(0.1)
            with open(lrn.folder / "train.log", "a") as f:
                f.write("step\n")
        (lrn.folder / "summary.json").write_text("{}")
    worker = threading.Thread(target=progress)
    worker.start()
    assert ablate.wait_for(plan.runs, 0.3, said.append, poll_s=0.02) == []
    worker.join()
