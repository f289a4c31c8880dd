"""FederatedConfig: one typed source of truth; every bad key or value is named in the error."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federated.config import DEFAULT_CONFIG_FILE, ConfigError, FederatedConfig
from federated.server_app import RUN_KEYS


def test_flat_round_trip_keeps_every_value() -> None:
    config = FederatedConfig(strategy="fedprox", proximal_mu=0.1, rounds=7, device="0")
    flat = config.to_flat()
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert FederatedConfig.from_flat(flat) == config


def test_strings_are_converted_like_flower_run_config_values() -> None:
    config = FederatedConfig.from_flat({"rounds": "4", "lr0": "0.02", "strategy": "krum", "min_clients": 3})
    assert (config.rounds, config.lr0, config.strategy) == (4, 0.02, "krum")


def test_default_file_and_pyproject_table_equal_the_dataclass(repo_root: Path) -> None:
    assert FederatedConfig.load(DEFAULT_CONFIG_FILE) == FederatedConfig()
    table = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert {k: v for k, v in table.items() if k not in RUN_KEYS} == FederatedConfig().to_flat()
    assert {k: table[k] for k in RUN_KEYS} == RUN_KEYS


def test_exponent_floats_without_a_dot_are_read_as_numbers() -> None:
    assert FederatedConfig.load(None, ["target_delta=1e-4"]).target_delta == 1e-4


def test_set_overrides_and_save_load(tmp_path: Path) -> None:
    config = FederatedConfig.load(None, ["rounds=5", "strategy=fedavgm", "server_momentum=0.5", "device="])
    assert (config.rounds, config.strategy, config.server_momentum, config.device) == (5, "fedavgm", 0.5, "")
    path = config.save(tmp_path / "c.yaml")
    assert FederatedConfig.load(path) == config


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["roundz=3"], "'roundz'"),
        (["rounds=0"], "rounds"),
        (["rounds=two"], "rounds"),
        (["rounds=2.5"], "rounds"),
        (["strategy=fedsgd"], "strategy"),
        (["send_weights=fp16"], "send_weights"),
        (["optimizer_state=sometimes"], "optimizer_state"),
        (["lr0=0"], "lr0"),
        (["fraction=1.5"], "fraction"),
        (["trim_beta=0.7"], "trim_beta"),
        (["max_update_norm=nan"], "max_update_norm"),
        (["model=yolov9t.pt"], "model"),
        (["rounds"], "KEY=VALUE"),
        (["strategy=krum", "krum_byzantine=1", "min_clients=2"], "krum_byzantine"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        FederatedConfig.load(None, overrides)


def test_file_errors_name_file_and_key(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("rounds: 2\nlocal_epoch: 1\n")
    with pytest.raises(ConfigError, match=r"bad_key\.yaml.*'local_epoch'"):
        FederatedConfig.load(bad_key)
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("imgsz: [64]\n")
    with pytest.raises(ConfigError, match=r"bad_value\.yaml.*imgsz"):
        FederatedConfig.load(bad_value)
    bad_yaml = tmp_path / "bad_yaml.yaml"
    bad_yaml.write_text("rounds: 2\n  batch: [\n")
    with pytest.raises(ConfigError, match=r"bad_yaml\.yaml line \d+"):
        FederatedConfig.load(bad_yaml)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        FederatedConfig.load(tmp_path / "missing.yaml")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
