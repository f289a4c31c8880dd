"""The embedded file server: the protocol the SDK speaks, its safety rules, and the real SDK on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from clearml_local.fileserver import TEMP_SUFFIX, create_file_app, resolve_object_path

TOKEN = "good-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    return tmp_path / "files"


@pytest.fixture
def client(files_root: Path) -> Iterator[TestClient]:
    app = create_file_app(files_root, lambda token: token == TOKEN, max_upload_bytes=64 * 1024)
    with TestClient(app) as client:
        yield client


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def test_upload_download_head_delete_roundtrip(client: TestClient, files_root: Path) -> None:
    name = "/proj/task.abc/artifacts/arr/arr.npz"
    reply = client.post("/", files={name: ("arr.npz", b"\x00\x01payload")}, headers=AUTH)
    assert reply.status_code == 200 and reply.json() == ["proj/task.abc/artifacts/arr/arr.npz"]
    assert (files_root / "proj/task.abc/artifacts/arr/arr.npz").read_bytes() == b"\x00\x01payload"
    assert client.get(name, headers=AUTH).content == b"\x00\x01payload"
    ranged = client.get(name, headers={**AUTH, "Range": "bytes=2-4"})
    assert ranged.status_code == 206 and ranged.content == b"pay"
    assert client.head(name, headers=AUTH).status_code == 200
    assert client.delete(name, headers=AUTH).status_code == 200
    assert client.head(name, headers=AUTH).status_code == 404
    assert client.delete(name, headers=AUTH).status_code == 404


def test_upload_under_a_url_prefix_and_names_with_spaces(client: TestClient, files_root: Path) -> None:
    reply = client.post("/bucket", files={"a dir/x y.txt": ("x y.txt", b"1")}, headers=AUTH)
    assert reply.json() == ["bucket/a dir/x y.txt"]
    assert client.get("/bucket/a%20dir/x%20y.txt", headers=AUTH).content == b"1"


def test_every_method_needs_credentials(client: TestClient) -> None:
    client.post("/", files={"/a/b.txt": ("b.txt", b"1")}, headers=AUTH)
    for method in ("get", "head", "delete"):
        assert getattr(client, method)("/a/b.txt").status_code == 401
        assert getattr(client, method)("/a/b.txt", headers={"Authorization": "Bearer bad"}).status_code == 401
    assert client.post("/", files={"/a/c.txt": ("c.txt", b"1")}).status_code == 401


def test_public_read_serves_downloads_without_a_token(files_root: Path) -> None:
    app = create_file_app(files_root, lambda token: token == TOKEN, public_read=True)
    with TestClient(app) as client:
        client.post("/", files={"/a/b.txt": ("b.txt", b"1")}, headers=AUTH)
        assert client.get("/a/b.txt").content == b"1"
        assert client.post("/", files={"/a/c.txt": ("c.txt", b"1")}).status_code == 401


@pytest.mark.parametrize("name", ["../escape.txt", "/a/../../escape.txt", "C:/windows.txt", "a\\b.txt"])
def test_traversal_is_refused_and_nothing_written(client: TestClient, files_root: Path, name: str) -> None:
    reply = client.post("/", files={name: ("x", b"evil")}, headers=AUTH)
    assert reply.status_code == 400
    assert not (files_root.parent / "escape.txt").exists()
    assert not leftovers(files_root)


@pytest.mark.parametrize("name", ["", "/", "a/\x00.txt", "a/../b", f"a/b{TEMP_SUFFIX}"])
def test_resolve_object_path_refuses(files_root: Path, name: str) -> None:
    with pytest.raises(ValueError):
        resolve_object_path(files_root, name)


def test_download_traversal_and_symlink_escape(client: TestClient, files_root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    assert client.get("/%2E%2E/secret.txt", headers=AUTH).status_code == 400
    (files_root / "link").symlink_to(tmp_path, target_is_directory=True)
    assert client.get("/link/secret.txt", headers=AUTH).status_code == 403
    with pytest.raises(ValueError, match="leaves the file store"):
        resolve_object_path(files_root, "link/secret.txt")


def test_size_cap_refuses_declared_and_streamed_uploads(client: TestClient, files_root: Path) -> None:
    big = b"x" * (100 * 1024)
    assert client.post("/", files={"/big.bin": ("big.bin", big)}, headers=AUTH).status_code == 413

    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="/streamed.bin"; filename="s"\r\n\r\n'.encode()
    )

    def chunked() -> Iterator[bytes]:  # no Content-Length: the cap must hold while streaming
        yield head
        for _ in range(10):
            yield b"y" * (16 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    reply = client.post(
        "/", content=chunked(), headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert reply.status_code == 413
    assert not (files_root / "streamed.bin").exists() and not leftovers(files_root)


def test_cut_upload_leaves_nothing_and_keeps_the_old_object(client: TestClient, files_root: Path) -> None:
    client.post("/", files={"/obj.bin": ("obj.bin", b"old")}, headers=AUTH)
    boundary = "XyZ"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="/obj.bin"; filename="o"\r\n\r\nnew-but-cut'
    reply = client.post(
        "/",
        content=body.encode(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert reply.status_code == 400
    assert (files_root / "obj.bin").read_bytes() == b"old"
    assert not leftovers(files_root)


def test_multi_file_upload_is_all_or_nothing(client: TestClient, files_root: Path) -> None:
    files = {"/ok/one.txt": ("one.txt", b"1"), "/ok/../../bad.txt": ("bad.txt", b"2")}
    assert client.post("/", files=files, headers=AUTH).status_code == 400
    assert not (files_root / "ok" / "one.txt").exists() and not leftovers(files_root)


def test_not_multipart_is_refused(client: TestClient) -> None:
    assert (
        client.post("/", content=b"{}", headers={**AUTH, "Content-Type": "application/json"}).status_code
        == 400
    )


def test_sdk_artifacts_and_storage_manager_on_the_embedded_server(clearml_server, tmp_path: Path) -> None:
    """The real SDK uploads and downloads through the file server with its token."""
    import numpy as np
    from clearml import StorageManager

    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(300_000))
    url = StorageManager.upload_file(str(src), f"{clearml_server.files_host}/fleetfl-test/sdk/weights.bin")
    assert url.startswith(clearml_server.files_host)
    stored = Path(clearml_server.data_dir) / "files" / "fleetfl-test" / "sdk" / "weights.bin"
    assert stored.read_bytes() == src.read_bytes()
    local = StorageManager.get_local_copy(url, force_download=True)
    assert Path(local).read_bytes() == src.read_bytes()
    assert StorageManager.exists_file(url)

    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "arr.npy", array)
    url = StorageManager.upload_file(
        str(tmp_path / "arr.npy"), f"{clearml_server.files_host}/fleetfl-test/a b/ärr (1).npy"
    )
    np.testing.assert_array_equal(np.load(StorageManager.get_local_copy(url, force_download=True)), array)


def test_file_and_folder_names_do_not_collide(client: TestClient, files_root: Path) -> None:
    assert client.post("/", files={"/x/y.txt": ("y.txt", b"1")}, headers=AUTH).status_code == 200
    assert client.post("/", files={"/x": ("x", b"2")}, headers=AUTH).status_code == 409  # x is a folder
    assert (
        client.post("/", files={"/x/y.txt/z": ("z", b"3")}, headers=AUTH).status_code == 409
    )  # y.txt a file
    assert (files_root / "x" / "y.txt").read_bytes() == b"1" and not leftovers(files_root)
