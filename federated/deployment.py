"""Flower's Deployment Engine on one machine: a SuperLink, one SuperNode per client, ``flwr run``.

:func:`run_deployment` is what ``fleetfl federate --engine deployment`` runs (through
``federated.engine.run_federated``). It

1. makes (or reuses) a local CA and SuperLink certificate (:mod:`federated.tls`) unless ``insecure``;
2. starts ``flower-superlink`` on a free port of 127.0.0.1 (in Flower 1.42 one HTTPS port serves the
   Fleet, Control and ServerAppIo/Runtime APIs; every listening socket is checked to be on the
   requested host) with runtime dependency installation off and, with TLS, SuperNode
   authentication (one key pair per SuperNode, registered with ``flwr supernode register``);
3. starts one ``flower-supernode`` per client, each with its own Runtime API port and
   ``--node-config "partition-id=i num-partitions=K data-dir=..."``; by default each SuperNode runs
   in ``--isolation process`` next to a warm ClientApp launcher
   (:mod:`federated.clientapp_forkserver`) so that a message does not pay torch's and ultralytics'
   imports again;
4. writes a Flower ``config.toml`` (``FLWR_HOME`` inside the run dir) naming the SuperLink and its
   root certificate, waits until every SuperNode is registered, submits the app with
   ``flwr run <app dir> <connection> --run-config <toml>``, streams the ServerApp's log and waits for
   the run to finish;
5. stops every process it started, also on errors and Ctrl-C (process sessions, SIGTERM, then
   SIGKILL; helpers Flower starts are tracked too).

Logs: ``RUN_DIR/logs/{superlink,supernode-<i>,clientapp-<i>,serverapp}.log``.

Lower-level pieces for a distributed set-up (the ClearML pipeline): :func:`start_superlink` (a
SuperLink alone, reporting its address) and :func:`start_supernode` (a client machine's SuperNode
pointing at a SuperLink address).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from federated.config import DEFAULT_POLL_INTERVAL, FLOWER_POLL_INTERVAL
from federated.processes import (
    ManagedProcess,
    ProcessDiedError,
    ProcessSet,
    free_port,
    listening_addresses,
    wait_for_port,
)
from federated.runtime import PROJECT_ROOT, configure_offline
from federated.tls import TLSMaterial, ensure_node_key, ensure_tls

LOG = logging.getLogger(__name__)

Scalar = bool | int | float | str

#: Name of the SuperLink connection FleetFL writes into ``$FLWR_HOME/config.toml``.
CONNECTION_NAME = "fleetfl"
#: ClientApp isolation: ``warm`` (fork server, default) or ``subprocess`` (Flower's default).
CLIENTAPP_MODES = ("warm", "subprocess")


class DeploymentError(RuntimeError):
    """The federated run failed or could not start; the message says which process and why."""


@dataclass
class SuperLinkHandle:
    """A running SuperLink.

    Attributes:
        process: the ``flower-superlink`` process.
        host: the address it listens on.
        port: its one HTTP(S) port (Fleet, Control and Runtime APIs share it in Flower 1.42).
        tls: the certificate material, ``None`` when insecure.
    """

    process: ManagedProcess
    host: str
    port: int
    tls: TLSMaterial | None

    @property
    def address(self) -> str:
        """``host:port`` for SuperNodes (``--superlink``) and for ``flwr`` (``config.toml``)."""
        return f"{self.host}:{self.port}"


@dataclass
class SuperNodeHandle:
    """A running SuperNode (and its warm ClientApp launcher, if any)."""

    name: str
    process: ManagedProcess
    runtime_port: int
    node_config: dict[str, Scalar]
    launcher: ManagedProcess | None = None

    @property
    def processes(self) -> list[ManagedProcess]:
        """The SuperNode process and its launcher."""
        return [self.process] + ([self.launcher] if self.launcher else [])


@dataclass
class DeploymentResult:
    """What :func:`run_deployment` reports."""

    run_id: int
    status: str
    seconds: float
    log_dir: Path
    superlink_address: str
    tls: bool
    node_auth: bool
    run_info: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------- environment
def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower's processes.

    Flower's daemons start ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name,
    so this interpreter's ``bin`` folder goes first on ``PATH`` (a venv that is not activated works).
    Telemetry is off, and ``FLWR_HOME`` points to ``flwr_home``.
    """
    env = dict(base if base is not None else os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p]])
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The repository must be importable by the warm launcher (python -m federated...).
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    return env


