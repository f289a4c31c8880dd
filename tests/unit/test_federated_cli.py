"""`fleetfl federate` input handling and the ClientApp's data lookup (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main


def test_federate_is_registered_and_bad_keys_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["federate", "--set", "roundz=3"])
    assert exit_info.value.code == 2
    assert "unknown key 'roundz'" in capsys.readouterr().err


def test_resume_round_needs_resume(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["federate", "--resume-round", "2"])
    assert "--resume-round needs --resume" in capsys.readouterr().err


def test_data_without_shards_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "data.yaml").write_text("train: images\nval: images\nnames: [car]\n")
    with pytest.raises(SystemExit):
        main(["federate", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert "no client_0/data.yaml" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing is written for bad input"


def test_client_data_lookup_order(tmp_path: Path) -> None:
    from federated.client_app import ClientDataError, resolve_data_yaml

    explicit = tmp_path / "mine" / "data.yaml"
    assert resolve_data_yaml({"data-yaml": str(explicit), "partition-id": 1}, {"data-dir": "/x"}) == explicit
    assert resolve_data_yaml({"partition-id": 1, "data-dir": str(tmp_path)}, {"data-dir": "/x"}) == (
        tmp_path / "client_1" / "data.yaml"
    )
    assert (
        resolve_data_yaml({"partition-id": 0}, {"data-dir": str(tmp_path)})
        == tmp_path / "client_0" / "data.yaml"
    )
    with pytest.raises(ClientDataError, match="data-yaml"):
        resolve_data_yaml({}, {"data-dir": str(tmp_path)})
