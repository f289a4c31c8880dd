"""Reading a YAML config with the file, line and key of every problem named (the autoscaler's).

:func:`compose` parses safely (no tags that build objects), refuses duplicate keys and remembers the
line of every key and item; :class:`YamlReader` has the typed getters whose errors name them, e.g.
``fleet.yaml:14: queues.train.resources[0].ami: missing``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

#: Keys that look like credentials: refused with a pointer to boto3's chain, never ignored.
CREDENTIAL_WORDS = ("secret", "access_key", "session_token", "password", "credentials")


class AutoscalerConfigError(ValueError):
    """A bad autoscaler config; the message names the file, the line and the key."""


def compose(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML safely, keeping the line of every key and item; refuse duplicate keys."""
    loader = yaml.SafeLoader(text)
    lines: dict[tuple, int] = {}
    try:
        node = loader.get_single_node()

        def build(node: yaml.Node, path: tuple) -> Any:
            lines.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)
                out: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    key = loader.construct_object(key_node, deep=True)
                    if not isinstance(key, str):
                        raise AutoscalerConfigError(
                            f"{source}:{key_node.start_mark.line + 1}: {dotted(path) or '<top>'}: "
                            f"key {key!r} is not a string"
                        )
                    if key in out:
                        raise AutoscalerConfigError(
                            f"{source}:{key_node.start_mark.line + 1}: {dotted((*path, key))}: duplicate key"
                        )
                    lines[(*path, key)] = key_node.start_mark.line + 1
                    out[key] = build(value_node, (*path, key))
                return out
            if isinstance(node, yaml.SequenceNode):
                return [build(item, (*path, i)) for i, item in enumerate(node.value)]
            return loader.construct_object(node, deep=True)

        data = build(node, ()) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise AutoscalerConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    finally:
        loader.dispose()
    return data, lines


def dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


MISSING = object()


class YamlReader:
    """Typed getters over a composed document; every error names the source, line and key."""

    def __init__(self, source: str, lines: dict[tuple, int]) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: tuple, message: str) -> AutoscalerConfigError:
        line = None
        for depth in range(len(path), -1, -1):  # the key's own line, else its nearest parent's
            line = self.lines.get(path[:depth])
            if line is not None:
                break
        where = f"{self.source}:{line}" if line is not None else self.source
        return AutoscalerConfigError(f"{where}: {dotted(path) or '<top>'}: {message}")

    def mapping(self, value: Any, path: tuple, known: tuple[str, ...]) -> Mapping[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.error(path, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key in known:
                continue
            if any(word in str(key).lower() for word in CREDENTIAL_WORDS):
                raise self.error(
                    (*path, key),
                    "credentials do not belong in the config: boto3 reads them from the "
                    "environment, ~/.aws or the instance profile",
                )
            raise self.error((*path, key), f"unknown key (known: {', '.join(known)})")
        return value

    # -- typed getters
    def get(self, data: Mapping, path: tuple, key: str, default: Any = MISSING) -> Any:
        value = data.get(key, None)
        if value is None:
            if default is MISSING:
                raise self.error((*path, key), "missing")
            return default
        return value

    def string(
        self,
        data: Mapping,
        path: tuple,
        key: str,
        pattern: re.Pattern | None = None,
        hint: str = "",
        default: Any = MISSING,
    ) -> Any:
        value = self.get(data, path, key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, str) or not value.strip():
            raise self.error((*path, key), f"expected a non-empty string, got {value!r}")
        if pattern is not None and not pattern.match(value):
            raise self.error((*path, key), f"malformed value {value!r}" + (f" ({hint})" if hint else ""))
        return value

    def boolean(self, data: Mapping, path: tuple, key: str, default: bool) -> bool:
        value = self.get(data, path, key, default)
        if not isinstance(value, bool):
            raise self.error((*path, key), f"expected true or false, got {value!r}")
        return value

    def integer(
        self,
        data: Mapping,
        path: tuple,
        key: str,
        default: Any = MISSING,
        minimum: int = 0,
        maximum: int | None = None,
    ) -> Any:
        value = self.get(data, path, key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error((*path, key), f"expected a whole number, got {value!r}")
        if value < minimum:
            raise self.error((*path, key), f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error((*path, key), f"must be <= {maximum}, got {value}")
        return value

    def seconds(self, data: Mapping, path: tuple, key: str, default: float) -> float:
        value = self.get(data, path, key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error((*path, key), f"expected a number of seconds, got {value!r}")
        if not value > 0:
            raise self.error((*path, key), f"must be > 0 seconds, got {value}")
        return float(value)

    def choice(self, data: Mapping, path: tuple, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(data, path, key, default)
        if value not in choices:
            raise self.error((*path, key), f"expected one of {', '.join(choices)}, got {value!r}")
        return value
