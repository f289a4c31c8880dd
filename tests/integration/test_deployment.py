"""Flower's Deployment Engine on 127.0.0.1: TLS material, the daemons, clean shutdown, the real app.

Two kinds of runs:

* a tiny numpy Flower app written into ``tmp_path`` (real SuperLink, SuperNodes, ``flwr run``; no
  torch) checks the machinery: TLS and ``--insecure``, both ClientApp isolations, listening
  addresses, that every process is gone afterwards;
* FleetFL's own app (``fleetfl federate --engine deployment`` / ``run_federated``: real ultralytics
  training at 64 px, 1 epoch, a small detector yaml) checks the outputs of a TLS run and what
  happens when a client dies mid-round (with ``min_clients`` met, and not met).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from cryptography import x509

from federated import deployment as dep
from federated.processes import ProcessSet
from federated.tls import TLSError, ensure_node_key, ensure_tls

# ---------------------------------------------------------------------- helpers
TOY_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "toyfl"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "fleetfl-tests"

[tool.flwr.app.components]
serverapp = "toyfl.server:app"
clientapp = "toyfl.client:app"

[tool.flwr.app.config]
num-rounds = 2
"""

TOY_CLIENT = """\
import os

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = [a + 1.0 for a in msg.content["arrays"].to_numpy_ndarrays()]
    metrics = MetricRecord({"num-examples": 1 + int(context.node_config["partition-id"]), "pid": os.getpid()})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)
"""

TOY_SERVER = """\
import json
import os

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(4, dtype=np.float32)]),
                            num_rounds=int(context.run_config["num-rounds"]))
    out = {"weights": result.arrays.to_numpy_ndarrays()[0].tolist(), "cwd": os.getcwd()}
    with open("toy_result.json", "w", encoding="utf-8") as handle:
        json.dump(out, handle)
"""


def write_toy_app(root: Path) -> Path:
    """A two-file numpy Flower app: FedAvg over clients that add 1 to every weight."""
    (root / "toyfl").mkdir(parents=True)
    (root / "pyproject.toml").write_text(TOY_PYPROJECT)
    (root / "toyfl" / "__init__.py").write_text("")
    (root / "toyfl" / "client.py").write_text(TOY_CLIENT)
    (root / "toyfl" / "server.py").write_text(TOY_SERVER)
    return root