def write_flower_config(
    flwr_home: Path, address: str, root_certificates: Path | None, name: str = CONNECTION_NAME
) -> Path:
    """Write ``flwr_home/config.toml`` with one SuperLink connection (TLS unless no certificate)."""
    connection: dict[str, object] = {"address": address}
    if root_certificates is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps({"superlink": {"default": name, name: connection}}), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------- daemons
def start_superlink(
    procs: ProcessSet,
    *,
    tls: TLSMaterial | None,
    host: str = "127.0.0.1",
    port: int | None = None,
    cwd: Path | None = None,
    node_auth: bool = False,
    timeout_s: float = 60.0,
) -> SuperLinkHandle:
    """Start ``flower-superlink`` and wait until it accepts connections.

    Args:
        procs: the process set that owns it (and stops it).
        tls: certificate material; ``None`` starts it with ``--insecure`` (explicit opt-out).
        host: the address to bind (127.0.0.1 unless other machines must reach it).
        port: its port; a free one when ``None``.
        cwd: working directory of the SuperLink and so of the ServerApp it starts.
        node_auth: accept only SuperNodes whose public key was registered (``FlwrCLI.register_node``);
            needs TLS.
        timeout_s: how long to wait for it to listen.

    Raises:
        DeploymentError: it exited, did not listen in time, or listens somewhere unexpected.
    """
    port = port or free_port(host)
    argv = [
        "flower-superlink",
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]
    argv += tls.superlink_args() if tls is not None else ["--insecure"]
    if node_auth:
        if tls is None:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it with --insecure)")
        argv.append("--enable-supernode-auth")
    process = procs.start("superlink", argv, cwd=cwd)
    try:
        wait_for_port(host, port, timeout_s, process)
    except (ProcessDiedError, TimeoutError) as exc:
        raise DeploymentError(f"the SuperLink did not start: {exc}") from exc
    unexpected = {addr for addr in listening_addresses(process.pid) if addr[0] != host}
    if unexpected:
        raise DeploymentError(f"the SuperLink listens on unexpected addresses: {sorted(unexpected)}")
    LOG.info("SuperLink listening on %s (%s)", f"{host}:{port}", "TLS" if tls else "insecure")
    return SuperLinkHandle(process=process, host=host, port=port, tls=tls)


