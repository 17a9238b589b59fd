"""TrainConfig: presets hold the official values, TOML/flags/dicts load with strict key and type checks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from crossclr_infer.errors import CrossclrError
from training.config import PRESETS, TrainConfig, config_from_dict, config_to_dict, load_config
from training.encoders.config import EncoderConfig
from training.objectives.crossclr import SSLConfig

OFFICIAL_3S = ("crossclr-ntu60-xsub", "crossclr-ntu60-xview", "crossclr-ntu120-xsub", "crossclr-ntu120-xset")


def test_every_preset_file_exists_and_loads() -> None:
    for name, path in PRESETS.items():
        assert path.is_file(), name
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig) and isinstance(cfg.model, EncoderConfig)
        assert load_config(path) == cfg  # by name or by path


@pytest.mark.parametrize("name", OFFICIAL_3S)
def test_official_presets_hold_design_values(name: str) -> None:
    cfg = load_config(name)
    assert cfg.streams == ("joint", "motion", "bone")
    assert (cfg.epochs, cfg.cross_epoch, cfg.batch_size) == (300, 150, 128)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.1, 0.9, 1e-4)
    assert (cfg.lr_steps, cfg.lr_gamma) == ((250,), 0.1)
    assert cfg.nesterov is False and cfg.weight_decay_on == "all"
    assert cfg.model == EncoderConfig()  # the official quarter-width encoder with the MLP projector
    assert (cfg.model.base_channels, cfg.model.hidden_dim, cfg.model.feature_dim) == (16, 256, 128)
    assert cfg.ssl == SSLConfig(queue_size=32768, momentum=0.999, temperature=0.07, topk=1)
    assert cfg == TrainConfig()  # the dataclass defaults are the official values too


def test_single_and_two_stream_presets() -> None:
    clr = load_config("skeletonclr-joint")
    assert clr.streams == ("joint",) and clr.cross_epoch >= clr.epochs
    two = load_config("crossclr-2s")
    assert two.streams == ("joint", "motion") and two.cross_epoch == 150
    tiny = load_config("tiny")
    assert tiny.cross_epoch < tiny.epochs and len(tiny.streams) == 3
    assert tiny.ssl.queue_size <= 1024 and tiny.model.base_channels < 16


def test_overrides_top_level_dotted_and_none() -> None:
    cfg = load_config("tiny", {"epochs": 3, "model.base_channels": 2, "ssl.topk": 2, "seed": None,
                               "streams": ["joint", "bone"], "lr_steps": [1, 2]})
    assert cfg.epochs == 3 and cfg.model.base_channels == 2 and cfg.ssl.topk == 2
    assert cfg.seed == load_config("tiny").seed  # None = flag not given
    assert cfg.streams == ("joint", "bone") and cfg.lr_steps == (1, 2)
    assert load_config(None, {"epochs": 7}).epochs == 7
    assert load_config(None, {"lr": 1}).lr == 1.0 and isinstance(load_config(None, {"lr": 1}).lr, float)


def test_dict_round_trip_is_weights_only_safe() -> None:
    cfg = load_config("tiny", {"model.stage_blocks": [1, 2, 1]})
    d = config_to_dict(cfg)
    buf = io.BytesIO()
    torch.save({"config": d}, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)["config"]
    assert config_from_dict(back) == cfg
    assert back["model"]["stage_blocks"] == [1, 2, 1] and isinstance(back["streams"], list)


def _err(tmp_path: Path, text: str) -> str:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(CrossclrError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    return msg


# a TOML text -> what its one-line error says
REFUSED = {
    "epoch = 3\n": ("'epoch'", "expected one of"),
    "[model]\nwidth = 3\n": ("'model.width'",),
    "[ssl]\nqueue = 3\n": ("'ssl.queue'",),
    'epochs = "300"\n': ("epochs", "expected int"),
    "batch_size = 1.5\n": ("batch_size", "expected int"),
    "bf16 = 1\n": ("bf16", "expected bool"),
    'streams = "joint"\n': ("streams", "list of str"),
    "[model]\nbase_channels = true\n": ("model.base_channels", "expected int"),
    "model = 3\n": ("model", "table"),
    'weight_decay_on = "some"\n': ("weight_decay_on", "'all'"),
    "epochs = [\n": ("not valid TOML",),
}


@pytest.mark.parametrize(("text", "parts"), REFUSED.items())
def test_unknown_keys_and_wrong_types_are_refused(tmp_path: Path, text: str, parts: tuple[str, ...]) -> None:
    msg = _err(tmp_path, text)
    assert all(part in msg for part in parts), (text, msg)


def test_bad_values_are_refused(tmp_path: Path) -> None:
    assert "accel2" in _err(tmp_path, 'streams = ["joint", "accel2"]\n')
    assert "repeat a view" in _err(tmp_path, 'streams = ["joint", "joint"]\n')
    # one stream: SkeletonCLR, cross_epoch has no effect (the trainer never mines across views)
    assert load_config(None, {"streams": ["joint"], "cross_epoch": 10}).streams == ("joint",)
    assert "epochs" in _err(tmp_path, "epochs = 0\n")
    assert "device" in _err(tmp_path, 'device = "tpu"\n')
    assert "graph" in _err(tmp_path, '[model]\ngraph = "hyper"\n')  # MODEL's own validation, one line
    with pytest.raises(CrossclrError, match="not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(CrossclrError, match="unknown key 'nope'"):
        config_from_dict({"nope": 1})
