"""The `alexnet` command: help everywhere, one-line errors with status 2, info, print-config."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alexnet import __version__, cli, config

SUBCOMMANDS = ["prepare", "train", "evaluate", "predict", "features", "neighbors", "filters",
               "export", "serve", "bench", "ablate", "info"]


def run_cli(capsys, *argv):
    """main() in-process: (exit status, stdout, stderr)."""
    try:
        status = cli.main(list(argv))
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_every_subcommand_is_registered():
    assert set(cli.COMMANDS) == set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_of_every_subcommand(capsys, name):
    status, out, _ = run_cli(capsys, name, "--help")
    assert status == 0
    assert out.startswith(f"usage: alexnet {name}") and cli.COMMANDS[name][2] in " ".join(out.split())


def test_top_level_help_and_version(capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0 and all(name in out for name in SUBCOMMANDS)
    status, out, _ = run_cli(capsys, "--version")
    assert status == 0 and out.strip() == f"alexnet {__version__}"


@pytest.mark.parametrize("argv,needle", [
    (["info", "--bogus"], "unrecognized arguments: --bogus"),
    (["info", "--input-size", "big"], "invalid int value: 'big'"),
    (["info", "--norm", "layer"], "invalid choice: 'layer'"),
    (["evaluate", "x.pt", "--views", "7"], "invalid choice: 7"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
    (["info", "--model", "vgg16"], "unknown model 'vgg16'; choose one of alexnet2012, alexnet_owt"),
    (["train", "--preset", "slow", "--print-config"], "unknown preset 'slow'"),
    (["train", "--set", "optim.lrr=1", "--print-config"], "unknown config key 'optim.lrr'"),
    (["train", "--epochs", "many", "--print-config"], "--epochs: train.epochs: expects an integer"),
    (["train", "--config", "/nonexistent/c.toml", "--print-config"], "config file not found"),
    (["info", "--model", "alexnet2012", "--input-size", "40"], "needs inputs of at least 64x64"),
])
def test_user_errors_are_one_line_with_status_2(capsys, argv, needle):
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err


def test_debug_shows_the_traceback():
    proc = subprocess.run([sys.executable, "-m", "alexnet", "info", "--model", "vgg16", "--debug"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UserError: unknown model 'vgg16'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "alexnet", "info", "--model", "vgg16"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_info_table(capsys, tmp_path):
    out_json = tmp_path / "t.json"
    status, out, _ = run_cli(capsys, "info", "--model", "alexnet2012", "--json", str(out_json))
    assert status == 0
    total = [line for line in out.splitlines() if line.startswith("total")]
    assert total and "60,965,224" in total[0]
    for layer, shape in [("conv1", "55x55x96"), ("pool2", "13x13x256"), ("pool5", "6x6x256")]:
        assert any(line.startswith(layer) and shape in line for line in out.splitlines())
    report = json.loads(out_json.read_text())
    assert report["params"] == 60_965_224 and len(report["layers"]) == 14
    status, out, _ = run_cli(capsys, "info", "--model", "alexnet_owt")
    assert status == 0 and "61,100,840" in out


def test_info_environment(capsys, tmp_path):
    status, out, _ = run_cli(capsys, "info", "--json", str(tmp_path / "env.json"))
    assert status == 0 and "torch" in out
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["alexnet"] == __version__ and env["cpu_count"] >= 1


def test_print_config_round_trips(capsys, tmp_path):
    status, out, _ = run_cli(capsys, "train", "--preset", "fast", "--set", "optim.lr=0.5",
                             "--epochs", "3", "--model", "alexnet_owt", "--print-config")
    assert status == 0
    cfg = config.from_dict(yaml.safe_load(out))
    assert (cfg.preset, cfg.optim.lr, cfg.train.epochs, cfg.model.name) == ("fast", 0.5, 3, "alexnet_owt")
    saved = tmp_path / "run.yaml"
    saved.write_text(out)
    status, again, _ = run_cli(capsys, "train", "--config", str(saved), "--print-config")
    assert status == 0 and again == out


def test_unfinished_commands_say_so(capsys, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "serve", (None, 14, cli.COMMANDS["serve"][2]))
    status, _, err = run_cli(capsys, "serve")
    assert status == 1 and "not implemented yet" in err and "issue #14" in err


def test_serve_flag_mistakes_are_one_line_errors(capsys):
    status, _, err = run_cli(capsys, "serve", "--port", "0")
    assert status == 2 and "exactly one of" in err and len(err.strip().splitlines()) == 1
    status, _, err = run_cli(capsys, "serve", "--weights", "torchvision", "--max-batch", "0")
    assert status == 2 and "--max-batch" in err and len(err.strip().splitlines()) == 1


def test_console_script_and_module_agree():
    script = Path(sys.executable).parent / "alexnet"  # installed by pip next to this interpreter
    for exe in ([sys.executable, "-m", "alexnet"], [str(script)]):
        proc = subprocess.run([*exe, "--version"], capture_output=True, text=True, check=True)
        assert proc.stdout.strip() == f"alexnet {__version__}"


def test_help_starts_a_newcomer_and_shows_every_choice(capsys):
    """`alexnet --help` spoke of internals ("dispatched lazily"); `prepare --help`
    showed OUT as optional; `train --help` left `auto` out of --precision."""
    for argv, phrases in ((["--help"], ["quick start:", "alexnet train  ", "alexnet prepare PHOTOS"]),
                          (["prepare", "--help"], ["usage: alexnet prepare SRC OUT [options]", "alexnet prepare --verify OUT"]),
                          (["train", "--help"], ["auto (bf16 where"])):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert all(" ".join(p.split()) in out for p in phrases), (argv, out[:600])
        assert "lazily" not in out
