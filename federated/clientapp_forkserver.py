"""A warm ClientApp launcher for ``flower-supernode --isolation process`` (a fork server).

Why: a SuperNode in its default ``subprocess`` isolation has its ``flower-superexec`` start a new
``flwr-clientapp`` process for every message (train, evaluate). Each such process imports Python,
Flower, torch and ultralytics again before it can touch the message: seconds per message per client
(numbers in ``docs/deployment.md``). ``flwr-clientapp`` handles exactly one message and then leaves
through ``flwr_exit`` (exit handlers, a force-exit timer, ``sys.exit``), so one process cannot serve
several messages, and module state never survives from one message to the next.

Design: this process replaces the SuperNode's SuperExec. It imports the heavy libraries once, then
polls the SuperNode's Runtime API like Flower's SuperExec does and, for each ClientApp task,
``fork()``s a child that runs Flower's own ``run_clientapp`` for that one message. The child starts
with torch and ultralytics already imported (copy-on-write pages), loads the app from the installed
FAB like ``flwr-clientapp`` would, and exits the same way. Semantics stay those of Flower's
``subprocess`` isolation (a fresh app per message); only the import cost goes. The parent only imports
(it never trains or evaluates, so no OpenMP thread pool or CUDA context exists before a fork); if
CUDA got initialised anyway, it falls back to Flower's subprocess launches.

Run it as ``python -m federated.clientapp_forkserver --runtime-api-address HOST:PORT [--insecure |
--root-certificates CA] --parent-pid SUPERNODE_PID`` next to ``flower-supernode --isolation process``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

LOG = logging.getLogger("fleetfl.forkserver")

#: Imported once in the server, before any fork (the expensive part of a ClientApp's start).
DEFAULT_PRELOAD: tuple[str, ...] = (
    "numpy",
    "torch",
    "torchvision",
    "cv2",
    "ultralytics",
    "ultralytics.nn.tasks",
    "ultralytics.models.yolo.detect",
    # ultralytics' trainer calls torch.use_deterministic_algorithms, whose first call imports
    # torch._inductor and torch._dynamo (1.3-1.6 s on 2 cores): every forked ClientApp paid it per round.
    "torch._inductor",
    "flwr.app",
    "flwr.clientapp",
    "flwr.supernode.runtime.run_clientapp",
)

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def preload(modules: Sequence[str]) -> float:
    """Import ``modules`` (those that exist) and return the seconds it took."""
    start = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            LOG.warning("preload: cannot import %s (%s)", name, exc)
    return time.perf_counter() - start


def _forget_project_modules() -> None:
    """Drop this repository's modules from ``sys.modules`` (in a child, before loading the app).

    The fork server itself lives in ``federated``; without this, Flower's loader would find that
    package already imported and load the ClientApp from the repository instead of the FAB that the
    run shipped.
    """
    root = str(_PROJECT_ROOT) + os.sep
    environment = (str(Path(sys.prefix).resolve()) + os.sep, "site-packages", "dist-packages")
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        # a virtualenv inside the repository (.venv/) holds libraries, not the app: keep those
        if (
            path.startswith(root)
            and not path.startswith(environment[0])
            and not any(marker in path for marker in environment[1:])
        ):
            del sys.modules[name]


class ForkExecutor:
    """A Flower SuperExec executor that forks a pre-warmed child per ClientApp task.

    It implements the ``flwr.supercore.superexec.executor.Executor`` protocol; tasks of any other
    type go to Flower's own ``SubprocessExecutor``.
    """

    def __init__(self) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self._fallback = SubprocessExecutor()
        self._children: set[int] = set()
        self.launched = 0

    def get_eligible_capacity(
        self, supported_task_types: set, *, insecure: bool = False, root_certificates_path: str | None = None
    ) -> tuple[set, set[str]]:
        """Every supported task type can start now (no capacity gate)."""
        return self._fallback.get_eligible_capacity(
            supported_task_types, insecure=insecure, root_certificates_path=root_certificates_path
        )

    def wait_for_capacity(self, *args: object, **kwargs: object) -> None:
        """Forking needs no capacity wait."""

    def launch(self, spec):  # type: ignore[no-untyped-def]  # flwr's ExecutionSpec -> LaunchResult
        """Fork a child that runs Flower's ``run_clientapp`` for the task in ``spec``."""
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP or _cuda_initialised():
            return self._fallback.launch(spec)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child: never returns
            _run_child(spec)
        self._children.add(pid)
        self.launched += 1
        LOG.info("task %d: forked ClientApp process %d", spec.task_id, pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap children that have exited."""
        for pid in list(self._children):
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    LOG.warning("ClientApp process %d exited with code %d", pid, code)
            self._children.discard(pid)

    def close(self) -> None:
        """Terminate children still running (the SuperNode is going away)."""
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while self._children and time.monotonic() < deadline:
            self.reconcile()
            time.sleep(0.05)
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.reconcile()


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _run_child(spec) -> None:  # type: ignore[no-untyped-def]
    """Body of a forked child: run one ClientApp message with Flower's own code, then exit."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _forget_project_modules()
        from flwr.supercore.tls import validate_and_resolve_root_certificates
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(spec.root_certificates_path, spec.insecure),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=False,
        )
        code = 0
    except SystemExit as exc:  # run_clientapp always leaves through flwr_exit -> sys.exit
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a child must never return into the server's loop
        logging.getLogger(__name__).exception("ClientApp child failed")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(
    runtime_api_address: str,
    insecure: bool,
    root_certificates_path: str | None,
    parent_pid: int | None,
    modules: Sequence[str] = DEFAULT_PRELOAD,
) -> None:
    """Preload ``modules``, then run Flower's SuperExec loop with :class:`ForkExecutor`."""
    seconds = preload(modules)
    LOG.info("preloaded %d modules in %.2f s", len(modules), seconds)
    print(f"FORKSERVER preload_s={seconds:.3f}", flush=True)

    from flwr.supercore.superexec import run_superexec as superexec_module

    # Flower 1.42's SuperExec has no hook for a custom local executor (``get_executor`` knows only
    # ``subprocess`` and ``kubernetes``): swap its factory, in this one place, for ours.
    executor = ForkExecutor()
    superexec_module.get_executor = lambda *args, **kwargs: executor  # type: ignore[assignment]
    superexec_module.run_superexec(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates_path,
        parent_pid=parent_pid,
        runtime_dependency_install=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API host:port")
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API")
    tls.add_argument("--root-certificates", help="CA certificate that signed the Runtime API's certificate")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    parser.add_argument("--preload", nargs="*", default=list(DEFAULT_PRELOAD), help="modules to import once")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    serve(args.runtime_api_address, args.insecure, args.root_certificates, args.parent_pid, args.preload)


if __name__ == "__main__":
    main()