def processes_of(flwr_home: Path) -> list[psutil.Process]:
    """Live processes whose environment names ``flwr_home`` (everything a deployment started)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("FLWR_HOME") == str(flwr_home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


# ---------------------------------------------------------------------- TLS
def test_tls_material_is_created_private_and_reused(tmp_path: Path) -> None:
    material = ensure_tls(tmp_path)
    for key in (material.ca_key, material.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate(material.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(material.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)

    before = {p: p.read_bytes() for p in (material.ca_cert, material.server_cert, material.server_key)}
    again = ensure_tls(tmp_path)
    assert again == material
    assert {p: p.read_bytes() for p in before} == before  # reused, not regenerated


def test_tls_renews_only_what_is_invalid(tmp_path: Path) -> None:
    material = ensure_tls(tmp_path)
    ca_before = material.ca_cert.read_bytes()
    material.server_cert.write_text("not a certificate")
    renewed = ensure_tls(tmp_path)
    assert renewed.ca_cert.read_bytes() == ca_before  # the CA stays: nodes keep trusting it
    x509.load_pem_x509_certificate(renewed.server_cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca_before)
    )

    server_before = renewed.server_cert.read_bytes()
    wider = ensure_tls(tmp_path, hosts=("127.0.0.1", "localhost", "10.0.0.5"))
    assert wider.server_cert.read_bytes() != server_before  # a new host needs a new certificate
    sans = x509.load_pem_x509_certificate(wider.server_cert.read_bytes()).extensions
    ips = sans.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    assert sorted(str(ip) for ip in ips) == ["10.0.0.5", "127.0.0.1"]

    material.ca_key.write_text("garbage")  # a CA that cannot sign any more: everything is remade
    remade = ensure_tls(tmp_path)
    assert remade.ca_cert.read_bytes() != ca_before
    with pytest.raises(TLSError, match="non-empty"):
        ensure_tls(tmp_path, hosts=("127.0.0.1", " "))


# ---------------------------------------------------------------------- weight transport
def test_pack_is_exact_and_aggregates_like_the_arrays() -> None:
    from federated.transport import PackError, pack, unpack

    rng = np.random.default_rng(0)
    weights = [
        rng.standard_normal((16, 3, 3, 3)).astype(np.float32),
        rng.standard_normal(16).astype(np.float32),
        np.array(1234, dtype=np.int64),  # BatchNorm's num_batches_tracked
        np.zeros((0,), dtype=np.float32),
    ]
    packed = pack(weights)
    assert len(packed) == 1 and packed[0].dtype == np.float32
    back = unpack(packed, weights)
    assert all(
        a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        for a, b in zip(back, weights, strict=True)
    )
    # Element-wise aggregation (FedAvg's weighted mean) commutes with packing.
    other = [(w * 3).astype(w.dtype) for w in weights]
    mean_of_packed = unpack([(2 * pack(weights)[0] + 1 * pack(other)[0]) / 3], weights)

    def mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # averaged counters are rounded back
        value = (2 * a.astype(np.float64) + b) / 3
        return (np.rint(value) if a.dtype.kind in "iu" else value).astype(a.dtype)

    packed_of_mean = [mean(a, b) for a, b in zip(weights, other, strict=True)]
    for a, b in zip(mean_of_packed, packed_of_mean, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert pack([np.array([2**40])])[0].dtype == np.float64  # never lossy
    with pytest.raises(PackError, match="needs"):
        unpack([np.zeros(3, dtype=np.float32)], weights)


def test_node_keys_are_private_and_reused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = ensure_node_key(tmp_path, "supernode-0")
    assert stat.S_IMODE(key.private_key.stat().st_mode) == 0o600
    assert key.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    serialization.load_ssh_private_key(key.private_key.read_bytes(), password=None)
    before = key.private_key.read_bytes()
    assert ensure_node_key(tmp_path, "supernode-0") == key and key.private_key.read_bytes() == before
    assert ensure_node_key(tmp_path, "supernode-1").private_key.read_bytes() != before
    with pytest.raises(TLSError, match="plain file name"):
        ensure_node_key(tmp_path, "../escape")


# ---------------------------------------------------------------------- inputs
def test_check_app_rejects_legacy_federations_and_undeclared_keys(tmp_path: Path) -> None:
    app = write_toy_app(tmp_path / "app")
    dep.check_app(app, {"num-rounds": 3})
    with pytest.raises(ValueError, match=r"does not declare the run-config key.*rounds-typo"):
        dep.check_app(app, {"rounds-typo": 3})
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + '\n[tool.flwr.federations]\ndefault = "x"\n')
    with pytest.raises(ValueError, match=r"legacy.*would rewrite"):
        dep.check_app(app, {})
    with pytest.raises(ValueError, match=r"no pyproject\.toml"):
        dep.check_app(tmp_path, {})
    with pytest.raises(ValueError, match="num_clients"):
        dep.run_deployment({}, 0, tmp_path, tmp_path / "run", app_dir=app)


def test_node_config_and_environment() -> None:
    text = dep.format_node_config(
        {"partition-id": 1, "num-partitions": 3, "data-dir": "/d a/x", "gpu": False}
    )
    assert text == 'partition-id=1 num-partitions=3 data-dir="/d a/x" gpu=false'
    from flwr.common.config import parse_config_args

    assert parse_config_args([text]) == {
        "partition-id": 1,
        "num-partitions": 3,
        "data-dir": "/d a/x",
        "gpu": False,
    }
    env = dep.flower_env(Path("/tmp/fh"), base={"PATH": "/usr/bin"})
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_HOME"] == "/tmp/fh"


def test_forked_clientapp_forgets_only_the_repository_modules(repo_root: Path) -> None:
    """The warm launcher's children load the app from the FAB: repository modules are dropped, the
    preloaded libraries (numpy here; torch and ultralytics in real use, even from a venv inside the
    repository) stay."""
    code = (
        "import sys, numpy, federated.transport\n"
        "from federated.clientapp_forkserver import _forget_project_modules\n"
        "_forget_project_modules()\n"
        "assert 'numpy' in sys.modules and 'federated.transport' not in sys.modules, sorted(sys.modules)\n"
        "assert not [m for m in sys.modules if m == 'federated' or m.startswith('federated.')]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=True)


# ---------------------------------------------------------------------- the daemons, with a toy app
@pytest.mark.slow
@pytest.mark.parametrize(
    ("insecure", "mode"),
    [(False, "warm"), (True, "subprocess")],
    ids=["tls-warm", "insecure-subprocess"],
)
def test_toy_app_runs_and_every_process_stops(tmp_path: Path, insecure: bool, mode: str) -> None:
    app = write_toy_app(tmp_path / "app")
    run_dir = tmp_path / "run"
    seen_listeners: list[set[tuple[str, int]]] = []
    original = dep.start_superlink

    def spy(*args, **kwargs):  # record what the SuperLink listens on while it runs
        handle = original(*args, **kwargs)
        seen_listeners.append(dep.listening_addresses(handle.process.pid))
        return handle

    dep.start_superlink = spy
    try:
        result = dep.run_deployment(
            {"num-rounds": 2}, 2, tmp_path / "data", run_dir, insecure=insecure, app_dir=app,
            state_dir=tmp_path / "state", clientapp_mode=mode, timeout_s=240, echo=False,
        )  # fmt: skip
    finally:
        dep.start_superlink = original

    assert result.status == "finished:completed" and result.tls is (not insecure)
    assert result.node_auth is (not insecure)  # on by default with TLS
    weights = json.loads((run_dir / "toy_result.json").read_text())["weights"]
    assert weights == [2.0, 2.0, 2.0, 2.0]  # two rounds of "+1", averaged
    assert (tmp_path / "state" / "tls" / "ca.crt").is_file() is (not insecure)
    assert seen_listeners and seen_listeners[0] and all(host == "127.0.0.1" for host, _ in seen_listeners[0])
    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert {"superlink.log", "supernode-0.log", "supernode-1.log", "serverapp.log"} <= logs
    if mode == "warm":
        assert {"clientapp-0.log", "clientapp-1.log"} <= logs
        assert "forked ClientApp process" in (run_dir / "logs" / "clientapp-0.log").read_text()
    config = (run_dir / "flwr" / "config.toml").read_text()
    assert ("insecure = true" in config) is insecure and ("root-certificates" in config) is (not insecure)
    deadline = time.monotonic() + 10
    while processes_of(run_dir / "flwr") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(run_dir / "flwr") == []


@pytest.mark.slow
def test_superlink_refuses_unregistered_supernodes(tmp_path: Path) -> None:
    """SuperNode authentication: a registered key gets in, any other key is refused."""
    tls = ensure_tls(tmp_path / "state")
    env = dep.flower_env(tmp_path / "flwr")
    with ProcessSet(tmp_path / "logs", env) as procs:
        link = dep.start_superlink(procs, tls=tls, node_auth=True, cwd=tmp_path)
        dep.write_flower_config(tmp_path / "flwr", link.address, tls.ca_cert)
        cli = dep.FlwrCLI(env, cwd=tmp_path)
        good = ensure_node_key(tmp_path / "state", "good")
        cli.register_node(good.public_key)
        rogue = ensure_node_key(tmp_path / "state", "rogue")
        common = {"root_certificates": tls.ca_cert, "clientapp_mode": "subprocess"}
        member = dep.start_supernode(
            procs, link.address, {"partition-id": 0}, name="good", auth_key=good.private_key, **common
        )
        intruder = dep.start_supernode(
            procs, link.address, {"partition-id": 1}, name="rogue", auth_key=rogue.private_key, **common
        )
        dep.wait_for_nodes(cli, [member], procs, timeout_s=60)
        assert intruder.process.popen.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in intruder.process.log_tail()
        assert cli.online_nodes() == 1 and member.process.alive()
    with pytest.raises(ValueError, match="needs TLS"):
        dep.start_superlink(ProcessSet(tmp_path / "logs2"), tls=None, node_auth=True)


def test_stop_kills_helpers_that_outlive_their_parent(tmp_path: Path) -> None:
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); time.sleep(60)"  # noqa: E501
    with ProcessSet(tmp_path / "logs") as procs:
        parent = procs.start("parent", [sys.executable, "-c", script])
        deadline = time.monotonic() + 10
        while len(procs.live_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = procs.live_pids()
        assert len(pids) == 2
        os.kill(parent.pid, 9)  # the helper (own session) is orphaned, but still recorded
        parent.popen.wait()
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


# ---------------------------------------------------------------------- FleetFL's app
TINY = ["rounds=2", "imgsz=64", "batch=4", "local_epochs=1", "workers=0", "device=cpu"]

#: A real ultralytics detector of 81 state_dict arrays (0.1 M parameters) for the 3-client failure runs:
#: they test failure handling, not the model, and three yolov9t clients would triple their CPU time.
MINI_DETECTOR_YAML = """\
nc: 10
scales:
  n: [0.25, 0.25, 1024]
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
  - [-1, 1, Conv, [32, 3, 2]]
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [64, 3, 2]]
head:
  - [[2, 3], 1, Detect, [nc]]
