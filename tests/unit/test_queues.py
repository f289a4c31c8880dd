"""Queue definitions and agent start-up checks (no server needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from queues.agents import AgentError, agent_conf_text, start_agents
from queues.definitions import QueueDefinitionError, load_queue_specs


def test_default_queues_are_the_four_fleetfl_queues() -> None:
    specs = load_queue_specs()
    assert [spec.name for spec in specs] == ["services", "fl-server", "fl-clients", "hpo"]
    assert all(spec.description for spec in specs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("queues: [a, a]\n", "defined more than once"),
        ("queues:\n  - name: ok\n    colour: red\n", "unknown key 'colour'"),
        ("queues:\n  - name: 'bad name'\n", "queues[0]: name 'bad name'"),
        ("queues: []\n", "top-level 'queues:' list"),
        ("queues: [a\n", "line 2: not valid YAML"),
        ("queues:\n  - 3\n", "queues[0]: expected a mapping"),
    ],
)
def test_bad_queue_files_name_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "queues.yaml"
    path.write_text(text)
    with pytest.raises(QueueDefinitionError, match=re.escape(message)) as info:
        load_queue_specs(path)
    assert str(path) in str(info.value)


def test_missing_queue_file(tmp_path: Path) -> None:
    with pytest.raises(QueueDefinitionError, match="not found"):
        load_queue_specs(tmp_path / "nope.yaml")


def test_agent_conf_keeps_server_settings_and_adds_private_folders(tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "clearml.conf"
    base.write_text('api { api_server: "http://127.0.0.1:1" }\n')
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(base))
    text = agent_conf_text(tmp_path / "agent")
    assert text.startswith('api { api_server: "http://127.0.0.1:1" }')
    assert f'venvs_dir: "{tmp_path / "agent" / "venvs"}"' in text
    assert "report_use_subprocess: false" in text


@pytest.mark.parametrize(("queue", "count"), [("services", 0), ("services", -1), ("", 1)])
def test_bad_agent_arguments_are_refused_before_starting(tmp_path: Path, queue: str, count: int) -> None:
    with pytest.raises(AgentError):
        start_agents(queue, count, state_dir=tmp_path)
    assert not any(tmp_path.iterdir())