def start_supernode(
    procs: ProcessSet,
    superlink_address: str,
    node_config: Mapping[str, Scalar],
    *,
    name: str = "supernode",
    root_certificates: Path | None,
    runtime_tls: TLSMaterial | None = None,
    runtime_port: int | None = None,
    clientapp_mode: str = "warm",
    auth_key: Path | None = None,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    timeout_s: float = 60.0,
) -> SuperNodeHandle:
    """Start ``flower-supernode`` connecting to ``superlink_address`` (a client machine's part).

    Args:
        procs: the process set that owns it.
        superlink_address: ``host:port`` of the SuperLink's Fleet API.
        node_config: this node's settings (``partition-id``, ``num-partitions``, ``data-dir``...).
        name: log name (``<name>.log``; the launcher logs to ``clientapp-<suffix>.log``).
        root_certificates: CA certificate that signed the SuperLink's; ``None`` connects insecurely.
        runtime_tls: certificate material for the SuperNode's own Runtime API (ClientApp <->
            SuperNode, on 127.0.0.1); ``None`` serves it as plain HTTP on loopback.
        runtime_port: port of that Runtime API; a free one when ``None``.
        clientapp_mode: ``warm`` (fork server, see :mod:`federated.clientapp_forkserver`) or
            ``subprocess`` (Flower's default: a new ``flwr-clientapp`` process per message).
        auth_key: this node's private key (``NodeKey.private_key``) when the SuperLink authenticates
            SuperNodes; its public key must be registered first.
        poll_interval: seconds between the SuperNode's polls for messages (Flower's own: 3 s; a
            shorter one runs it through :mod:`federated.flower_polling`).
        timeout_s: how long to wait for its Runtime API to listen.
    """
    if clientapp_mode not in CLIENTAPP_MODES:
        raise ValueError(
            f"clientapp_mode: expected one of {', '.join(CLIENTAPP_MODES)}, got {clientapp_mode!r}"
        )
    runtime_port = runtime_port or free_port()
    argv, cwd = ["flower-supernode"], None
    if poll_interval < FLOWER_POLL_INTERVAL:  # Flower's own SuperNode, with its 3 s polls shortened
        argv = [sys.executable, "-m", "federated.flower_polling", "--poll-interval", str(poll_interval), "--"]
        cwd = PROJECT_ROOT
    argv += ["--superlink", superlink_address, "--host", "127.0.0.1"]
    argv += ["--port", str(runtime_port), "--node-config", format_node_config(node_config)]
    argv += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    if runtime_tls is not None:
        argv += runtime_tls.superlink_args()  # same three flags: CA, certificate, key
    if clientapp_mode == "warm":
        argv += ["--isolation", "process"]
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key)]
    process = procs.start(name, argv, cwd=cwd)
    try:
        wait_for_port("127.0.0.1", runtime_port, timeout_s, process)
    except (ProcessDiedError, TimeoutError) as exc:
        raise DeploymentError(f"{name} did not start: {exc}") from exc
    launcher = None
    if clientapp_mode == "warm":
        largv = [sys.executable, "-m", "federated.clientapp_forkserver"]
        largv += ["--runtime-api-address", f"127.0.0.1:{runtime_port}", "--parent-pid", str(process.pid)]
        largv += ["--root-certificates", str(runtime_tls.ca_cert)] if runtime_tls else ["--insecure"]
        suffix = name.rsplit("-", 1)[-1] if "-" in name else name
        launcher = procs.start(f"clientapp-{suffix}", largv, cwd=PROJECT_ROOT)
    return SuperNodeHandle(
        name=name,
        process=process,
        runtime_port=runtime_port,
        node_config=dict(node_config),
        launcher=launcher,
    )


def format_node_config(node_config: Mapping[str, Scalar]) -> str:
    """``--node-config`` text: space-separated ``key=value`` with TOML values (strings quoted)."""
    parts = []
    for key, value in node_config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(str(value))  # a TOML basic string
        parts.append(f"{key}={text}")
    return " ".join(parts)


# ---------------------------------------------------------------------- the flwr CLI
class FlwrCLI:
    """Runs ``flwr`` commands against one SuperLink connection (JSON output parsed)."""

    def __init__(self, env: Mapping[str, str], connection: str = CONNECTION_NAME, cwd: Path | None = None):
        self.env = dict(env)
        self.connection = connection
        self.cwd = cwd

    def json(self, *args: str, timeout_s: float = 120.0) -> dict[str, object]:
        """Run ``flwr <args> --format json`` and return its JSON (``DeploymentError`` on failure)."""
        argv = ["flwr", *args, "--format", "json"]
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                cwd=self.cwd,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"`{' '.join(argv)}` did not answer within {timeout_s:.0f} s") from exc
        data = _last_json_object(done.stdout)
        if done.returncode != 0 or not isinstance(data, dict) or not data.get("success", False):
            detail = (data or {}).get("error-message") if isinstance(data, dict) else None
            raise DeploymentError(
                f"`{' '.join(argv)}` failed (exit {done.returncode}): "
                f"{detail or (done.stderr or done.stdout).strip()[-2000:]}"
            )
        return data

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink reports online."""
        data = self.json("supernode", "list", self.connection)
        nodes = data.get("nodes", [])
        return sum(1 for node in nodes if str(node.get("status", "")).lower() == "online")

    def register_node(self, public_key: Path) -> int:
        """``flwr supernode register``: allow the SuperNode holding this key in; return its node id."""
        data = self.json("supernode", "register", str(public_key), self.connection)
        return int(str(data["node-id"]))

    def submit(self, app_dir: Path, run_config_file: Path | None) -> int:
        """``flwr run``: build the FAB of ``app_dir``, submit it, return the run id."""
        args = ["run", str(app_dir), self.connection]
        if run_config_file is not None:
            args += ["--run-config", str(run_config_file)]
        data = self.json(*args, timeout_s=300.0)
        return int(str(data["run-id"]))

    def run_info(self, run_id: int) -> dict[str, object]:
        """``flwr ls --run-id``: the run's status, timings and traffic."""
        data = self.json("ls", self.connection, "--run-id", str(run_id))
        runs = data.get("runs") or []
        if not runs:
            raise DeploymentError(f"the SuperLink does not know run {run_id}")
        return dict(runs[0])

    def stop(self, run_id: int) -> None:
        """``flwr stop``: ask the SuperLink to stop the run (errors ignored)."""
        with contextlib.suppress(DeploymentError):
            self.json("stop", str(run_id), self.connection, timeout_s=30.0)


