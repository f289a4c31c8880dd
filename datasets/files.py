"""The one place where data preparation opens source files: text, JSON, YAML and images.

Every reader goes through these functions, so each class of bad file gets the same one-line
:class:`~datasets.errors.FileProblem` naming the file (and the line where there is one): bytes that
are not UTF-8, a folder or a symlink loop where a file should be, an unreadable file, JSON or YAML
that is invalid or nested deeper than the parser can follow, YAML aliases (which can expand
without bound), an image that is cut short, not an image, or so large that decoding it would
exhaust memory (a decompression bomb).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from datasets.errors import FileProblem

#: Largest image FleetFL decodes (width x height). PIL's own default warning threshold (about
#: 89 Mpx, 0.25 GiB of RGB pixels), far above any driving camera frame; set here because
#: ``Image.MAX_IMAGE_PIXELS`` is a process-wide value that libraries change (ultralytics'
#: ``compress_one_image`` sets it to None).
MAX_IMAGE_PIXELS = 89_478_485


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``.

    Raises:
        FileProblem: missing, unreadable (a folder, a symlink loop, no permission) or not UTF-8
            (names the line of the first bad byte).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileProblem(path, f"{what} not found") from None
    except OSError as exc:
        raise FileProblem(path, f"cannot read {what} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FileProblem(
            f"{path}:{line}", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})"
        ) from None


def read_json(path: Path, what: str = "file") -> object:
    """The parsed JSON of ``path`` (problems as in :func:`read_text`, plus invalid or too deep JSON)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileProblem(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise FileProblem(path, "JSON nested too deeply to parse (lists/objects inside each other)") from None


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases: nine ``*name`` references of nine each expand to a
    billion values once the data is walked or printed ("billion laughs"), which stalls the reader;
    data.yaml files and class maps never need them."""

    def compose_node(self, parent: object, index: object) -> object:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)


def read_yaml(path: Path, what: str = "file") -> object:
    """The parsed YAML of ``path`` (safe types, no aliases; problems as in :func:`read_json`)."""
    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader: safe types only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise FileProblem(where, f"not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    except RecursionError:
        raise FileProblem(path, "YAML nested too deeply to parse") from None


def image_size(path: Path) -> tuple[int, int]:
    """Width and height of an image after decoding it fully (a truncated file fails here).

    Raises:
        FileProblem: not a readable image, cut short, or larger than :data:`MAX_IMAGE_PIXELS`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                img.load()
                return img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FileProblem(
            path,
            f"image too large to decode safely ({_pixels(exc)}more than {MAX_IMAGE_PIXELS} pixels: "
            "a decompression bomb, not a camera frame)",
        ) from None
    # ImportError: once ultralytics is imported it monkey-patches ``PIL.Image.open`` so that an
    # unidentified image triggers an install of ``pi-heif`` and a retry (ultralytics 8.4
    # utils/patches.py); offline that ends in ModuleNotFoundError instead of UnidentifiedImageError.
    except (UnidentifiedImageError, OSError, SyntaxError, ImportError, ValueError) as exc:
        raise FileProblem(path, f"unreadable or corrupt image ({exc})") from None


def _pixels(exc: BaseException) -> str:
    """``"WxH pixels, "`` from FleetFL's own check; empty for PIL's (its message has no size)."""
    return f"{exc}, " if str(exc).endswith(" pixels") else ""
