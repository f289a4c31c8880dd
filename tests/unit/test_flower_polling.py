"""Shorter Flower polling (federated/flower_polling.py): the grid wrapper and the SuperNode patch.

The round-deadline tests run Flower's real ``HttpGrid`` (and its real object pulls) against
:class:`InMemoryRuntimeApi`, which answers the ServerApp's Runtime API calls the way a SuperLink
does, without a network.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, Metadata, RecordDict
from flwr.app.message import make_message, remove_content_from_message
from flwr.common.serde import message_to_proto
from flwr.proto.message_pb2 import ConfirmMessageReceivedResponse, PullObjectResponse
from flwr.proto.runtime_pb2 import PullAppMessagesResponse, PushAppMessagesResponse
from flwr.serverapp import Grid
from flwr.supercore.date import now
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid import HttpGrid, http_grid

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


def test_only_flowers_http_grid_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_grid, "pull_objects", http_grid.pull_objects)  # restored after
    http = HttpGrid(insecure=True, token="t")  # connects lazily: nothing is contacted here
    assert isinstance(fp.prompt_grid(http, 0.2), fp.PromptGrid)
    flowers_interval = fp.prompt_grid(http, 3.0)  # still wrapped: the round deadline is the wrapper's
    assert isinstance(flowers_interval, fp.PromptGrid) and flowers_interval.poll_interval == 3.0
    other = ThreadedReplyGrid([0.0])
    assert fp.prompt_grid(other, 0.2) is other  # e.g. the simulation's InMemoryGrid (0.1 s already)


class InMemoryRuntimeApi:
    """The SuperLink's Runtime API as the ServerApp's ``HttpGrid`` calls it, in memory.

    The reply to the i-th pushed message appears ``delays[i]`` seconds after the push, sent by the
    destination node. As on a SuperLink, a reply's message is visible before its objects: with
    ``uploaded[i]`` false the objects stay registered but never arrive (the sender died uploading).
    Messages whose index is in ``refused`` are not stored (their id comes back as ``""``).
    """

    def __init__(self, delays: list[float], uploaded: list[bool], refused: tuple[int, ...] = ()) -> None:
        self.delays, self.uploaded, self.refused = delays, uploaded, refused
        self.lock = threading.Lock()
        self.replies: dict[str, Message] = {}  # instruction id -> its reply, until pulled
        self.objects: dict[str, bytes | None] = {}  # object id -> content (None: not uploaded)

    def PushMessages(self, request: Any) -> PushAppMessagesResponse:
        ids = []
        for index, proto in enumerate(request.messages_list):
            if index in self.refused:  # not stored, e.g. its node is gone: the SuperLink answers ""
                ids.append("")
                continue
            ids.append(proto.metadata.message_id)
            timer = threading.Timer(self.delays[index], self._reply, args=(index, proto.metadata))
            timer.daemon = True
            timer.start()
        return PushAppMessagesResponse(message_ids=ids, objects_to_push=[], session_id="session")

    def _reply(self, index: int, instruction: Any) -> None:
        metadata = Metadata(
            run_id=instruction.run_id,
            message_id="",
            src_node_id=instruction.dst_node_id,
            dst_node_id=instruction.src_node_id,
            reply_to_message_id=instruction.message_id,
            group_id=instruction.group_id,
            ttl=instruction.ttl,
            message_type=instruction.message_type,
            created_at=now().timestamp(),
        )
        content = RecordDict({"arrays": ArrayRecord([np.full(3, index, dtype=np.float32)])})
        reply = make_message(metadata, content=content)
        reply.metadata.__dict__["_message_id"] = reply.object_id
        with self.lock:
            for object_id, obj in get_all_nested_objects(reply).items():
                self.objects[object_id] = obj.deflate() if self.uploaded[index] else None
            self.replies[instruction.message_id] = reply

    def PushObject(self, request: Any) -> None:
        raise AssertionError("PushMessages asked for no object")

    def PullMessages(self, request: Any) -> PullAppMessagesResponse:
        with self.lock:
            found = [self.replies.pop(i) for i in list(request.message_ids) if i in self.replies]
        return PullAppMessagesResponse(
            messages_list=[message_to_proto(remove_content_from_message(m)) for m in found],
            message_object_trees=[get_object_tree(m) for m in found],
        )

    def PullObject(self, request: Any) -> PullObjectResponse:
        with self.lock:
            if request.object_id not in self.objects:
                return PullObjectResponse(object_found=False, object_available=False)
            content = self.objects[request.object_id]
        return PullObjectResponse(
            object_found=True, object_available=content is not None, object_content=content or b""
        )

    def ConfirmMessageReceived(self, request: Any) -> ConfirmMessageReceivedResponse:
        return ConfirmMessageReceivedResponse()


@pytest.fixture
def server_app_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower sets in a ServerApp process before messages can be made (restored after)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)
    monkeypatch.setattr(http_grid, "pull_objects", http_grid.pull_objects)


def _http_grid(runtime: InMemoryRuntimeApi) -> HttpGrid:
    grid = HttpGrid(insecure=True, token="t")
    grid._client = runtime  # what HttpGrid._connect() would set: the Runtime API client
    grid.set_run(Run.create_empty(7))
    return grid


def _train_messages(nodes: tuple[int, ...]) -> list[Message]:
    weights = ArrayRecord([np.zeros(3, dtype=np.float32)])
    return [Message(RecordDict({"arrays": weights}), node, "train", group_id="1") for node in nodes]


@pytest.mark.timeout(60)  # without the fix this waits up to 2 hours
def test_a_reply_whose_upload_never_ends_does_not_cost_the_round(server_app_identity: None) -> None:
    """Node 11 dies uploading its reply (message visible, objects never), node 12 replies in full.

    Flower's own ``HttpGrid.send_and_receive`` blocks on node 11's objects for up to 2 hours (until
    the SuperLink drops the push session, 180 s) and returns without node 12's reply. The wrapper
    ends the wait at the round's timeout and still returns node 12's weights.
    """
    runtime = InMemoryRuntimeApi(delays=[0.2, 0.6], uploaded=[False, True])
    grid = fp.PromptGrid(_http_grid(runtime), poll_interval=0.05)
    start = time.monotonic()
    replies = list(grid.send_and_receive(_train_messages((11, 12)), timeout=3.0))
    waited = time.monotonic() - start
    assert 3.0 <= waited < 3.0 + 10.0  # Flower's pull retry backs off by up to 10 s
    failed = [r for r in replies if r.has_error()]
    arrived = [r for r in replies if not r.has_error()]
    assert len(failed) == 1 and "unavailable" in failed[0].error.reason
    assert [r.metadata.src_node_id for r in arrived] == [12]
    np.testing.assert_array_equal(arrived[0].content["arrays"].to_numpy_ndarrays()[0], np.ones(3))


def test_replies_in_full_come_back_without_waiting_for_the_deadline(server_app_identity: None) -> None:
    runtime = InMemoryRuntimeApi(delays=[0.1, 0.3], uploaded=[True, True])
    grid = fp.PromptGrid(_http_grid(runtime), poll_interval=0.05)
    start = time.monotonic()
    replies = list(grid.send_and_receive(_train_messages((11, 12)), timeout=30.0))
    assert time.monotonic() - start < 5.0
    assert sorted(r.metadata.src_node_id for r in replies) == [11, 12]
    assert not any(r.has_error() for r in replies)


def test_object_pulls_outside_a_round_keep_flowers_limits() -> None:
    calls: list[dict[str, Any]] = []
    bounded = fp._deadline_bounded_pull_objects(lambda *args, **kwargs: calls.append(kwargs) or {})
    bounded(["a"], pull_object_fn=str)
    assert calls[-1] == {"pull_object_fn": str}  # no deadline: Flower's defaults (max_time 7200 s)
    with fp._pull_deadline(time.monotonic() + 5.0):
        bounded(["a"], pull_object_fn=str)
    assert 4.0 < calls[-1]["max_time"] <= 5.0
    with fp._pull_deadline(time.monotonic() - 1.0):
        bounded(["a"], pull_object_fn=str)
    assert calls[-1]["max_time"] == 0.0  # past the deadline: only what is already uploaded


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


def test_a_message_the_superlink_refused_is_not_awaited(server_app_identity: None) -> None:
    runtime = InMemoryRuntimeApi(delays=[0.1, 0.1], uploaded=[True, True], refused=(0,))
    grid = fp.PromptGrid(_http_grid(runtime), poll_interval=0.05)
    start = time.monotonic()
    replies = list(grid.send_and_receive(_train_messages((11, 12)), timeout=30.0))
    assert time.monotonic() - start < 5.0  # not the 30 s timeout: nothing waits for message 0
    assert [r.metadata.src_node_id for r in replies] == [12]