"""


@pytest.fixture(scope="module")
def mini_detector(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of :data:`MINI_DETECTOR_YAML` (an ultralytics model yaml, 0.1 M parameters)."""
    path = tmp_path_factory.mktemp("models") / "mini-detector.yaml"
    path.write_text(MINI_DETECTOR_YAML)
    return f"model={path}"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic 64 px scenes: an evaluation split and 2 IID clients of about 8 images each."""
    from datasets.prepare import prepare

    out = tmp_path_factory.mktemp("deployment-data") / "data"
    prepare("synthetic:22", clients=2, split="iid", seed=0, out=out, imgsz=64)
    return out


@pytest.fixture(scope="module")
def three_client_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic 64 px scenes for 3 clients of about 6 images each."""
    from datasets.prepare import prepare

    out = tmp_path_factory.mktemp("deployment-data3") / "data"
    prepare("synthetic:24", clients=3, split="iid", seed=1, out=out, imgsz=64)
    return out


@pytest.mark.slow
def test_federate_deployment_over_tls(tiny_data: Path, tmp_path: Path) -> None:
    """``fleetfl federate --engine deployment``: 2 clients x 2 rounds over TLS, all outputs written."""
    from federated import run_dir as rd
    from pipelines.cli import main

    run_dir = tmp_path / "run"
    argv = ["federate", "--engine", "deployment", "--data", str(tiny_data), "--out", str(run_dir)]
    for item in [*TINY, "optimizer_state=keep"]:  # the default model (yolov9t)
        argv += ["--set", item]
    assert main(argv) == 0

    rows = rd.read_metrics(run_dir)
    assert [row["round"] for row in rows] == [1, 2]
    assert all({"map50", "map50_95", "round_seconds"} <= set(row) for row in rows)
    assert all(len(row["clients"]) == 2 and {c["status"] for c in row["clients"]} == {"ok"} for row in rows)
    # optimizer_state=keep: each SuperNode kept its client's AdamW state in its Flower context
    assert [c["resumed_optimizer_steps"] for c in rows[0]["clients"]] == [0, 0]
    assert all(c["resumed_optimizer_steps"] > 0 for c in rows[1]["clients"])
    assert rd.list_checkpoints(run_dir) == [1, 2]
    assert (run_dir / "final.pt").stat().st_size > 1_000_000 and (run_dir / "map.png").stat().st_size > 0
    # TLS: the SuperLink served the local CA's certificate, and flwr trusted exactly that CA.
    state_tls = Path(os.environ["FLEETFL_HOME"]) / "tls"
    config = (run_dir / "flwr" / "config.toml").read_text()
    assert f'root-certificates = "{state_tls / "ca.crt"}"' in config and "insecure" not in config
    superlink_log = (run_dir / "logs" / "superlink.log").read_text()
    assert "https://127.0.0.1" in superlink_log.lower() or "Uvicorn running on https" in superlink_log
    # Flower's fixed 3 s polls were shortened on both sides (federated/flower_polling.py).
    assert "polling for replies every 0.20 s" in (run_dir / "logs" / "serverapp.log").read_text()
    for node in (0, 1):
        assert "polling for messages every 0.20 s" in (run_dir / "logs" / f"supernode-{node}.log").read_text()
    assert processes_of(run_dir / "flwr") == []


