"""Component parameters: what a UI edit (always text) turns into when the task runs."""

from __future__ import annotations

import os

import pytest

from components.common import ComponentError, _decode, _encode


@pytest.mark.parametrize(
    ("stored", "default", "expected"),
    [
        ("3", 2, 3),
        ("3.0", 2, 3),  # an optimizer's float for an integer parameter
        (" 4 ", 2, 4),
        ("0.5", 0.1, 0.5),
        ("", None, None),  # None defaults are stored as ""
        ("path.yaml", None, "path.yaml"),
        ("[1, 2]", [], [1, 2]),
        ('{"a": 1}', {}, {"a": 1}),
        ('["candidate"]', ("x",), ("candidate",)),
        ("True", False, True),
        ("false", True, False),
        (7, "", "7"),
    ],
)
def test_edited_values_come_back_with_the_defaults_types(stored, default, expected) -> None:
    assert _decode(stored, default, "key", "General") == expected


@pytest.mark.parametrize(
    ("stored", "default"), [("2.5", 1), ("x", 1.0), ("maybe", True), ("[1", []), ("{}", [])]
)
def test_bad_edits_name_the_parameter(stored, default) -> None:
    with pytest.raises(ComponentError, match="parameter General/key"):
        _decode(stored, default, "key", "General")


def test_encoding_round_trip() -> None:
    for value in ([1, "a"], {"eval": "id", "clients": ["a", "b"]}, 3, 0.25, True, "text"):
        assert _decode(_encode(value), value, "key", "General") == value
    assert _encode(None) == ""


def test_a_pickled_output_artifact_is_refused_and_never_unpickled(clearml_server, tmp_path) -> None:
    """A component's output read back from the server is JSON; a swapped-in pickle never loads."""
    import uuid

    from clearml import Task

    from components.common import publish_output, read_output
    from tests.fixtures.payloads import Call

    marker = tmp_path / "marker"
    task = Task.create(project_name=f"fleetfl-test/out-{uuid.uuid4().hex[:6]}", task_name="output")
    publish_output(task, {"model_id": "abc", "map50": 0.5})
    assert read_output(task.id) == {"model_id": "abc", "map50": 0.5}
    task.upload_artifact(
        "output", artifact_object=Call(os.system, f"touch {marker}"), auto_pickle=True, wait_on_upload=True
    )
    with pytest.raises(ComponentError, match="is a pickle, not JSON"):
        read_output(task.id)
    assert not marker.exists()


def test_pipeline_step_values_travel_as_json_and_a_pickle_is_never_loaded(tmp_path) -> None:
    import pickle

    from pipelines import step_values
    from tests.fixtures.payloads import Call

    value = {"eval": "id", "clients": ["a", "b"], "map50": 0.5}
    assert step_values.from_bytes(step_values.to_bytes(value)) == value
    marker = tmp_path / "marker"
    with pytest.raises(ValueError):  # what a swapped-in pickle artifact meets in the next step
        step_values.from_bytes(pickle.dumps(Call(os.system, f"touch {marker}")))
    assert not marker.exists()
