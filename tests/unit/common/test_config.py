from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from pocketlm.common.config import load_config, parse_override, replace, to_dict
from pocketlm.common.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.95)


@dataclass(frozen=True)
class Cfg:
    name: str = "run"
    steps: int = 10
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None
    optim: Optim = field(default_factory=Optim)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError("steps must be >= 0")


def test_defaults_file_flags_and_set_apply_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('name = "from-file"\nsteps = 5\n[optim]\nlr = 0.5\n')
    cfg = load_config(
        Cfg,
        file=f,
        flags={"steps": 7, "optim.betas": None},
        overrides=["optim.lr=3e-4", "mode=slow"],
    )
    assert cfg == Cfg(name="from-file", steps=7, mode="slow", optim=Optim(lr=3e-4))


def test_unknown_key_gets_did_you_mean():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"
    ):
        load_config(Cfg, overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'steps'"):
        load_config(Cfg, overrides=["step=3"])


def test_type_and_choice_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"'steps' expects an integer"):
        load_config(Cfg, overrides=["steps=many"])
    with pytest.raises(ConfigError, match=r"'mode' must be one of 'fast', 'slow'"):
        load_config(Cfg, overrides=["mode=medium"])
    with pytest.raises(ConfigError, match=r"steps must be >= 0"):
        load_config(Cfg, overrides=["steps=-1"])


def test_optional_list_and_none_values():
    cfg = load_config(Cfg, overrides=["limit=4", "optim.betas=[0.8, 0.9]"])
    assert cfg.limit == 4 and cfg.optim.betas == (0.8, 0.9)
    assert load_config(Cfg, overrides=["limit=none"]).limit is None


def test_parse_override_reads_toml_literals_else_strings():
    assert parse_override("a.b=3e-4") == ("a.b", 3e-4)
    assert parse_override("x=true") == ("x", True)
    assert parse_override("x=hello world") == ("x", "hello world")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_bad_toml_file_is_named(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(Cfg, file=f)


def test_to_dict_and_replace_round_trip():
    cfg = replace(Cfg(), **{"optim.lr": 0.1, "steps": 3})
    assert to_dict(cfg) == {
        "name": "run",
        "steps": 3,
        "mode": "fast",
        "limit": None,
        "optim": {"lr": 0.1, "betas": [0.9, 0.95]},
    }
