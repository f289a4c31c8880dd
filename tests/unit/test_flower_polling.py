"""Shorter Flower polling (federated/flower_polling.py): the grid wrapper and the SuperNode patch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.serverapp import Grid
from flwr.superlink.grid import HttpGrid

from federated import flower_polling as fp


class ThreadedReplyGrid(Grid):
    """A Grid whose replies arrive from another thread ``delays[i]`` seconds after the i-th push.

    It implements Flower's Grid interface the way a SuperLink behaves (push now, replies later), so
    that :class:`PromptGrid`'s waiting can be checked without a network. Messages are stand-ins with
    what a grid reads of them (``metadata.reply_to_message_id``): a real ``Message`` needs a run.
    """

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.replies: list[Any] = []
        self.pulls = 0
        self.lock = threading.Lock()

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return SimpleNamespace(content=content, dst_node_id=dst_node_id)

    def get_node_ids(self) -> Iterable[int]:
        return range(1, len(self.delays) + 1)

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        ids = []
        for index, _message in enumerate(messages):
            message_id = f"m{index}"
            ids.append(message_id)
            reply = SimpleNamespace(index=index, metadata=SimpleNamespace(reply_to_message_id=message_id))
            timer = threading.Timer(self.delays[index], self._deliver, args=(reply,))
            timer.daemon = True
            timer.start()
        return ids

    def _deliver(self, reply: Any) -> None:
        with self.lock:
            self.replies.append(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        wanted = set(message_ids)
        with self.lock:
            self.pulls += 1
            ready = [r for r in self.replies if r.metadata.reply_to_message_id in wanted]
            self.replies = [r for r in self.replies if r not in ready]
        return ready

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("PromptGrid must not call the wrapped grid's send_and_receive")


def _messages(grid: Grid, count: int) -> list[Any]:
    return [grid.create_message({}, "train", node, "1") for node in range(1, count + 1)]


def test_prompt_grid_returns_every_reply_soon_after_the_last_arrives() -> None:
    inner = ThreadedReplyGrid([0.1, 0.4])
    grid = fp.PromptGrid(inner, poll_interval=0.05)
    start = time.monotonic()
    replies = list(grid.send_and_receive(_messages(grid, 2), timeout=30))
    waited = time.monotonic() - start
    assert sorted(r.index for r in replies) == [0, 1]
    # The last reply came after 0.4 s; Flower's HttpGrid would notice it at the next 3 s poll.
    assert 0.4 <= waited < 2.0
    assert inner.pulls >= 3


def test_prompt_grid_timeout_returns_the_replies_that_came() -> None:
    inner = ThreadedReplyGrid([0.05, 30.0])
    grid = fp.PromptGrid(inner, poll_interval=0.05)
    start = time.monotonic()
    replies = list(grid.send_and_receive(_messages(grid, 2), timeout=0.5))
    assert [r.index for r in replies] == [0]
    assert time.monotonic() - start < 2.0


def test_prompt_grid_delegates_and_validates() -> None:
    inner = ThreadedReplyGrid([0.0])
    grid = fp.PromptGrid(inner, poll_interval=0.1)
    grid.set_run("run-7")
    assert grid.run == "run-7" and list(grid.get_node_ids()) == [1]
    with pytest.raises(ValueError, match="poll_interval"):
        fp.PromptGrid(inner, poll_interval=0)


def test_only_flowers_http_grid_is_wrapped() -> None:
    http = HttpGrid(insecure=True, token="t")  # connects lazily: nothing is contacted here
    assert isinstance(fp.prompt_grid(http, 0.2), fp.PromptGrid)
    assert fp.prompt_grid(http, 3.0) is http  # Flower's own interval: untouched
    other = ThreadedReplyGrid([0.0])
    assert fp.prompt_grid(other, 0.2) is other  # e.g. the simulation's InMemoryGrid (0.1 s already)


def test_supernode_patch_caps_only_the_supernode_module(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal

    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)  # restored after
    fp.patch_supernode_polling(0.05)
    capped = start_client_internal.time
    assert capped is not time and time.sleep is not capped.sleep
    start = time.monotonic()
    capped.sleep(3)  # the SuperNode's idle poll
    capped.sleep(0.5)  # its reply wait
    assert time.monotonic() - start < 1.0
    assert capped.time() == pytest.approx(time.time(), abs=1.0)  # everything else is the real module
    with pytest.raises(ValueError, match="poll_interval"):
        fp.patch_supernode_polling(-1)


def test_launcher_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert fp.main(["--superlink", "127.0.0.1:1"]) == 2
    assert fp.main(["--poll-interval", "abc", "--", "--insecure"]) == 2
    assert "--poll-interval" in capsys.readouterr().err
