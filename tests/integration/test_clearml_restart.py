"""The data dir is private, and a SIGKILL'ed server leaves nothing stuck after its restart.

A real server process is killed with SIGKILL while an upload streams in and after a queue entry was
handed out whose task never started (as if the reply never reached the agent); the restart removes
the upload's temp file and puts the task back on its queue.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from clearml_local.fileserver import TEMP_SUFFIX
from clearml_local.services.tasks import REQUEUED_AT_START
from tests.integration.test_clearml_durability import ServerProcess


def modes(data_dir: Path) -> dict[str, int]:
    """``relative path: permission bits`` of the data dir and everything in it (links excluded)."""
    found = {".": stat.S_IMODE(data_dir.stat().st_mode)}
    for path in data_dir.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(data_dir))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def start_slow_upload(files_host: str, token: str, object_path: str) -> socket.socket:
    """Send the headers and the first bytes of a multipart upload, and keep the rest back."""
    url = urlparse(files_host)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    boundary = "fleetflboundary"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{object_path}"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"x" * 65536
    sock.sendall(
        (
            "POST / HTTP/1.1\r\n"
            f"Host: {url.hostname}:{url.port}\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Content-Length: 10000000\r\n\r\n"
        ).encode()
        + head
    )
    return sock


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # two server processes: ~4 s idle, 16 s on a loaded machine
def test_private_data_dir_and_restart_after_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "notes.txt").write_text("left readable by an older version")
    os.chmod(data_dir / "notes.txt", 0o644)
    server = ServerProcess(data_dir)
    try:
        http = server.session()
        upload = http.post(f"{server.files}/", files={"/proj/done.bin": ("done.bin", b"kept")}, timeout=30)
        assert upload.status_code == 200
        queue = server.call(http, "queues.create", {"name": "restart-q"})["id"]
        task = server.call(http, "tasks.create", {"name": "popped", "type": "training"})["id"]
        server.call(http, "tasks.enqueue", {"task": task, "queue": queue})
        entry = server.call(http, "queues.get_next_task", {"queue": queue})["entry"]
        assert entry["task"] == task  # handed out; the agent "never got the reply"

        found = modes(data_dir)
        assert found.pop(".") == 0o700
        expected = {"server.db", "server.json", "credentials.json", "clearml.conf", "server.log", "notes.txt"}
        assert expected <= set(found)
        assert "files/proj/done.bin" in found
        assert {path: mode for path, mode in found.items() if mode not in (0o600, 0o700)} == {}
        assert all(mode == 0o700 for path, mode in found.items() if (data_dir / path).is_dir())

        sock = start_slow_upload(server.files, server.token, "/proj/cut.bin")
        temps = lambda: list((data_dir / "files").rglob(f"*{TEMP_SUFFIX}"))  # noqa: E731
        assert wait_for(lambda: bool(temps())), "the upload never reached the disk"
        server.kill()
        sock.close()
        assert temps(), "SIGKILL should leave the upload's temp file"
    finally:
        server.stop()

    server = ServerProcess(data_dir)
    try:
        http = server.session()
        assert not list((data_dir / "files").rglob(f"*{TEMP_SUFFIX}"))
        assert not (data_dir / "files" / "proj" / "cut.bin").exists()
        assert http.get(f"{server.files}/proj/done.bin", timeout=30).content == b"kept"
        entries = server.call(http, "queues.get_by_id", {"queue": queue})["queue"]["entries"]
        assert [e["task"] for e in entries] == [task]
        stored = server.call(http, "tasks.get_by_id", {"task": task})["task"]
        assert stored["status"] == "queued" and stored["status_reason"] == REQUEUED_AT_START
        assert server.call(http, "queues.get_next_task", {"queue": queue})["entry"]["task"] == task
        assert all(mode in (0o600, 0o700) for mode in modes(data_dir).values())
    finally:
        server.stop()
