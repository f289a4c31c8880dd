"""Contract: the real clearml==2.1.12 SDK against the embedded server (flows a, b-local, g of issue 3).

Each flow runs as its own script process (the SDK keeps one Task per process), against the
session's ``clearml_server``, and prints what the test then checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.clearml import ClearMLServer, run_sdk_script

FLOW_A = r"""
import json
import numpy as np
from clearml import OutputModel, Task

task = Task.init(project_name="contract", task_name="flow-a", reuse_last_task_id=False,
                 auto_connect_frameworks=False, auto_resource_monitoring=False)
task.connect({"lr": 0.1, "epochs": 2})
logger = task.get_logger()
for i in range(3):
    logger.report_scalar("loss", "train", value=1.0 / (i + 1), iteration=i)
logger.report_text("hello from flow a")
logger.report_scatter2d("plot", "points", iteration=0, scatter=[[0, 1], [1, 2]])
open("notes.txt", "w").write("a file artifact")
task.upload_artifact("file", "notes.txt", wait_on_upload=True)
task.upload_artifact("arr", np.arange(5), wait_on_upload=True)
task.upload_artifact("dct", {"a": 1}, wait_on_upload=True)
open("w.bin", "wb").write(b"weights")
model = OutputModel(task=task, name="w", framework="PyTorch")
model.update_weights(weights_filename="w.bin", auto_delete_file=False)
task_id = task.id
task.close()

t = Task.get_task(task_id=task_id)
print(json.dumps({
    "status": t.get_status(),
    "scalars": t.get_reported_scalars(),
    "last": t.get_last_scalar_metrics(),
    "params": t.get_parameters(),
    "arr": t.artifacts["arr"].get().tolist(),
    "dct": t.artifacts["dct"].get(),
    "file": open(t.artifacts["file"].get_local_copy()).read(),
    "models": [m.id for m in t.models["output"]],
    "model_id": model.id,
}))
"""


@pytest.mark.slow
def test_task_logging_artifacts_and_model(clearml_server: ClearMLServer, tmp_path: Path) -> None:
    """(a) Task.init ... close, then read everything back through the SDK."""
    out = json.loads(run_sdk_script(clearml_server, FLOW_A, tmp_path).strip().splitlines()[-1])
    assert out["status"] == "completed"
    assert out["scalars"]["loss"]["train"]["x"] == [0, 1, 2]
    assert out["scalars"]["loss"]["train"]["y"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert out["last"]["loss"]["train"] == pytest.approx({"last": 1 / 3, "min": 1 / 3, "max": 1.0})
    assert out["params"] == {"General/lr": "0.1", "General/epochs": "2"}
    assert out["arr"] == [0, 1, 2, 3, 4]
    assert out["dct"] == {"a": 1}
    assert out["file"] == "a file artifact"
    assert out["models"] == [out["model_id"]]


PIPELINE_CONTROLLER = r"""
from clearml import PipelineController, Task

def make_data(n: int = 5):
    return list(range(int(n)))  # ${pipeline.n} arrives as a string

def square(data):
    return [x * x for x in data]

def total(values):
    return sum(values)

pipe = PipelineController(name="ctl", project="contract", version="0.1", pool_frequency=0.02,
                          add_pipeline_tags=False)
pipe.add_parameter("n", 5)
pipe.add_function_step(name="make_data", function=make_data, function_kwargs={"n": "${pipeline.n}"},
                       function_return=["data"], cache_executed_step=False)
pipe.add_function_step(name="square", function=square, function_kwargs={"data": "${make_data.data}"},
                       function_return=["values"], parents=["make_data"], cache_executed_step=False)
pipe.add_function_step(name="total", function=total, function_kwargs={"values": "${square.values}"},
                       function_return=["result"], parents=["square"], cache_executed_step=False)
