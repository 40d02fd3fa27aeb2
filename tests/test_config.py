"""Typed configuration: presets, precedence, types, unknown keys, files, round trips."""
import typing

import pytest
import yaml

from alexnet import config, model
from alexnet.config import ConfigError


def test_presets_are_valid_and_distinct():
    cfgs = {name: config.preset(name) for name in config.PRESETS}
    assert {"paper", "torchvision", "fast"} <= set(cfgs)
    for name, cfg in cfgs.items():
        config.validate(cfg)
        assert cfg.preset == name
    assert len({config.dump(c) for c in cfgs.values()}) == len(cfgs)


def test_paper_preset_is_section_5():
    cfg = config.preset("paper")
    assert (cfg.model.name, cfg.model.init, cfg.model.dropout) == ("alexnet2012", "paper", 0.5)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.01, 0.9, 5e-4)
    assert (cfg.train.batch_size, cfg.train.epochs) == (128, 90)
    assert (cfg.schedule.name, cfg.schedule.gamma, cfg.schedule.max_decays) == ("plateau", 0.1, 3)
    assert (cfg.data.crop, cfg.data.flip, cfg.data.pca_std, cfg.data.mean) == (224, True, 0.1, "pixel")


def test_torchvision_preset_is_its_reference_recipe():
    cfg = config.preset("torchvision")
    assert (cfg.model.name, cfg.model.init) == ("alexnet_owt", "kaiming")
    assert (cfg.optim.lr, cfg.optim.lr_batch, cfg.optim.weight_decay) == (0.01, 256, 1e-4)
    assert (cfg.schedule.name, cfg.schedule.step_epochs, cfg.train.epochs) == ("step", 30, 90)
    assert cfg.data.scale == (0.08, 1.0) and cfg.data.pca_std == 0


def test_model_names_match_the_registry():
    hint = typing.get_type_hints(config.ModelConfig)["name"]
    assert set(typing.get_args(hint)) == set(model.VARIANTS)
    norms = typing.get_args(typing.get_args(typing.get_type_hints(config.ModelConfig)["norm"])[0])
    assert set(norms) == set(model.NORMS)


def test_precedence_preset_file_set_flag(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('preset = "fast"\n[optim]\nlr = 0.5\nmomentum = 0.8\n[train]\nepochs = 7\n')
    cfg = config.resolve(None, files=[f], sets=["optim.lr=0.25", "train.epochs=9"],
                         flags={"--epochs": ("train.epochs", "11"), "--lr": ("optim.lr", None)})
    assert cfg.preset == "fast" and cfg.train.batch_size == 1024  # from the file's preset
    assert cfg.optim.momentum == 0.8  # file
    assert cfg.optim.lr == 0.25  # --set beats file; a flag left unset changes nothing
    assert cfg.train.epochs == 11  # flag beats --set
    assert config.resolve("paper", files=[f]).preset == "paper"  # --preset beats the file's


def test_yaml_and_json_files(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data:\n  scale: [0.2, 1.0]\n  workers: null\neval:\n  views: 10\n")
    cfg = config.resolve("paper", files=[y])
    assert cfg.data.scale == (0.2, 1.0) and cfg.data.workers is None and cfg.eval.views == 10
    j = tmp_path / "c.json"
    j.write_text('{"train": {"deterministic": true}}')
    assert config.resolve("paper", files=[j]).train.deterministic is True


@pytest.mark.parametrize("assignment,attr,value", [
    ("train.channels_last=yes", ("train", "channels_last"), True),
    ("train.compile=0", ("train", "compile"), False),
    ("model.num_classes=none", ("model", "num_classes"), None),
    ("model.num_classes=37", ("model", "num_classes"), 37),
    ("model.norm=batchnorm", ("model", "norm"), "batchnorm"),
    ("model.norm=none", ("model", "norm"), "none"),  # the choice "none", not null (the variant's own)
    ("model.norm=null", ("model", "norm"), None),
    ("optim.lr=3e-3", ("optim", "lr"), 0.003),
    ("optim.lr=1", ("optim", "lr"), 1.0),
    ("data.ratio=0.75,1.25", ("data", "ratio"), (0.75, 1.25)),
    ("eval.views=10", ("eval", "views"), 10),
    ("train.batch_size=1_024", ("train", "batch_size"), 1024),
])
def test_set_parses_by_type(assignment, attr, value):
    cfg = config.resolve("paper", sets=[assignment])
    got = getattr(getattr(cfg, attr[0]), attr[1])
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("assignment,message", [
    ("model.nmae=alexnet_owt", r"unknown config key 'model.nmae' \(did you mean 'model.name'\?\)"),
    ("modle.name=alexnet_owt", r"unknown config section 'modle'.*did you mean 'model'"),
    ("train.epochs=ten", r"train.epochs: expects an integer, got 'ten'"),
    ("train.epochs=2.5", r"train.epochs: expects an integer"),
    ("train.compile=maybe", r"train.compile: expects true or false"),
    ("optim.lr=fast", r"optim.lr: expects a number"),
    ("model.name=vgg", r"model.name: 'vgg' is not one of alexnet2012, alexnet_owt"),
    ("eval.views=5", r"eval.views: '5' is not one of 1, 2, 10"),
    ("data.scale=0.5", r"data.scale: expects 2 comma-separated values"),
    ("lr=0.1", r"expected section.key=value"),
    ("train.epochs", r"expected section.key=value"),
])
def test_bad_overrides_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=message):
        config.resolve("paper", sets=[assignment])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.resolve("paper", files=[tmp_path / "missing.toml"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="does not parse"):
        config.resolve("paper", files=[bad])
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'train.epoch'"):
        config.resolve("paper", files=[typo])
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[optim]\nlr = "high"\n')
    with pytest.raises(ConfigError, match="optim.lr: expects a number, got 'high'"):
        config.resolve("paper", files=[wrong])
    with pytest.raises(ConfigError, match="unknown preset 'slow'"):
        config.resolve("slow")
    ext = tmp_path / "c.ini"
    ext.write_text("x")
    with pytest.raises(ConfigError, match="use .toml"):
        config.resolve("paper", files=[ext])


@pytest.mark.parametrize("assignments,message", [
    (["train.batch_size=100", "train.accumulation=3"], "divisible by train.accumulation"),
    (["model.dropout=1.0"], "model.dropout"),
    (["data.scale=0.5,0.2"], "data.scale"),
    (["schedule.warmup_epochs=100"], "schedule.warmup_epochs"),
    (["optim.lr=0"], "optim.lr"),
])
def test_validation_names_the_key(assignments, message):
    with pytest.raises(ConfigError, match=message):
        config.resolve("paper", sets=assignments)


@pytest.mark.parametrize("name", list(config.PRESETS))
def test_dump_round_trips(tmp_path, name):
    cfg = config.resolve(name, sets=["optim.lr=0.123", "data.ratio=0.5,2"])
    text = config.dump(cfg)
    assert config.from_dict(yaml.safe_load(text)) == cfg
    path = tmp_path / "config.yaml"
    config.save(cfg, path)
    assert config.resolve(None, files=[path]) == cfg  # a saved run config is a valid --config


def test_nesterov_with_the_papers_update_rule_is_a_config_error():
    # §5's rule has no Nesterov form: refused when the config is read (exit 2), not as a traceback
    # when the optimizer is built
    with pytest.raises(config.ConfigError, match="optim.nesterov needs optim.update=torch"):
        config.resolve("tiny", sets=["optim.update=paper"])
    assert config.resolve("tiny", sets=["optim.update=paper", "optim.nesterov=false"]).optim.update == "paper"