def wait_for_nodes(
    cli: FlwrCLI, nodes: list[SuperNodeHandle], procs: ProcessSet, timeout_s: float = 120.0
) -> None:
    """Wait until every SuperNode in ``nodes`` is registered and online at the SuperLink."""
    deadline = time.monotonic() + timeout_s
    while True:
        for node in nodes:
            for proc in node.processes:
                if not proc.alive():
                    raise DeploymentError(
                        f"{proc.name} exited with code {proc.popen.returncode}; its log "
                        f"({proc.log_path}):\n{proc.log_tail()}"
                    )
        online = cli.online_nodes()
        if online >= len(nodes):
            return
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"only {online} of {len(nodes)} SuperNodes registered after {timeout_s:.0f} s"
            )
        time.sleep(1.0)


def _echo_file(path: Path, stop: threading.Event) -> None:
    """Copy new lines of ``path`` to stdout until ``stop`` is set (the ServerApp's progress)."""
    position = 0
    while True:
        finished = stop.is_set()
        with contextlib.suppress(OSError), path.open("r", encoding="utf-8", errors="replace") as handle:
            handle.seek(position)
            chunk = handle.read()
            position = handle.tell()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
        if finished:
            return
        stop.wait(0.5)


def wait_for_run(
    cli: FlwrCLI,
    run_id: int,
    procs: ProcessSet,
    superlink: SuperLinkHandle,
    nodes: list[SuperNodeHandle],
    *,
    timeout_s: float | None = None,
    echo: bool = False,
) -> dict[str, object]:
    """Stream the run's log to ``logs/serverapp.log`` and wait until the run has finished.

    Returns:
        The run's final ``flwr ls`` record (``status`` starts with ``finished:``).

    Raises:
        DeploymentError: the SuperLink died, every SuperNode died, or ``timeout_s`` passed (the run
            is stopped first).
    """
    start = time.monotonic()
    log_path = procs.log_dir / "serverapp.log"
    stop_echo = threading.Event()
    echo_thread = None
    if echo:
        log_path.touch()
        echo_thread = threading.Thread(target=_echo_file, args=(log_path, stop_echo), daemon=True)
        echo_thread.start()
    streamer: ManagedProcess | None = None
    last_check = 0.0
    try:
        while True:
            procs.track()
            if not superlink.process.alive():
                raise DeploymentError(
                    f"the SuperLink exited with code {superlink.process.popen.returncode}; its log "
                    f"({superlink.process.log_path}):\n{superlink.process.log_tail()}"
                )
            if not any(node.process.alive() for node in nodes):
                cli.stop(run_id)
                raise DeploymentError(
                    f"every SuperNode has exited; run {run_id} cannot go on. Logs in {procs.log_dir}"
                )
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                cli.stop(run_id)
                raise DeploymentError(f"run {run_id} did not finish within {timeout_s:.0f} s; it was stopped")
            _retire_nodes_without_launcher(nodes)
            streamer_done = streamer is not None and not streamer.alive()
            # Ask the SuperLink when the log stream ended (the run is probably over), else now and then.
            if streamer is None or time.monotonic() - last_check > (5.0 if streamer_done else 30.0):
                last_check = time.monotonic()
                info = cli.run_info(run_id)
                if str(info.get("status", "")).startswith("finished"):
                    if streamer is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            streamer.popen.wait(timeout=10.0)
                    return info
                if streamer is None or streamer_done:  # (re)attach to the log stream
                    streamer = procs.start(
                        "serverapp", ["flwr", "log", str(run_id), cli.connection, "--stream"]
                    )
            time.sleep(0.5)
    finally:
        if streamer is not None and streamer.alive():
            streamer.popen.terminate()
        stop_echo.set()
        if echo_thread is not None:
            echo_thread.join(timeout=5.0)


