"""Model yaml gate: every path a model yaml takes is checked before ultralytics sees it, and nothing runs.

Each hostile yaml would write a marker file if any string in it reached ``eval``/``exec`` or a
global lookup; the tests assert the marker never appears and the error names the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federated import model_yaml
from federated.config import ConfigError, FederatedConfig
from federated.model_yaml import ModelYamlError
from tests.fixtures.payloads import shell_code

MINI = """\
nc: 3
activation: {activation}
backbone:
  - [-1, 1, Conv, [8, 3, 2]]
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 2], 1, Concat, [1]]
  - [-1, 1, C2f, [32]]
  - [[3, 6], 1, Detect, [nc]]
"""


def _hostile_yamls(marker: Path) -> dict[str, tuple[str, str]]:
    """name -> (yaml text, the key the error must name)."""
    code = shell_code(marker)
    good = MINI.format(activation="nn.SiLU()")
    return {
        "activation-conditional": (
            MINI.format(activation=json.dumps(f"nn.SiLU() if {code} else 0")),
            "activation",
        ),
        "activation-call": (MINI.format(activation=json.dumps(code)), "activation"),
        "activation-attribute-walk": (
            MINI.format(activation=json.dumps("nn.Module.__subclasses__()")),
            "activation",
        ),
        "activation-argument": (
            MINI.format(activation=json.dumps(f"nn.LeakyReLU({code})")),
            "activation",
        ),
        "module-loader-function": (good.replace("Conv, [8", "torch_safe_load, [8"), "backbone[0].module"),
        "module-torchvision": (good.replace("Conv, [8", "TorchVision, [8"), "backbone[0].module"),
        "module-torchvision-ops": (good.replace("Conv, [8", "torchvision.ops.nms, [8"), "backbone[0].module"),
        "argument-local-name": (good.replace("[nc]", "[d]"), "head[3].args[0]"),
        "argument-code": (good.replace("[nc]", json.dumps([code])), "head[3].args[0]"),
        "unknown-key": (good + "text_model: mobileclip:blt\n", "'text_model'"),
        "python-tag": (good + f"scale: !!python/object/apply:os.system ['touch {marker}']\n", "line"),
    }


@pytest.mark.parametrize("case", list(_hostile_yamls(Path("m"))))
def test_hostile_yaml_is_refused_on_every_path_and_runs_nothing(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "marker"
    text, key = _hostile_yamls(marker)[case]
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(ModelYamlError) as checked:
        model_yaml.load_checked(str(path))
    assert str(checked.value).startswith(f"{path}") and key in str(checked.value)
    with pytest.raises(ConfigError, match=f"model: {path}"):  # config file, --set, run.json, ClearML
        FederatedConfig().replace(model=str(path))
    assert not marker.exists()


def test_build_model_checks_the_yaml_itself(tmp_path: Path) -> None:
    """``build_model`` (reached without a config too) gives ultralytics the checked dict only."""
    from federated.yolo_task import build_model

    marker = tmp_path / "marker"
    path = tmp_path / "evil.yaml"
    path.write_text(MINI.format(activation=json.dumps(f"nn.SiLU() if {shell_code(marker)} else 0")))
    with pytest.raises(ModelYamlError, match="activation"):
        build_model(str(path), {0: "car"})
    assert not marker.exists()


def test_set_and_config_file_paths_of_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.yaml"
    evil.write_text(MINI.format(activation=json.dumps(f"nn.SiLU() if {shell_code(marker)} else 0")))
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "--set", f"model={evil}", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert f"model: {evil}: activation:" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {evil}\n")
    with pytest.raises(SystemExit):
        main(["federate", "--config", str(config), "--out", str(tmp_path / "run")])
    assert f"{config}: model: {evil}: activation:" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_resume_reads_run_json_through_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from federated import run_dir as rd
    from pipelines.cli import main

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.yaml"
    evil.write_text(MINI.format(activation=json.dumps(f"nn.SiLU() if {shell_code(marker)} else 0")))
    run = tmp_path / "run"
    config = {**FederatedConfig().to_flat(), "model": str(evil)}
    rd.write_run_info(run, {"config": config, "data_dir": str(tmp_path / "data"), "engine": "simulation"})
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "--resume", str(run)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{run / rd.RUN_INFO_FILE}: model: {evil}: activation:" in err
    assert not marker.exists()


def test_pipeline_parameters_reach_the_same_check(tmp_path: Path) -> None:
    from pipelines.fleetfl_pipeline import federated_config

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.yaml"
    evil.write_text(MINI.format(activation=json.dumps(shell_code(marker))))
    params = {"config": {"model": str(evil)}, "strategy": "fedavg", "rounds": 1, "clients": 2}
    with pytest.raises(ConfigError, match=r"pipeline parameters: model: .*activation"):
        federated_config(params)
    assert not marker.exists()


def test_remote_and_missing_yamls_are_refused_without_downloads() -> None:
    with pytest.raises(ConfigError, match="remote model yaml is not allowed"):
        FederatedConfig(model="https://example.invalid/yolov8n.yaml")
    with pytest.raises(ConfigError, match="not found"):
        FederatedConfig(model="no-such-model.yaml")


def test_every_bundled_detection_yaml_passes_and_layers_resolve() -> None:
    import torch
    from ultralytics.nn import tasks

    bundled = model_yaml.bundled_detection_yamls()
    assert len(bundled) >= 20 and {p.name for p in bundled} >= {"yolov9t.yaml", "yolov8.yaml", "yolo11.yaml"}
    for path in bundled:
        model_yaml.load_checked(str(path))
    for name in model_yaml.LAYERS:
        layer = getattr(torch.nn, name[3:]) if name.startswith("nn.") else vars(tasks)[name]
        assert isinstance(layer, type) and issubclass(layer, torch.nn.Module), name
    for name in model_yaml.ACTIVATIONS:
        assert issubclass(getattr(torch.nn, name), torch.nn.Module), name


@pytest.mark.parametrize(
    ("written", "handed_to_ultralytics"),
    [
        ("nn.SiLU()", "torch.nn.SiLU()"),
        ("torch.nn.ReLU()", "torch.nn.ReLU()"),  # what ultralytics' yolov6.yaml writes
        ("nn.LeakyReLU(0.1)", "torch.nn.LeakyReLU(0.1)"),
        ("nn.ReLU(inplace=True)", "torch.nn.ReLU(inplace=True)"),
        ("nn.GELU(approximate='tanh')", "torch.nn.GELU(approximate='tanh')"),
    ],
)
def test_allowed_activations_are_rewritten_by_fleetfl(written: str, handed_to_ultralytics: str) -> None:
    assert model_yaml.activation_call(written, "x.yaml") == handed_to_ultralytics


def test_legitimate_models_still_build(tmp_path: Path) -> None:
    """Bundled names (family + scale) and a user yaml with ``activation: nn.ReLU()``."""
    import torch

    from federated.yolo_task import build_model

    user = tmp_path / "relu-detector.yaml"
    user.write_text(MINI.format(activation="nn.ReLU()"))
    FederatedConfig(model=str(user))  # accepted by the config
    model = build_model(str(user), {0: "car", 1: "bus"})
    assert isinstance(model.model[0].act, torch.nn.ReLU) and model.nc == 2
    v8 = build_model("yolov8n.yaml", {0: "car"})  # yolov8.yaml at scale n
    assert v8.yaml["scale"] == "n" and 2_500_000 < sum(p.numel() for p in v8.parameters()) < 3_500_000
    assert FederatedConfig(model="yolov9t.yaml").model == "yolov9t.yaml"
