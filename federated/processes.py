"""Start, watch and reliably stop a set of local processes (the Deployment Engine's daemons).

Every process runs in its own session (so a Ctrl-C in the terminal reaches FleetFL, which then stops
them in order) with its output in ``<log_dir>/<name>.log``. Flower's daemons start helpers of their
own (the SuperLink and each SuperNode start a ``flower-superexec``, which starts one
``flwr-serverapp``/``flwr-clientapp`` per task, some in new sessions): :meth:`ProcessSet.track`
records every descendant while they are alive, so that :meth:`ProcessSet.stop` can end them even
after their parent died. Stopping sends SIGTERM to each process and its group, waits, then SIGKILLs
what is left. On Linux each started process also gets SIGTERM when the process that started it dies
without stopping them (SIGKILL, e.g. an agent killing an aborted task): a new session is out of the
reach of the killer's process-group signal, and a SuperLink or SuperNode would otherwise run on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

LOG = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel for SIGTERM when our parent dies (Linux), else None.

    ``prctl`` is looked up here, in the parent: the child, between fork and exec, only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return die_with_parent


class ProcessDiedError(RuntimeError):
    """A managed process exited while it was still needed."""


@dataclass
class ManagedProcess:
    """One started process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the process' log (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float, process: ManagedProcess | None = None) -> None:
    """Wait until ``host:port`` accepts TCP connections.

    Raises:
        ProcessDiedError: ``process`` exited before the port opened.
        TimeoutError: the port did not open within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise ProcessDiedError(
                f"{process.name} exited with code {process.popen.returncode} before listening on "
                f"{host}:{port}; its log ({process.log_path}):\n{process.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The TCP (address, port) pairs that ``pid`` and its descendants listen on."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found: set[tuple[str, int]] = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
    return found


class ProcessSet:
    """The processes one command started; a context manager that stops them all on exit.

    Args:
        log_dir: where ``<name>.log`` files go (created).
        env: the environment of every process (defaults to this process' environment).
    """

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env if env is not None else os.environ)
        self.processes: list[ManagedProcess] = []
        self._known: dict[int, float] = {}  # pid -> create_time of every process seen

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session with stdout and stderr in ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),  # takes no lock in the child: see the function
            )
        proc = ManagedProcess(name=name, popen=popen, log_path=log_path, argv=list(argv))
        self.processes.append(proc)
        self.track()
        LOG.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return proc

    def track(self) -> None:
        """Record every live descendant of the started processes (call it while waiting)."""
        for proc in self.processes:
            try:
                root = psutil.Process(proc.pid)
                family = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for member in family:
                with contextlib.suppress(psutil.Error):
                    self._known.setdefault(member.pid, member.create_time())

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        """Raise :class:`ProcessDiedError` if a process (of ``names``, default all) has exited."""
        for proc in self.processes:
            if (names is None or proc.name in names) and not proc.alive():
                raise ProcessDiedError(
                    f"{proc.name} exited unexpectedly with code {proc.popen.returncode}; "
                    f"its log ({proc.log_path}):\n{proc.log_tail()}"
                )

    def live_pids(self) -> list[int]:
        """Pids of every recorded process that still runs (zombies excluded)."""
        self.track()
        return [p.pid for p in self._live()]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate every recorded process (SIGTERM to it and its group), then kill what remains."""
        self.track()
        victims = self._live()
        if not victims:
            return
        # Started processes last-in first-out (SuperNodes before the SuperLink), then helpers.
        order = {proc.pid: i for i, proc in enumerate(self.processes)}
        victims.sort(key=lambda p: -order.get(p.pid, -1))
        for victim in victims:
            _signal(victim, signal.SIGTERM)
        _, alive = psutil.wait_procs(victims, timeout=timeout_s)
        for victim in alive:
            LOG.warning("process %d did not stop after SIGTERM; killing it", victim.pid)
            _signal(victim, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5.0)
        for proc in self.processes:  # reap our direct children
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1.0)

    def _live(self) -> list[psutil.Process]:
        live = []
        for pid, created in self._known.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    live.append(proc)
            except psutil.Error:
                continue
        return live

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal(proc: psutil.Process, sig: signal.Signals) -> None:
    """Send ``sig`` to ``proc`` and, when it leads its own process group, to that group."""
    with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
