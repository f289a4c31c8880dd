"""The file server half of the embedded ClearML server (artifacts, models, dataset chunks, images).

It speaks the protocol of ClearML's own file server, which is what the SDK's HTTP storage driver
(``clearml.storage.helper._HttpDriver``) uses:

* ``POST /`` (or ``POST /<prefix>``) with ``multipart/form-data``: every file part's field NAME is
  the object path (``/proj/task.<id>/artifacts/arr/arr.npz``), stored under ``<prefix>/<name>``.
  The reply is a JSON list of the stored paths.
* ``GET /<path>`` streams an object (ranges supported), ``HEAD /<path>`` tells whether it exists,
  ``DELETE /<path>`` removes it.

Authentication: the SDK attaches ``Authorization: Bearer <token>`` (the API token from
``auth.login``) to every request whose URL starts with its configured files host, downloads
included (``_HttpDriver._Container.get_headers``). A URL recorded under another spelling of the
host (``localhost`` vs ``127.0.0.1``) is fetched WITHOUT the token; ``public_read=True`` serves
such reads for setups that need it, writes always need a valid token (or the Basic access/secret
keys, when the checker is the server's :class:`~clearml_local.auth.Authenticator`).

Safety: object paths are checked component by component (no ``..``, no NUL, no backslash, no
drive letters) and the resolved target must stay inside the root (symlinks included); an upload
larger than ``max_upload_bytes`` is refused with 413 while it streams; every file of an upload is
written to a temporary file beside its target, fsync'ed, and only moved into place (``os.replace``)
once the whole request has been received, so a failed or cut upload leaves nothing half-written and
a 200 means the bytes are on disk. Credentials are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

#: Default cap on one upload request (all its files together): 2 GiB.
DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3

#: Suffix of the temporary files an upload writes before moving them into place.
TEMP_SUFFIX = ".fleetfl-upload"

#: Longest file name and path the file systems Linux uses accept (NAME_MAX, PATH_MAX), in bytes.
MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4096
#: What the temp name of an upload adds to the object's name: ``.`` + 32 hex digits + the suffix.
_TEMP_NAME_EXTRA = 1 + 1 + 32 + len(TEMP_SUFFIX)

BearerVerifier = Callable[[str], object]


class HeaderAuthenticator(Protocol):
    """What :class:`clearml_local.auth.Authenticator` offers: a whole-header check raising on failure."""

    def authenticate(self, authorization: str | None) -> object: ...


class FileServerError(ValueError):
    """A refused file-server request; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve_object_path(root: Path, object_path: str) -> Path:
    """Map an object path (as the SDK names it) to a file under ``root``.

    A leading ``/`` is part of the ClearML naming (``/proj/task.x/...``) and is dropped; anything
    that could leave the root is refused: ``..`` and ``.`` components, empty names, NUL bytes,
    backslashes, drive letters and names too long for the file system (a folder name over 255
    bytes, a file name over 255 less the 49 its temp file adds, a path over 4096 bytes) raise
    :class:`FileServerError` (400), and a target that resolves outside ``root`` through a symlink
    raises it with 403.
    """
    if not object_path or "\x00" in object_path or "\\" in object_path:
        raise FileServerError(400, f"invalid object path {object_path!r}")
    parts = PurePosixPath(object_path.lstrip("/")).parts
    if not parts:
        raise FileServerError(400, f"invalid object path {object_path!r}")
    for index, part in enumerate(parts):
        if part in ("..", ".") or (len(part) >= 2 and part[1] == ":" and part[0].isalpha()):
            raise FileServerError(400, f"object path {object_path!r} may not contain {part!r}")
        limit = MAX_NAME_BYTES - (_TEMP_NAME_EXTRA if index == len(parts) - 1 else 0)
        if len(os.fsencode(part)) > limit:
            raise FileServerError(400, f"object path component {part[:40]!r}... is over {limit} bytes")
    if len(os.fsencode(object_path)) > MAX_PATH_BYTES:
        raise FileServerError(400, f"object path {object_path[:60]!r}... is over {MAX_PATH_BYTES} bytes")
    if parts[-1].endswith(TEMP_SUFFIX):
        raise FileServerError(400, f"object path {object_path!r} uses a reserved suffix")
    root_resolved = root.resolve()
    target = root_resolved.joinpath(*parts)
    # resolve() follows symlinks already on disk (a linked folder inside the root, for instance).
    if not target.resolve().is_relative_to(root_resolved):
        raise FileServerError(403, f"object path {object_path!r} leaves the file store")
    return target


@dataclass
class _PendingFile:
    target: Path
    temp: Path
    handle: BinaryIO | None = None
    size: int = 0