def _kill_node_mid_round(
    run_dir: Path, partition: int, server_round: int, graceful: bool = False, timeout_s: float = 900
) -> None:
    """When node ``partition`` has started its ClientApp for ``server_round``, kill the SuperNode, its
    warm launcher and the ClientApp: SIGKILL (a car that loses power mid-round), or with ``graceful``
    SIGTERM to the SuperNode (a car switched off: it deactivates itself) and SIGKILL to the rest."""
    log = run_dir / "logs" / f"clientapp-{partition}.log"
    deadline = time.monotonic() + timeout_s
    while not (log.is_file() and log.read_text(errors="replace").count("forked ClientApp") >= server_round):
        assert time.monotonic() < deadline, f"node {partition} never started round {server_round}"
        time.sleep(0.2)
    live = processes_of(run_dir / "flwr")
    node = [
        p
        for p in live
        if any(a.endswith("flower-supernode") or a == "federated.flower_polling" for a in p.cmdline())
        and any(f"partition-id={partition} " in a + " " for a in p.cmdline())
    ]
    assert len(node) == 1, f"expected one SuperNode with partition-id={partition}, found {len(node)}"
    launcher = [p for p in live if f"--parent-pid {node[0].pid}" in " ".join(p.cmdline())]
    victims = []
    for proc in node + launcher:
        with contextlib.suppress(psutil.Error):
            victims += [proc, *proc.children(recursive=True)]
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            if graceful and proc.pid == node[0].pid:
                proc.terminate()
            else:
                proc.kill()


