"""Flower 1.42's Deployment Engine messaging, wrapped in this one module: shorter polls, and
rounds that end at their timeout.

Flower 1.42 polls the SuperLink at fixed, hard-coded intervals (a limitation, not configurable):

* ``HttpGrid.send_and_receive`` (the ServerApp's grid in the Deployment Engine) sleeps **3 s**
  between two pulls of the clients' replies (``flwr/superlink/grid/http_grid.py``);
* a SuperNode (``flwr/supernode/start_client_internal.py``) sleeps **3 s** whenever no message is
  waiting for it, and **0.5 s** between checks for its ClientApp's reply.

A round therefore waits on average about 1.5 s for each client to notice its message and 1.5 s for
the ServerApp to notice the last reply: on rounds of a few seconds of training that is most of the
round (``benchmarks/round_overhead.py``). :class:`PromptGrid` wraps any Grid and polls replies at
``poll_interval`` instead; :func:`patch_supernode_polling` caps the SuperNode's sleeps at
``poll_interval``. Each poll is one small request to the SuperLink: 0.2 s is cheap on a handful of
nodes; a large fleet should keep Flower's 3 s (config ``poll_interval: 3``).

``python -m federated.flower_polling --poll-interval S -- <flower-supernode args>`` starts a
SuperNode with the patch (what :func:`federated.deployment.start_supernode` runs).

The same wrapper also bounds a round by its timeout, which Flower 1.42's ``HttpGrid`` does not: a
reply's message reaches the SuperLink before its objects (the weights), and
``HttpGrid.pull_messages`` waits for a pulled reply's objects with ``pull_objects``' defaults (up to
2 h, in practice until the SuperLink drops the sender's object-push session after 180 s). A client
that dies while uploading its reply therefore blocked the ServerApp past ``round_timeout``, and
``send_and_receive`` then returned without pulling the replies of the clients that did finish: the
round failed with no usable update. :class:`PromptGrid` passes the time left in the round to those
object pulls (:func:`_deadline_bounded_pull_objects`) and, when a pull ran past the deadline, pulls
once more for replies that are already complete.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log as flwr_log

from federated.config import FLOWER_POLL_INTERVAL

#: When the pull in progress must give up waiting for a reply's objects (``time.monotonic()``).
_PULL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "fleetfl_pull_deadline", default=None
)


def _deadline_bounded_pull_objects(
    flower_pull_objects: Callable[..., dict[str, bytes]],
) -> Callable[..., dict[str, bytes]]:
    """``flower_pull_objects`` with ``max_time`` set to the time left before :data:`_PULL_DEADLINE`.

    Without a deadline (any caller outside :meth:`PromptGrid.send_and_receive`) Flower's defaults
    apply unchanged. Past the deadline ``max_time`` is 0: objects already uploaded are still pulled,
    one that is not there yet fails at once (Flower turns that into an error reply).
    """

    def pull_objects(*args: Any, **kwargs: Any) -> dict[str, bytes]:
        deadline = _PULL_DEADLINE.get()
        if deadline is not None:
            kwargs["max_time"] = max(0.0, deadline - time.monotonic())
        return flower_pull_objects(*args, **kwargs)

    pull_objects.fleetfl_bounded = True  # type: ignore[attr-defined]
    return pull_objects


def bound_reply_object_pulls() -> None:
    """Make Flower's ``HttpGrid.pull_messages`` honour :class:`PromptGrid`'s round deadline (idempotent).

    Flower 1.42 bug worked around here (see the module docstring): ``HttpGrid.pull_messages`` calls
    ``pull_objects`` without a time limit. Only the name ``pull_objects`` inside
    ``flwr.superlink.grid.http_grid`` is replaced; nothing else in Flower changes.
    """
    from flwr.superlink.grid import http_grid

    if not getattr(http_grid.pull_objects, "fleetfl_bounded", False):
        http_grid.pull_objects = _deadline_bounded_pull_objects(http_grid.pull_objects)


@contextlib.contextmanager
def _pull_deadline(deadline: float | None) -> Iterator[None]:
    token = _PULL_DEADLINE.set(deadline)
    try:
        yield
    finally:
        _PULL_DEADLINE.reset(token)


class PromptGrid(Grid):
    """A Grid that waits for replies with a short poll interval and within the round's timeout.

    Everything but ``send_and_receive`` is the wrapped grid's.

    Args:
        grid: the Grid Flower gave the ServerApp.
        poll_interval: seconds between two pulls of replies (Flower's HttpGrid: 3 s).
    """

    def __init__(self, grid: Grid, poll_interval: float) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        self.inner = grid
        self.poll_interval = float(poll_interval)
        bound_reply_object_pulls()

    def set_run(self, run: Any) -> None:
        """Set the run (delegated)."""
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        """The run (delegated)."""
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message (delegated)."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Connected node ids (delegated)."""
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        """Connected nodes (delegated)."""
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push messages (delegated)."""
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull replies (delegated)."""
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages`` and pull their replies every ``poll_interval`` until all came or ``timeout``.

        The same contract as Flower's ``Grid.send_and_receive``: replies that arrived in time are
        returned, missing ones are simply absent (as are replies to messages the SuperLink refused
        to store). Waiting for a reply's objects ends at the deadline too (that reply comes back as
        an error message); the last pull starts at or after the deadline, so replies completed
        while an earlier pull was waiting are not lost.
        """
        pushed = list(self.push_messages(messages))
        # The SuperLink answers "" for a message it did not store (e.g. its node is gone); Flower
        # 1.42's HttpGrid checks for None instead and would wait for that reply until the timeout.
        pending = {message_id for message_id in pushed if message_id}
        if len(pending) < len(pushed):
            flwr_log(
                logging.WARNING,
                "ServerApp: the SuperLink refused %d of %d message(s); no reply is awaited for them",
                len(pushed) - len(pending),
                len(pushed),
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            last = deadline is not None and time.monotonic() >= deadline
            with _pull_deadline(deadline):
                received = list(self.pull_messages(pending))
            replies.extend(received)
            pending.difference_update(m.metadata.reply_to_message_id for m in received)
            if not pending or last:
                break
            wait = (
                self.poll_interval
                if deadline is None
                else min(self.poll_interval, deadline - time.monotonic())
            )
            time.sleep(max(0.0, wait))
        return replies


def prompt_grid(grid: Grid, poll_interval: float) -> Grid:
    """``grid`` wrapped in :class:`PromptGrid` when it is Flower's ``HttpGrid`` (the Deployment Engine).

    Every ``HttpGrid`` is wrapped, ``poll_interval >= 3`` included (Flower's own interval), because
    the wrapper also keeps the round within its timeout. Other grids are returned unchanged: the
    Simulation Engine's ``InMemoryGrid`` polls every 0.1 s and holds no separately uploaded objects.
    """
    from flwr.superlink.grid import HttpGrid

    if not isinstance(grid, HttpGrid):
        return grid
    if poll_interval < FLOWER_POLL_INTERVAL:
        # Flower's own logger: its records reach the run's log (``flwr log``), this module's would not.
        flwr_log(
            logging.INFO,
            "ServerApp: polling for replies every %.2f s (Flower's HttpGrid: %.0f s)",
            poll_interval,
            FLOWER_POLL_INTERVAL,
        )
    return PromptGrid(grid, poll_interval)


def _capped_time(poll_interval: float) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep`` never sleeps longer than ``poll_interval``."""
    capped = types.ModuleType("time", "time, with sleep() capped (federated.flower_polling)")
    capped.__dict__.update({k: v for k, v in vars(time).items() if not k.startswith("__")})

    def sleep(seconds: float) -> None:
        time.sleep(min(float(seconds), poll_interval))

    capped.sleep = sleep  # type: ignore[attr-defined]
    return capped


def patch_supernode_polling(poll_interval: float) -> None:
    """Cap the SuperNode's hard-coded sleeps (3 s idle, 0.5 s reply waits) at ``poll_interval``.

    Only ``flwr.supernode.start_client_internal`` sees the capped ``time`` module; nothing else in
    the process changes.
    """
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
    from flwr.supernode import start_client_internal

    start_client_internal.time = _capped_time(poll_interval)  # type: ignore[attr-defined]
    print(
        f"SuperNode: polling for messages every {poll_interval:.2f} s "
        f"(Flower's own: {FLOWER_POLL_INTERVAL:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``flower-supernode`` with :func:`patch_supernode_polling` applied.

    Usage: ``python -m federated.flower_polling --poll-interval S -- <flower-supernode arguments>``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "--poll-interval" or args[2] != "--":
        print("usage: python -m federated.flower_polling --poll-interval S -- ARGS...", file=sys.stderr)
        return 2
    try:
        interval = float(args[1])
        patch_supernode_polling(interval)
    except ValueError as exc:
        print(f"--poll-interval: {exc}", file=sys.stderr)
        return 2
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *args[3:]]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
