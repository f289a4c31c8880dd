"""The Flower-free YOLO task: exact weights, training from the global weights, FedProx, evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("fl_ultralytics")


@pytest.fixture(scope="module")
def global_weights(fl_data_dir: Path, fl_config) -> list[np.ndarray]:
    from federated import yolo_task

    names = yolo_task.read_dataset(fl_data_dir / "client_0" / "data.yaml").names
    return yolo_task.get_weights(yolo_task.build_model(fl_config.model, names, seed=fl_config.seed))


def _norm(update: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return float(
        np.sqrt(sum(((u.astype(np.float64) - r) ** 2).sum() for u, r in zip(update, reference, strict=True)))
    )


def test_weights_round_trip_is_bitwise_and_complete(fl_data_dir: Path, fl_config, global_weights) -> None:
    from federated import yolo_task

    names = yolo_task.read_dataset(fl_data_dir / "eval" / "data.yaml").names
    model = yolo_task.build_model(fl_config.model, names, seed=123)  # other random weights
    state = model.state_dict()
    assert len(global_weights) == len(state)  # BatchNorm statistics and num_batches_tracked included
    assert any(key.endswith("num_batches_tracked") for key in state)
    yolo_task.set_weights(model, global_weights)
    back = yolo_task.get_weights(model)
    for sent, received in zip(global_weights, back, strict=True):
        assert sent.dtype == received.dtype and sent.shape == received.shape
        assert sent.tobytes() == received.tobytes()
    # averaging makes num_batches_tracked float64: it is rounded back, not truncated
    averaged = [w.astype(np.float64) - 1e-9 if w.dtype.kind == "i" else w for w in global_weights]
    yolo_task.set_weights(model, averaged)
    assert all(
        a.tobytes() == b.tobytes() for a, b in zip(global_weights, yolo_task.get_weights(model), strict=True)
    )
    with pytest.raises(ValueError, match="shape"):
        yolo_task.set_weights(model, [global_weights[0][:1], *global_weights[1:]])
    with pytest.raises(ValueError, match="arrays"):
        yolo_task.set_weights(model, global_weights[:-1])


def test_build_model_is_seeded(fl_data_dir: Path, fl_config) -> None:
    from federated import yolo_task

    names = yolo_task.read_dataset(fl_data_dir / "eval" / "data.yaml").names
    first = yolo_task.get_weights(yolo_task.build_model(fl_config.model, names, seed=5))
    again = yolo_task.get_weights(yolo_task.build_model(fl_config.model, names, seed=5))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize(("rounds", "local_epochs", "lrf"), [(5, 1, 0.01), (3, 4, 0.2), (1, 6, 0.5)])
def test_round_learning_rates_follow_one_ultralytics_schedule(
    rounds: int, local_epochs: int, lrf: float
) -> None:
    """Rounds placed one after the other give, epoch by epoch, ultralytics' linear schedule of the run."""
    from federated.config import FederatedConfig
    from federated.yolo_task import round_learning_rate

    config = FederatedConfig(rounds=rounds, local_epochs=local_epochs, lr0=0.01, lrf=lrf)
    total = rounds * local_epochs
    whole_run = [0.01 * (max(1 - e / total, 0) * (1 - lrf) + lrf) for e in range(total)]  # ultralytics' lf
    per_round = []
    for server_round in range(1, rounds + 1):
        lr0, round_lrf = round_learning_rate(config, server_round)
        per_round += [
            lr0 * (max(1 - e / local_epochs, 0) * (1 - round_lrf) + round_lrf) for e in range(local_epochs)
        ]
    assert per_round == pytest.approx(whole_run)
    assert round_learning_rate(config.replace(lrf=1.0), rounds) == pytest.approx((0.01, 1.0))  # constant
    assert round_learning_rate(config, rounds + 3)[0] == pytest.approx(0.01 * lrf)  # past the end: final


@pytest.mark.slow
def test_local_training_starts_exactly_from_the_global_weights_and_fedprox_pulls_back(
    fl_data_dir: Path, fl_config, global_weights
) -> None:
    from federated import yolo_task

    data_yaml = fl_data_dir / "client_0" / "data.yaml"
    seen: dict[str, list[np.ndarray]] = {}

    def at_start(trainer) -> None:
        seen["start"] = yolo_task.get_weights(trainer.model)
        seen["lr"] = [group["lr"] for group in trainer.optimizer.param_groups]

    # nbs=batch: a step per batch, so the term acts; round 2 of 4: the schedule has decayed a quarter
    config = fl_config.replace(optimizer="SGD", lr0=0.05, rounds=4, lrf=0.2)
    plain = yolo_task.train_local(
        global_weights, data_yaml, config, seed=7, server_round=2, callbacks={"on_train_start": at_start}
    )
    assert all(a.tobytes() == b.tobytes() for a, b in zip(global_weights, seen["start"], strict=True))
    assert seen["lr"] == pytest.approx([0.05 * (0.75 * 0.8 + 0.2)] * len(seen["lr"]))
    assert plain.num_examples == yolo_task.count_images(data_yaml, "train") > 0
    assert np.isfinite(plain.train_loss) and plain.seconds > 0
    assert all(w.dtype != np.float16 for w in plain.weights)
    assert [w.shape for w in plain.weights] == [w.shape for w in global_weights]

    repeat = yolo_task.train_local(global_weights, data_yaml, config, seed=7, server_round=2)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(plain.weights, repeat.weights, strict=True)), (
        "a seeded round is deterministic on CPU (resume relies on it)"
    )
    prox = yolo_task.train_local(global_weights, data_yaml, config, seed=7, server_round=2, proximal_mu=50.0)
    assert _norm(prox.weights, global_weights) < _norm(plain.weights, global_weights), (
        "the proximal term pulls the local model towards the global weights"
    )
    raw = yolo_task.train_local(
        global_weights, data_yaml, config.replace(send_weights="raw"), seed=7, server_round=2
    )
    assert any(a.tobytes() != b.tobytes() for a, b in zip(raw.weights, plain.weights, strict=True))