def _retire_nodes_without_launcher(nodes: list[SuperNodeHandle]) -> None:
    """Stop a SuperNode whose warm ClientApp launcher died: it could take messages but never answer
    them, so its rounds would wait for ``round_timeout``; once stopped, Flower reports it offline and
    the rounds go on with the other clients (as ``min_clients`` allows)."""
    for node in nodes:
        if node.launcher is not None and not node.launcher.alive() and node.process.alive():
            LOG.warning(
                "%s: its ClientApp launcher exited (code %s), stopping the SuperNode; see %s",
                node.name,
                node.launcher.popen.returncode,
                node.launcher.log_path,
            )
            node.process.popen.terminate()


# ---------------------------------------------------------------------- the whole run
def run_deployment(
    run_config: Mapping[str, Scalar],
    num_clients: int,
    data_dir: Path,
    run_dir: Path,
    *,
    insecure: bool = False,
    app_dir: Path = PROJECT_ROOT,
    state_dir: Path | None = None,
    clientapp_mode: str = "warm",
    node_config: Mapping[str, Scalar] | None = None,
    node_auth: bool | None = None,
    timeout_s: float | None = None,
    echo: bool = True,
) -> DeploymentResult:
    """Run the Flower app in ``app_dir`` with the Deployment Engine on this machine.

    Args:
        run_config: Flower run config (flat ``{key: scalar}``, e.g. ``FederatedConfig.to_flat()``
            plus the run's paths); every key must exist in ``[tool.flwr.app.config]`` of the app.
        num_clients: SuperNodes to start (one per data partition ``client_<i>``).
        data_dir: the prepared data (``client_<i>/data.yaml``, ``eval/data.yaml``); each SuperNode
            gets ``partition-id=i num-partitions=K data-dir=<data_dir>`` (its shard is
            ``<data_dir>/client_<i>``).
        run_dir: the run's folder; logs go to ``run_dir/logs``, Flower's home to ``run_dir/flwr``.
        insecure: plain HTTP instead of TLS (an explicit opt-out).
        app_dir: the Flower app to build and run (the repository by default).
        state_dir: where the CA lives (``$FLEETFL_HOME`` / ``<repo>/.fleetfl`` by default) so that
            certificates are reused across runs.
        clientapp_mode: ``warm`` (default) or ``subprocess``, see :func:`start_supernode`.
        node_config: extra node-config entries given to every SuperNode.
        node_auth: SuperNode authentication (a key pair per node, registered at the SuperLink;
            unregistered nodes are refused). Default: on with TLS, off with ``insecure``.
        timeout_s: stop the run (and fail) after this many seconds; ``None`` waits as long as it runs.
        echo: copy the ServerApp's log to stdout while it runs (progress lines).

    Returns:
        The run id, final status and timings.

    Raises:
        ValueError: bad arguments (``num_clients`` < 1, missing folders).
        DeploymentError: a process failed to start, the run failed, or it timed out.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    data_dir, run_dir, app_dir = Path(data_dir).resolve(), Path(run_dir).resolve(), Path(app_dir).resolve()
    check_app(app_dir, run_config)
    state = configure_offline(state_dir, with_ultralytics=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / "flwr"
    env = flower_env(flwr_home)
    tls = None if insecure else ensure_tls(state)
    node_auth = (not insecure) if node_auth is None else node_auth
    config_file = _write_run_config(run_dir, run_config)
    start = time.monotonic()
    with ProcessSet(run_dir / "logs", env) as procs:
        try:
            superlink = start_superlink(procs, tls=tls, cwd=run_dir, node_auth=node_auth)
            write_flower_config(flwr_home, superlink.address, tls.ca_cert if tls else None)
            cli = FlwrCLI(env, cwd=run_dir)
            keys = [ensure_node_key(state, f"supernode-{i}") for i in range(num_clients)] if node_auth else []
            for key in keys:
                cli.register_node(key.public_key)
            nodes = [
                start_supernode(
                    procs,
                    superlink.address,
                    {
                        "partition-id": i,
                        "num-partitions": num_clients,
                        "data-dir": str(data_dir),
                        **(node_config or {}),
                    },
                    name=f"supernode-{i}",
                    root_certificates=tls.ca_cert if tls else None,
                    runtime_tls=tls,
                    clientapp_mode=clientapp_mode,
                    auth_key=keys[i].private_key if keys else None,
                    poll_interval=float(run_config.get("poll_interval", DEFAULT_POLL_INTERVAL)),
                )
                for i in range(num_clients)
            ]
            wait_for_nodes(cli, nodes, procs)
            run_id = cli.submit(app_dir, config_file)
            LOG.info("submitted run %d to %s (%d SuperNodes)", run_id, superlink.address, num_clients)
            try:
                info = wait_for_run(cli, run_id, procs, superlink, nodes, timeout_s=timeout_s, echo=echo)
            except KeyboardInterrupt:
                cli.stop(run_id)
                raise
        except ProcessDiedError as exc:
            raise DeploymentError(str(exc)) from exc
    status = str(info.get("status", ""))
    result = DeploymentResult(
        run_id=run_id,
        status=status,
        seconds=time.monotonic() - start,
        log_dir=run_dir / "logs",
        superlink_address=superlink.address,
        tls=tls is not None,
        node_auth=node_auth,
        run_info=info,
    )
    if status != "finished:completed":
        details = info.get("status-details", "")
        raise DeploymentError(
            f"run {run_id} ended with status {status!r} ({details}); ServerApp log "
            f"{run_dir / 'logs' / 'serverapp.log'}:\n{_tail(run_dir / 'logs' / 'serverapp.log')}"
        )
    return result


def _write_run_config(run_dir: Path, run_config: Mapping[str, Scalar]) -> Path | None:
    """Write the run config as TOML (``flwr run --run-config FILE``: no shell quoting issues)."""
    if not run_config:
        return None
    bad = {k: v for k, v in run_config.items() if not isinstance(v, bool | int | float | str)}
    if bad:
        raise ValueError(f"run_config values must be scalars; not: {sorted(bad)}")
    path = run_dir / "run_config.toml"
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _last_json_object(text: str) -> dict[str, object] | None:
    """The JSON object that ends ``text`` (``flwr`` may print notices before its JSON answer)."""
    start = text.find("{")
    while start != -1:
        try:
            data = json.loads(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return data if isinstance(data, dict) else None
    return None


def check_app(app_dir: Path, run_config: Mapping[str, Scalar]) -> None:
    """Check, before anything starts, that ``flwr run`` will accept the app and the run config.

    Raises:
        ValueError: no ``pyproject.toml``; a legacy ``[tool.flwr.federations]`` section (``flwr`` 1.42
            would rewrite the file to migrate it); or run-config keys that
            ``[tool.flwr.app.config]`` does not declare (``flwr`` only overrides declared keys).
    """
    pyproject = app_dir / "pyproject.toml"
    if not pyproject.is_file():
        raise ValueError(f"{app_dir}: not a Flower app (no pyproject.toml)")
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{pyproject}: not valid TOML ({exc})") from None
    flwr = data.get("tool", {}).get("flwr", {})
    if "federations" in flwr:
        raise ValueError(
            f"{pyproject}: [tool.flwr.federations] is legacy in Flower 1.42 and `flwr run` would rewrite "
            "this file to migrate it; remove the section (FleetFL writes the SuperLink connection into "
            "FLWR_HOME/config.toml itself)"
        )
    declared = set(flwr.get("app", {}).get("config", {}))
    missing = sorted(set(run_config) - declared)
    if missing:
        raise ValueError(
            f"{pyproject}: [tool.flwr.app.config] does not declare the run-config key(s) "
            f"{', '.join(missing)}; `flwr run` accepts only declared keys"
        )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