def _run_in_thread(**kwargs) -> tuple[threading.Thread, dict]:
    """``run_federated(engine="deployment")`` in a thread; the dict gets ``result`` or ``error``."""
    from federated.engine import run_federated

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = run_federated(engine="deployment", **kwargs)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.slow
def test_killed_client_round_completes_with_the_others(
    three_client_data: Path, mini_detector: str, tmp_path: Path
) -> None:
    """3 clients, min_clients 2: killing one SuperNode in round 2 leaves a complete run of the others."""
    from federated import run_dir as rd
    from federated.config import FederatedConfig

    run_dir = tmp_path / "run"
    config = FederatedConfig().with_overrides([*TINY, mini_detector, "min_clients=2"])
    thread, outcome = _run_in_thread(config=config, data_dir=three_client_data, out_dir=run_dir, echo=False)
    _kill_node_mid_round(run_dir, partition=2, server_round=2)
    thread.join(timeout=900)
    assert not thread.is_alive(), "the run did not finish after a client died"
    assert "error" not in outcome, outcome.get("error")
    rows = rd.read_metrics(run_dir)
    assert [row["round"] for row in rows] == [1, 2]
    assert sorted(c["partition_id"] for c in rows[0]["clients"] if c["status"] == "ok") == [0, 1, 2]
    assert sorted(c["partition_id"] for c in rows[1]["clients"] if c["status"] == "ok") == [0, 1]
    assert rd.list_checkpoints(run_dir) == [1, 2] and (run_dir / "final.pt").is_file()
    assert processes_of(run_dir / "flwr") == []


@pytest.mark.slow
def test_killed_client_below_min_clients_stops_with_checkpoint_intact(
    three_client_data: Path, mini_detector: str, tmp_path: Path
) -> None:
    """3 clients, min_clients 3: a SuperNode stopped (SIGTERM; its ClientApp SIGKILLed) in round 2
    stops the run with a clear error; the round-1 checkpoint stays loadable."""
    from federated import run_dir as rd
    from federated.config import FederatedConfig

    run_dir = tmp_path / "run"
    config = FederatedConfig().with_overrides([*TINY, mini_detector, "min_clients=3"])
    thread, outcome = _run_in_thread(config=config, data_dir=three_client_data, out_dir=run_dir, echo=False)
    _kill_node_mid_round(run_dir, partition=1, server_round=2, graceful=True)
    thread.join(timeout=900)
    assert not thread.is_alive(), "the run did not stop after a client died"
    error = outcome.get("error")
    assert isinstance(error, dep.DeploymentError), outcome
    assert "finished:failed" in str(error) and "min_clients is 3" in str(error)
    assert rd.list_checkpoints(run_dir) == [1]
    assert rd.load_checkpoint(run_dir).round == 1
    assert [row["round"] for row in rd.read_metrics(run_dir)] == [1]
    assert processes_of(run_dir / "flwr") == []