pipe.start_locally(run_pipeline_steps_locally=True)
dag = pipe.get_pipeline_dag()
steps = {name: Task.get_task(task_id=dag[name].executed) for name in ("make_data", "square", "total")}
print("STATUSES", sorted({t.get_status() for t in steps.values()}))
print("VALUES", steps["square"].artifacts["values"].get())
print("PARENTS", sorted({t.parent == pipe.id for t in steps.values()}))
"""

PIPELINE_DECORATOR = r"""
from clearml import PipelineDecorator

@PipelineDecorator.component(return_values=["data"], cache=False)
def make_data(n: int = 4):
    return list(range(int(n)))

@PipelineDecorator.component(return_values=["total"], cache=False)
def total(data):
    return sum(x * x for x in data)

@PipelineDecorator.pipeline(name="dec", project="contract", version="0.1", pool_frequency=0.02)
def run(n: int = 4):
    result = total(data=make_data(n=n))
    open("dec_result.txt", "w").write(str(result))

if __name__ == "__main__":
    PipelineDecorator.run_locally()
    run(n=4)
"""


@pytest.mark.slow
def test_pipeline_controller_function_steps_locally(clearml_server: ClearMLServer, tmp_path: Path) -> None:
    """(b) PipelineController, three function steps passing data, all run locally."""
    out = run_sdk_script(clearml_server, PIPELINE_CONTROLLER, tmp_path)
    assert "STATUSES ['completed']" in out
    assert "VALUES [0, 1, 4, 9, 16]" in out
    assert "PARENTS [True]" in out


@pytest.mark.slow
def test_pipeline_decorator_run_locally(clearml_server: ClearMLServer, tmp_path: Path) -> None:
    """(b) PipelineDecorator.run_locally(): two components, the result flows back."""
    run_sdk_script(clearml_server, PIPELINE_DECORATOR, tmp_path)
    assert (tmp_path / "dec_result.txt").read_text() == "14"


MODEL_REGISTRY = r"""
import json
from clearml import InputModel, Model, OutputModel, Task

task = Task.init(project_name="registry", task_name="train-g", auto_connect_frameworks=False,
                 auto_resource_monitoring=False, output_uri=True)
open("w.bin", "wb").write(b"registry weights")
out = OutputModel(task=task, name="detector", framework="PyTorch", tags=["fleet", "yolo"])
out.update_weights(weights_filename="w.bin", auto_delete_file=False)
out.publish()
other = OutputModel(task=task, name="other", framework="PyTorch", tags=["other"])
other.update_weights(weights_filename="w.bin", auto_delete_file=False)
task.close()

by_tag = Model.query_models(project_name="registry", model_name="detector", tags=["fleet"])
by_project = Model.query_models(project_name="registry")
excluded = Model.query_models(project_name="registry", tags=["-fleet"])
model = Model(model_id=out.id)
model.tags = ["fleet", "yolo", "edited"]
edited = Model(model_id=out.id)
used = InputModel(model_id=out.id)
print(json.dumps({
    "id": out.id,
    "by_tag": [m.id for m in by_tag],
    "by_project": sorted(m.name for m in by_project),
    "excluded": [m.name for m in excluded],
    "published": edited.published,
    "tags": sorted(edited.tags),
    "weights": open(used.get_weights(), "rb").read().decode(),
    "framework": used.framework,
    "uri": used.url,
}))
"""


@pytest.mark.slow
def test_model_registry(clearml_server: ClearMLServer, tmp_path: Path) -> None:
    """(g) publish, query by project/name/tags, edit tags, InputModel weights."""
    out = json.loads(run_sdk_script(clearml_server, MODEL_REGISTRY, tmp_path).strip().splitlines()[-1])
    assert out["by_tag"] == [out["id"]]
    assert out["by_project"] == ["detector", "other"]
    assert out["excluded"] == ["other"]
    assert out["published"] is True
    assert out["tags"] == ["edited", "fleet", "yolo"]
    assert out["weights"] == "registry weights"
    assert out["framework"] == "PyTorch"
    assert out["uri"].startswith(clearml_server.files_host)  # uploaded to the file server