def test_optimizer_state_round_trip_keeps_the_new_rounds_hyperparameters() -> None:
    import torch

    from federated.yolo_task import load_optimizer_state, optimizer_state_arrays

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    first = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.999))
    for _ in range(3):
        first.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        first.step()
    arrays = optimizer_state_arrays(first)
    assert set(arrays) == {f"{i}/{n}" for i in range(4) for n in ("step", "exp_avg", "exp_avg_sq")}
    second = torch.optim.AdamW(model.parameters(), lr=0.002, betas=(0.9, 0.999))
    assert load_optimizer_state(second, arrays) == 3
    assert second.param_groups[0]["lr"] == 0.002, "the round's own learning rate, not the saved one"
    for param in model.parameters():
        assert torch.equal(second.state[param]["exp_avg"], first.state[param]["exp_avg"])
        assert float(second.state[param]["step"]) == 3.0

    untouched = torch.optim.AdamW(model.parameters(), lr=0.002)
    bad_shape = {**arrays, "1/exp_avg": np.zeros(5, np.float32)}
    with pytest.raises(ValueError, match=r"1/exp_avg: shape \(5,\)"):
        load_optimizer_state(untouched, bad_shape)
    with pytest.raises(ValueError, match="parameter 9"):
        load_optimizer_state(untouched, {"9/exp_avg": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="bad key"):
        load_optimizer_state(untouched, {"exp_avg": np.zeros(2, np.float32)})
    assert untouched.state_dict()["state"] == {}, "a rejected state leaves the optimizer fresh"


@pytest.mark.slow
def test_kept_optimizer_state_continues_adam_in_the_next_round(
    fl_data_dir: Path, fl_config, global_weights
) -> None:
    from federated import yolo_task

    data_yaml = fl_data_dir / "client_0" / "data.yaml"
    config = fl_config.replace(optimizer="AdamW", optimizer_state="keep", rounds=2)
    first = yolo_task.train_local(global_weights, data_yaml, config, seed=1, server_round=1)
    assert first.resumed_steps == 0 and first.optimizer_state is not None
    steps = int(first.optimizer_state["0/step"])
    assert steps == -(-yolo_task.count_images(data_yaml, "train") // config.batch)  # one step per batch
    seen: dict[str, object] = {}

    def at_start(trainer) -> None:
        seen["state"] = yolo_task.optimizer_state_arrays(trainer.optimizer)
        seen["lr"] = trainer.optimizer.param_groups[0]["lr"]

    second = yolo_task.train_local(
        first.weights,
        data_yaml,
        config,
        seed=2,
        server_round=2,
        optimizer_state=first.optimizer_state,
        callbacks={"on_train_start": at_start},
    )
    assert second.resumed_steps == steps
    assert all(seen["state"][k].tobytes() == v.tobytes() for k, v in first.optimizer_state.items())
    assert seen["lr"] == pytest.approx(yolo_task.round_learning_rate(config, 2)[0])
    assert int(second.optimizer_state["0/step"]) == 2 * steps
    stateless = yolo_task.train_local(
        first.weights,
        data_yaml,
        config.replace(optimizer_state="reset"),
        seed=2,
        server_round=2,
        optimizer_state=first.optimizer_state,
    )
    assert stateless.resumed_steps == 0 and stateless.optimizer_state is None


@pytest.mark.slow
def test_evaluation_and_ultralytics_export(
    fl_data_dir: Path, fl_config, global_weights, tmp_path: Path
) -> None:
    from ultralytics import YOLO

    from federated import yolo_task

    eval_yaml = fl_data_dir / "eval" / "data.yaml"
    names = yolo_task.read_dataset(eval_yaml).names
    kept = [w.copy() for w in global_weights]
    first = yolo_task.evaluate(global_weights, eval_yaml, fl_config)
    again = yolo_task.evaluate(global_weights, eval_yaml, fl_config)  # cached validator, same answer
    assert (first.map50, first.map50_95) == (again.map50, again.map50_95)
    assert 0.0 <= first.map50_95 <= first.map50 <= 1.0
    assert set(first.per_class) <= set(names.values())
    assert all(a.tobytes() == b.tobytes() for a, b in zip(kept, global_weights, strict=True))

    path = yolo_task.export_ultralytics(global_weights, names, fl_config, tmp_path / "final.pt", {"round": 0})
    yolo = YOLO(str(path))
    assert yolo.task == "detect" and yolo.names == names
    loaded = yolo_task.get_weights(yolo.model)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(global_weights, loaded, strict=True))
