"""The tune component: search-space checks, ClearML parameter ranges, refusals before any trial.

The real Optuna search over federated trials on agents runs in ``tests/e2e/test_pipeline.py``
(budget 2); here every check is fast.
"""

from __future__ import annotations

import math
import uuid

import pytest

from components import tune as tn


def test_default_space_covers_the_required_keys_per_strategy() -> None:
    base = {"lr0", "local_epochs", "momentum", "weight_decay", "mosaic"}
    assert set(tn.default_search_space("fedavg")) == base
    assert set(tn.default_search_space("fedprox")) == base | {"proximal_mu"}
    assert set(tn.default_search_space("fedavgm")) == base | {"server_lr"}
    assert set(tn.default_search_space("fedadam")) == base | {"fedopt_eta"}
    for strategy in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"):
        tn.check_search_space(tn.default_search_space(strategy))  # every default is valid


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "non-empty mapping"),
        ({"learning_rate": {"min": 0.1, "max": 0.2}}, "not a federated config key"),
        ({"rounds": {"min": 1, "max": 3}}, "not tuned"),
        ({"lr0": {"min": 0.1}}, "numeric 'min' and 'max'"),
        ({"lr0": {"min": 0.2, "max": 0.1}}, "needs min < max"),
        ({"lr0": {"min": 0.0, "max": 0.1, "log": True}}, "log range needs min > 0"),
        ({"momentum": {"min": 0.5, "max": 1.5}}, "momentum: must be <= 1.0"),
        ({"local_epochs": {"min": 1, "max": 2.5}}, "integer bounds"),
        ({"mosaic": {"values": []}}, "non-empty list"),
        ({"strategy": {"values": ["fedavg", "fedmagic"]}}, "fedmagic"),
        ({"lr0": [0.1, 0.2]}, "expected"),
    ],
)
def test_bad_search_space_is_refused(space, message) -> None:
    with pytest.raises(tn.TuneError, match=message):
        tn.check_search_space(space)


def test_hyper_parameters_are_clearml_ranges_over_the_federated_section() -> None:
    from clearml.automation import (
        DiscreteParameterRange,
        LogUniformParameterRange,
        UniformIntegerParameterRange,
        UniformParameterRange,
    )

    space = tn.check_search_space(
        {
            "lr0": {"min": 0.001, "max": 0.1, "log": True},
            "local_epochs": {"min": 1, "max": 3},
            "momentum": {"min": 0.8, "max": 0.95},
            "mosaic": {"values": [0.0, 1.0]},
        }
    )
    assert space["local_epochs"]["int"] is True  # an int key is sampled as an integer
    ranges = {r.name: r for r in tn.hyper_parameters(space)}
    assert set(ranges) == {
        "federated/lr0",
        "federated/local_epochs",
        "federated/momentum",
        "federated/mosaic",
    }
    lr0 = ranges["federated/lr0"]
    assert isinstance(lr0, LogUniformParameterRange)
    assert math.isclose(lr0.base**lr0.min_value, 0.001) and math.isclose(lr0.base**lr0.max_value, 0.1)
    assert isinstance(ranges["federated/local_epochs"], UniformIntegerParameterRange)
    assert isinstance(ranges["federated/momentum"], UniformParameterRange)
    assert isinstance(ranges["federated/mosaic"], DiscreteParameterRange)


def test_tune_refuses_bad_settings_before_any_trial(clearml_server) -> None:
    from clearml import Task

    from components.federate import create_server_task

    project = f"fleetfl-test/tune-{uuid.uuid4().hex[:6]}"
    base = create_server_task(
        {"eval": "e" * 32, "clients": ["a" * 32, "b" * 32]}, {"rounds": 1}, project=project, task_name="base"
    )
    with pytest.raises(tn.TuneError, match="budget"):
        tn.tune(base.id, None, budget=0, queue="nobody-serves-this")
    with pytest.raises(tn.TuneError, match="pruner"):
        tn.tune(base.id, None, budget=1, queue="nobody-serves-this", pruner="random")
    with pytest.raises(tn.TuneError, match="not a federated config key"):
        tn.tune(base.id, {"lr": {"min": 0.1, "max": 0.2}}, budget=1, queue="nobody-serves-this")
    with pytest.raises(tn.TuneError, match="no task"):
        tn.tune("0" * 32, None, budget=1)
    assert [t.id for t in Task.get_tasks(project_name=project)] == [base.id]  # no trial was created