@dataclass
class _UploadSink:
    """python-multipart callbacks that stream each file part into a temp file beside its target."""

    root: Path
    prefix: str
    files: list[_PendingFile] = field(default_factory=list)
    _header_field: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _headers: dict[str, bytes] = field(default_factory=dict)
    _current: _PendingFile | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._current = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").strip().lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        if b"filename" not in options:
            return  # a plain form field: the ClearML file server stores only file parts
        name = options.get(b"name", b"").decode("utf-8") or options[b"filename"].decode("utf-8")
        object_path = f"{self.prefix.strip('/')}/{name.lstrip('/')}" if self.prefix.strip("/") else name
        target = resolve_object_path(self.root, object_path)
        if target.is_dir():
            raise FileServerError(409, f"object path {name!r} is a folder")
        if any(pending.target == target for pending in self.files):
            raise FileServerError(400, f"object path {name!r} appears twice in one upload")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise FileServerError(409, f"a parent of {name!r} is a file") from exc
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
        pending = _PendingFile(target=target, temp=temp, handle=temp.open("xb"))
        self.files.append(pending)
        self._current = pending

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None and self._current.handle is not None:
            self._current.handle.write(data[start:end])
            self._current.size += end - start

    def _on_part_end(self) -> None:
        pending, self._current = self._current, None
        if pending is not None and pending.handle is not None:
            pending.handle.flush()
            os.fsync(pending.handle.fileno())
            pending.handle.close()
            pending.handle = None

    def commit(self) -> list[str]:
        """Move every received file into place (each move is atomic); return the stored paths."""
        stored = []
        for pending in self.files:
            if pending.handle is not None:
                raise FileServerError(400, "upload ended inside a file part")
            os.replace(pending.temp, pending.target)
            stored.append(pending.target.relative_to(self.root.resolve()).as_posix())
        if self.files:
            _fsync_dir(self.files[0].target.parent)
        return stored

    def discard(self) -> None:
        """Remove every temporary file of this upload (after an error)."""
        for pending in self.files:
            if pending.handle is not None:
                pending.handle.close()
                pending.handle = None
            with contextlib.suppress(FileNotFoundError):
                pending.temp.unlink()


def _fsync_dir(path: Path) -> None:
    """Persist a rename: fsync the folder that holds it (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_checker(auth: HeaderAuthenticator | BearerVerifier) -> Callable[[str | None], bool]:
    """Turn an authenticator or a Bearer-token verifier into ``check(authorization_header) -> bool``."""
    if hasattr(auth, "authenticate"):
        authenticate = auth.authenticate  # Bearer token or Basic keys, raises on failure

        def check(header: str | None) -> bool:
            return bool(header) and bool(authenticate(header))

        return check
    if not callable(auth):
        raise TypeError(f"auth must be an Authenticator or a callable, not {type(auth).__name__}")

    def check_bearer(header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip()) and bool(auth(token.strip()))

    return check_bearer


def create_file_app(
    files_dir: Path,
    auth: HeaderAuthenticator | BearerVerifier,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    *,
    public_read: bool = False,
) -> Starlette:
    """Build the file server as an ASGI app storing objects under ``files_dir``.

    Args:
        files_dir: the root folder of the stored objects (created if missing).
        auth: the server's :class:`~clearml_local.auth.Authenticator` (its ``authenticate`` checks
            the whole ``Authorization`` header: Bearer token or Basic keys), or a plain
            ``verify_bearer(token)`` callable. A falsy result or any exception means 401.
        max_upload_bytes: cap on one upload request (all its parts); larger ones get 413.
        public_read: serve GET/HEAD without credentials (writes still need them).
    """
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    root = Path(files_dir)
    root.mkdir(parents=True, exist_ok=True)

    check = _make_checker(auth)

    def authorized(request: Request) -> bool:
        try:
            return check(request.headers.get("authorization"))
        except Exception:  # the checker raises on a bad token or key: that is just a 401
            return False

    def refuse(status: int, message: str) -> JSONResponse:
        log.info("file server %d: %s", status, message)
        return JSONResponse({"error": message}, status_code=status)

    async def upload(request: Request) -> Response:
        if not authorized(request):
            return refuse(401, "missing or invalid credentials")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            return refuse(413, f"upload of {declared} bytes exceeds the limit of {max_upload_bytes}")
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            return refuse(400, "upload must be multipart/form-data with a boundary")
        sink = _UploadSink(root=root, prefix=request.path_params.get("path", ""))
        try:
            parser = MultipartParser(boundary, sink.callbacks())
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_upload_bytes:
                    raise FileServerError(413, f"upload exceeds the limit of {max_upload_bytes} bytes")
                if chunk:
                    await anyio.to_thread.run_sync(parser.write, chunk)
            await anyio.to_thread.run_sync(parser.finalize)
            stored = await anyio.to_thread.run_sync(sink.commit)
        except FileServerError as exc:
            await anyio.to_thread.run_sync(sink.discard)
            return refuse(exc.status, str(exc))
        except (MultipartParseError, UnicodeDecodeError) as exc:
            await anyio.to_thread.run_sync(sink.discard)
            return refuse(400, f"malformed multipart body: {exc}")
        except BaseException:
            await anyio.to_thread.run_sync(sink.discard)  # client gone, server stopping, disk full...
            raise
        log.debug("file server stored %d object(s)", len(stored))
        return JSONResponse(stored)

    async def download(request: Request) -> Response:
        if not public_read and not authorized(request):
            return refuse(401, "missing or invalid credentials")
        try:
            target = resolve_object_path(root, request.path_params["path"])
        except FileServerError as exc:
            return refuse(exc.status, str(exc))
        if not target.is_file():
            return refuse(404, f"no object {request.path_params['path']!r}")
        as_attachment = "download" in request.query_params
        return FileResponse(
            target,
            filename=target.name if as_attachment else None,
            content_disposition_type="attachment" if as_attachment else "inline",
        )

    async def delete(request: Request) -> Response:
        if not authorized(request):
            return refuse(401, "missing or invalid credentials")
        try:
            target = resolve_object_path(root, request.path_params["path"])
        except FileServerError as exc:
            return refuse(exc.status, str(exc))
        try:
            await anyio.to_thread.run_sync(target.unlink)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return refuse(404, f"no object {request.path_params['path']!r}")
        return JSONResponse({"deleted": request.path_params["path"].lstrip("/")})

    routes = [
        Route("/", upload, methods=["POST"]),
        Route("/{path:path}", download, methods=["GET", "HEAD"]),
        Route("/{path:path}", upload, methods=["POST"]),
        Route("/{path:path}", delete, methods=["DELETE"]),
    ]
    return Starlette(routes=routes)
