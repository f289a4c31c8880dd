"""Field filters of clearml-server's ``get_all`` queries, as predicates over in-memory documents.

Each collection declares, like clearml-server's ``get_all_query_options``, which of its fields are

* pattern fields (``name``...): a regular expression, case-sensitive (clearml-server compiles it
  without flags); run by RE2, whose matching time is linear in the text, so no pattern can stall
  the server; an empty pattern is no filter;
* list fields (``id``, ``tags``, ``status``...): values with the operators ``__$any``/``__$or``,
  ``__$all``/``__$and``, ``__$not``, ``__$nop`` and (before any operator) a leading ``-`` to exclude;
  ``null`` also accepts a missing or empty field;
* range fields (``created``, ``last_metrics.*``, ``last_iteration``...): ``[min, max]``, both
  included, either may be ``null`` (a ``null`` min also accepts a missing value);
* datetime fields (``status_changed``, ``last_update``, ``last_change``): one or more
  ``">=x"``/``">x"``/``"<=x"``/``"<x"``/``"x"`` conditions (a single string is one condition), or a
  ``[min, max]`` pair without operators; the values are parsed as ISO-8601 dates (a date without a
  zone is UTC) and compared as dates.

``_any_``/``_or_`` and ``_all_``/``_and_`` take ``{"fields": [...], "pattern": p}`` (a
case-insensitive regex over several fields) or ``{"fields": [...], "datetime": conditions}`` (over
the datetime fields among them). ``filters`` takes the structured list filters of newer APIs
(``{"tags": {"any": {"include", "exclude"}, "all": {...}, "op": "and"}}``). Any other field is an
equality filter (a list means "any of", a ``null`` in it also accepts a missing field); a filter
whose value is ``null`` is no filter, as in clearml-server.

Where clearml-server silently drops a condition it cannot parse (an unparsable date), this answers
400 instead: a filter that is ignored would make a cleanup act on the wrong objects.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import re2

from clearml_local.api import validation_error

Predicate = Callable[[dict[str, Any]], bool]
_MISSING = object()
_OPERATOR = re.compile(r"^(>=|<=|>|<)(.*)$", re.DOTALL)
_EPOCH = re.compile(r"^\s*\d{9,}(\.\d*)?\s*$")
#: Fields whose stored values are ISO-8601 date strings (their bounds are parsed as dates).
DATE_FIELDS = frozenset(
    {
        "created",
        "started",
        "completed",
        "published",
        "status_changed",
        "last_update",
        "last_change",
        "last_worker_report",
    }
)
#: Most memory RE2 may use for one compiled pattern (its default is 8 MiB; a bigger one is a 400).
_RE2_MAX_MEM = 8 << 20


@dataclass(frozen=True)
class QueryOptions:
    """Which fields of a collection take which kind of filter (``prefix.*`` names a subtree)."""

    pattern_fields: tuple[str, ...] = ("name",)
    list_fields: tuple[str, ...] = ("id", "tags", "system_tags")
    range_fields: tuple[str, ...] = ()
    datetime_fields: tuple[str, ...] = ()

    def kind(self, field: str) -> str | None:
        """``"pattern"``, ``"list"``, ``"range"``, ``"datetime"`` or ``None`` (equality)."""
        for kind, names in (
            ("pattern", self.pattern_fields),
            ("list", self.list_fields),
            ("range", self.range_fields),
            ("datetime", self.datetime_fields),
        ):
            if any(field == n or (n.endswith("*") and field.startswith(n[:-1])) for n in names):
                return kind
        return None


# The options of clearml-server's Task, Model, Queue and Project documents.
TASK_QUERY = QueryOptions(
    pattern_fields=("name", "comment", "report"),
    list_fields=(
        *("id", "user", "tags", "system_tags", "type", "status", "project", "parent"),
        *("hyperparams.*", "execution.queue", "models.input.model"),
    ),
    range_fields=("created", "started", "active_duration", "last_metrics.*", "last_iteration"),
    datetime_fields=("status_changed", "last_update", "last_change"),
)
MODEL_QUERY = QueryOptions(
    pattern_fields=("name", "comment"),
    list_fields=(
        *("id", "tags", "system_tags", "framework", "uri", "user", "project", "task", "parent"),
        "metadata.*",
    ),
    range_fields=("created", "last_metrics.*", "last_iteration"),
    datetime_fields=("last_update", "last_change"),
)
QUEUE_QUERY = QueryOptions(list_fields=("id", "tags", "system_tags", "metadata.*"))
PROJECT_QUERY = QueryOptions(
    pattern_fields=("name", "basename", "description"),
    list_fields=("id", "tags", "system_tags", "parent", "path"),
    range_fields=("last_update",),
)


# --- values ---------------------------------------------------------------------------------------
def get_path(doc: Any, path: str | Sequence[str]) -> Any:
    """The value at a dotted path (objects only), or the ``_MISSING`` sentinel."""
    parts = path.split(".") if isinstance(path, str) else path
    value = doc
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
            if value is _MISSING:
                return _MISSING
        else:
            return _MISSING
    return value


def values_at(doc: Any, parts: Sequence[str]) -> Iterator[Any]:
    """Every value at a dotted path, through arrays as MongoDB reads ``a.b`` over ``a: [{b}...]``.

    An array value is yielded as its elements (a scalar filter matches an array containing it).
    """
    if not parts:
        if isinstance(doc, list):
            yield from doc
        elif doc is not None:
            yield doc
        return
    if isinstance(doc, dict):
        child = doc.get(parts[0], _MISSING)
        if child is not _MISSING:
            yield from values_at(child, parts[1:])
    elif isinstance(doc, list):
        for item in doc:
            if isinstance(item, dict):
                yield from values_at(item, parts)


def field_values(doc: dict[str, Any], parts: Sequence[str]) -> list[Any]:
    """:func:`values_at` as a list, with a fast path for the usual dict-only path (hot loop)."""
    value: Any = doc
    for index, part in enumerate(parts):
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
            if value is _MISSING:
                return []
        elif isinstance(value, list):
            return list(values_at(value, parts[index:]))
        else:
            return []
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


# --- patterns -------------------------------------------------------------------------------------
def compile_pattern(field: str, pattern: Any, ignore_case: bool = False) -> Any:
    """A compiled RE2 pattern (linear-time matching); a clear 400 for anything RE2 refuses."""
    if not isinstance(pattern, str):
        raise validation_error(f"field '{field}' must be a string (a regular expression)")
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False
    options.max_mem = _RE2_MAX_MEM
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        raise validation_error(
            f"field '{field}' is not a supported regular expression ({_error_text(exc)}); "
            "RE2 syntax: no backreferences or lookaround"
        ) from None


def _error_text(exc: Exception) -> str:
    detail = exc.args[0] if exc.args else exc
    return detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)


def pattern_matcher(field: str, pattern: Any, ignore_case: bool = False) -> Callable[[str], bool]:
    """Whether the pattern occurs in a string, in time linear in the string.

    Every pattern is checked by RE2 (so both engines accept the same syntax). A pattern without
    repetition or alternation (``^exact-name$``, what the SDK sends most) cannot backtrack more
    than its own length per position, so Python's ``re`` runs it (about 3x faster per call than
    the RE2 binding); any other pattern runs on RE2 (a one-pattern ``re2.Set``: yes/no without
    building match objects).
    """
    compiled = compile_pattern(field, pattern, ignore_case)  # validates, with a clear message
    if not _may_backtrack(pattern):
        try:
            search = re.compile(pattern, re.ASCII | (re.IGNORECASE if ignore_case else 0)).search
        except re.error:
            pass
        else:
            return lambda text: search(text) is not None
    matcher = re2.Set.SearchSet(compiled.options)
    matcher.Add(pattern)
    matcher.Compile()
    return lambda text: bool(matcher.Match(text))


def _may_backtrack(pattern: str) -> bool:
    """Whether ``pattern`` has a repetition (``* + ? {``) or an alternation outside ``[...]``."""
    index, in_class = 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[index + 1 : index + 2] == "^":
                index += 1
            if pattern[index + 1 : index + 2] == "]":  # a leading ']' is a literal
                index += 1
        elif char == "(" and pattern[index + 1 : index + 2] == "?":
            index += 1  # group syntax, not a quantifier
        elif char in "*+?{|":
            return True
        index += 1
    return False


def regex_predicate(field: str, pattern: Any, ignore_case: bool = False) -> Predicate:
    """A regular-expression filter: a string value (or an array element) that the pattern finds."""
    found = pattern_matcher(field, pattern, ignore_case)
    parts = field.split(".")

    def predicate(doc: dict[str, Any]) -> bool:
        for value in field_values(doc, parts):  # noqa: SIM110 - hot loop: cheaper than any(<genexpr>)
            if isinstance(value, str) and found(value):
                return True
        return False

    return predicate


# --- list fields ----------------------------------------------------------------------------------
_AND, _OR = "and", "or"
_LIST_OPERATORS = {"__$all": _AND, "__$and": _AND, "__$any": _OR, "__$or": _OR}


def list_predicate(field: str, spec: Any) -> Predicate:
    """A list-field filter (``["a", "-b"]``, ``["__$all", "a", "__$not", "b"]``, ``[null]``...)."""
    items = spec if isinstance(spec, list) else [spec]
    actions: dict[str, set[Any]] = {}
    global_op: str | None = None
    context, legacy, negate, allow_empty = _OR, True, False, False
    for item in items:
        if item is not None and not isinstance(item, str):
            raise validation_error(f"field '{field}' must be a string or an array of strings")
        if item in _LIST_OPERATORS or item == "__$not":
            if negate:
                raise validation_error(f"field '{field}': a value is expected after __$not")
            if item == "__$not":
                negate = True
                continue
            context, legacy = _LIST_OPERATORS[item], False
            global_op = global_op or context  # the first operator joins the groups...
            continue
        global_op = global_op or _AND  # ...unless a term came first (clearml-server's rule)
        if item is None:
            negate, allow_empty = False, True
            continue
        if item == "__$nop":
            context, legacy, negate = _OR, True, False
            continue
        if item.startswith("__$"):
            raise validation_error(f"field '{field}': unsupported operator {item!r}")
        include = not negate
        if not negate and legacy and item.startswith("-"):
            item, include = item[1:], False
            if not item:
                raise validation_error(f"field '{field}': a value is expected after the '-' prefix")
        negate = False
        action = ("all" if context == _AND else "in") if include else "nin"
        actions.setdefault(action, set()).add(item)
    if negate:
        raise validation_error(f"field '{field}': a value is expected after __$not")
    return _list_check(field, actions, global_op or _AND, allow_empty)


def _list_check(field: str, actions: dict[str, set[Any]], global_op: str, allow_empty: bool) -> Predicate:
    wanted = {action: frozenset(values) for action, values in actions.items()}
    need_all = global_op == _AND
    parts = field.split(".")
    if list(wanted) == ["in"] and not allow_empty:  # the usual "any of": one set lookup per value
        options = wanted["in"]

        def any_of(doc: dict[str, Any]) -> bool:
            value = get_path(doc, parts)
            if isinstance(value, str):
                return value in options
            if value is _MISSING:  # maybe a path through an array of objects
                value = field_values(doc, parts)
            elif not isinstance(value, list):
                return _hashable(value) and value in options
            for item in value:  # noqa: SIM110 - hot loop
                if _hashable(item) and item in options:
                    return True
            return False

        return any_of
    kinds = {
        "in": lambda wanted: lambda present: not wanted.isdisjoint(present),
        "nin": lambda wanted: lambda present: wanted.isdisjoint(present),
        "all": lambda wanted: lambda present: wanted.issubset(present),
    }
    checks = [kinds[action](values) for action, values in wanted.items()]

    def predicate(doc: dict[str, Any]) -> bool:
        values = field_values(doc, parts)
        if not values and allow_empty:
            return True
        if not checks:
            return not allow_empty
        try:
            return _combine(checks, values, need_all)
        except TypeError:  # an unhashable element (an object in the array): compare the others
            return _combine(checks, [v for v in values if _hashable(v)], need_all)

    return predicate


def _combine(checks: list[Callable[[Any], bool]], values: list[Any], need_all: bool) -> bool:
    for check in checks:
        if check(values) != need_all:
            return not need_all
    return need_all


def structured_list_predicate(field: str, spec: Any) -> Predicate:
    """A ``filters`` entry: ``{"any": {"include", "exclude"}, "all": {...}, "op": "and"|"or"}``."""
    if not isinstance(spec, dict) or set(spec) - {"any", "all", "op"}:
        raise validation_error(f"filters.{field} must be an object with 'any', 'all' and 'op'")
    op = spec.get("op", "and")
    if op not in ("and", "or"):
        raise validation_error(f"filters.{field}.op must be 'and' or 'or'")
    parts_checks: list[Callable[[set[Any], bool], bool]] = []
    for part in ("any", "all"):
        terms = spec.get(part)
        if terms is None:
            continue
        if not isinstance(terms, dict) or set(terms) - {"include", "exclude"}:
            raise validation_error(f"filters.{field}.{part} must be an object with 'include'/'exclude'")
        include, exclude = terms.get("include") or [], terms.get("exclude") or []
        if not isinstance(include, list) or not isinstance(exclude, list):
            raise validation_error(f"filters.{field}.{part}.include/exclude must be arrays")
        check = _structured_part(part == "all", include, exclude)
        if check is not None:
            parts_checks.append(check)
    combine = all if op == "and" else any
    parts = field.split(".")

    def predicate(doc: dict[str, Any]) -> bool:
        found = field_values(doc, parts)
        values, empty = {v for v in found if _hashable(v)}, not found
        return not parts_checks or combine(check(values, empty) for check in parts_checks)

    return predicate


def _structured_part(
    is_all: bool, include: list[Any], exclude: list[Any]
) -> Callable[[set[Any], bool], bool] | None:
    inc, exc = {v for v in include if v is not None}, {v for v in exclude if v is not None}
    inc_empty, exc_empty = None in include, None in exclude
    checks: list[Callable[[set[Any], bool], bool]] = []
    if inc_empty:
        checks.append(lambda values, empty: empty)
    if exc_empty:
        checks.append(lambda values, empty: not empty)
    if inc:
        checks.append((lambda v, _: inc.issubset(v)) if is_all else (lambda v, _: not inc.isdisjoint(v)))
    if exc:
        checks.append((lambda v, _: exc.isdisjoint(v)) if is_all else (lambda v, _: not exc.issubset(v)))
    if not checks:
        return None
    combine = all if is_all else any
    return lambda values, empty: combine(c(values, empty) for c in checks)


# --- ranges and dates -----------------------------------------------------------------------------
def parse_date(field: str, text: Any) -> datetime:
    """An ISO-8601 date (without a zone: UTC) or epoch seconds; a 400 naming ``field`` otherwise."""
    if (isinstance(text, int | float) and not isinstance(text, bool)) or _EPOCH.match(str(text)):
        try:  # the SDK's schema documents epoch seconds too ("utcformat, epoch")
            return datetime.fromtimestamp(float(text), UTC)
        except (OverflowError, OSError, ValueError):
            raise validation_error(f"field '{field}': {text!r} is out of range for a date") from None
    if isinstance(text, datetime):
        parsed = text
    else:
        if not isinstance(text, str):
            raise validation_error(f"field '{field}': expected a date string, got {text!r}")
        try:
            parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise validation_error(f"field '{field}': {text!r} is not an ISO-8601 date") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _stored_date(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _number(field: str, bound: Any) -> float:
    if isinstance(bound, bool):
        raise validation_error(f"field '{field}': expected a number, got {bound!r}")
    if isinstance(bound, int | float):
        return bound
    if isinstance(bound, str):
        try:
            number = float(bound)
        except ValueError:
            pass
        else:
            if not math.isnan(number):
                return number
    raise validation_error(f"field '{field}': expected a number, got {bound!r}")


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "": operator.eq,
}


def _is_condition(item: Any) -> bool:
    return isinstance(item, str) and _OPERATOR.match(item) is not None


def comparison_predicate(field: str, spec: Any, *, dates: bool, ranged: bool) -> Predicate:
    """A range (``[min, max]``) or a list of ``">x"`` conditions on a date or numeric field.

    Args:
        field: the (dotted) field name.
        spec: the filter value from the request.
        dates: compare as dates (else as numbers).
        ranged: a range field (clearml-server: only ``[min, max]``; here ``">x"`` lists too).
    """
    items = spec if isinstance(spec, list) else [spec]
    if len(items) == 2 and not any(_is_condition(i) for i in items):
        low, high = items
        if low is None and high is None:
            raise validation_error(f"field '{field}': at least one of min and max must be given")
        conditions = [(op, b) for op, b in ((">=", low), ("<=", high)) if b is not None]
        accepts_missing = low is None
    elif ranged and not all(_is_condition(i) for i in items):
        raise validation_error(f"field '{field}': expected [min, max] (null for an open end)")
    else:
        conditions = []
        for item in items:
            if not isinstance(item, str):
                raise validation_error(f"field '{field}': expected strings like '>=value', got {item!r}")
            match = _OPERATOR.match(item)
            conditions.append((match[1], match[2]) if match else ("", item))
        accepts_missing = False
    parts = field.split(".")
    if not dates:
        numbers = [(_COMPARE[op], _number(field, bound)) for op, bound in conditions]
        return _checker(parts, numbers, _stored_number, accepts_missing)
    bounds = [(_COMPARE[op], parse_date(field, bound)) for op, bound in conditions]
    # The server stores every date as utc_now() writes it: such strings compare as text against a
    # bound written the same way (no parsing per document); anything else is parsed.
    as_text = [(check, bound.astimezone(UTC).strftime(_STORED_FORMAT)) for check, bound in bounds]
    parsed_check = _checker(parts, bounds, _stored_date, accepts_missing)

    def predicate(doc: dict[str, Any]) -> bool:
        raw = get_path(doc, parts)
        if isinstance(raw, str) and len(raw) == 32 and raw[10] == "T" and raw.endswith("+00:00"):
            for check, bound in as_text:  # noqa: SIM110 - hot loop
                if not check(raw, bound):
                    return False
            return True
        return parsed_check(doc)

    return predicate


_STORED_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


def _checker(
    parts: list[str],
    bounds: list[tuple[Callable[[Any, Any], bool], Any]],
    to_value: Any,
    accepts_missing: bool,
) -> Predicate:
    def predicate(doc: dict[str, Any]) -> bool:
        raw = get_path(doc, parts)
        if raw is _MISSING or raw is None:
            return accepts_missing
        value = to_value(raw)
        if value is None:
            return False
        for check, bound in bounds:  # noqa: SIM110 - hot loop
            if not check(value, bound):
                return False
        return True

    return predicate


def _stored_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if isinstance(value, float) and math.isnan(value) else value


# --- equality and multi-field ---------------------------------------------------------------------
def equality_predicate(field: str, wanted: Any) -> Predicate:
    """Field equals ``wanted``; a list means any of its values; ``None`` matches missing."""
    parts = field.split(".")
    options = wanted if isinstance(wanted, list) else [wanted]
    accepts_missing = None in options
    literals = [w for w in options if w is not None]
    hashable = {w for w in literals if _hashable(w)}
    others = [w for w in literals if not _hashable(w)]

    def predicate(doc: dict[str, Any]) -> bool:
        value = get_path(doc, parts)
        if value is _MISSING or value is None:
            return accepts_missing
        if _hashable(value):
            return value in hashable or value in others
        if isinstance(value, list):  # MongoDB: a scalar matches an array containing it
            return value in others or any(_hashable(v) and v in hashable for v in value)
        return value in others

    return predicate


def multi_field_predicate(key: str, spec: Any, options: QueryOptions) -> Predicate | None:
    """``_any_``/``_or_``/``_all_``/``_and_``: one pattern or date condition over several fields."""
    if not isinstance(spec, dict) or set(spec) - {"fields", "pattern", "datetime"}:
        raise validation_error(f"field '{key}' must be an object with 'fields' and 'pattern' or 'datetime'")
    fields = spec.get("fields")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise validation_error(f"field '{key}.fields' must be an array of field names")
    pattern, when = spec.get("pattern"), spec.get("datetime")
    if (pattern is None) == (when is None):
        raise validation_error(f"field '{key}' needs exactly one of 'pattern' and 'datetime'")
    if pattern is not None:
        checks = [regex_predicate(f, pattern, ignore_case=True) for f in fields]
    else:
        checks = [
            comparison_predicate(f, when, dates=True, ranged=False)
            for f in fields
            if options.kind(f) == "datetime"
        ]
    if not checks:
        return None  # clearml-server: no field of the right kind, no condition
    combine = any if key in ("_any_", "_or_") else all
    return lambda doc: combine(check(doc) for check in checks)


MULTI_FIELD_KEYS = frozenset({"_any_", "_or_", "_all_", "_and_"})


def field_predicate(key: str, value: Any, options: QueryOptions) -> Predicate | None:
    """The predicate of one filter key of a ``get_all`` body (``None``: no condition)."""
    if value is None:
        return None  # clearml-server drops null-valued filters (the SDK sends "name": null...)
    kind = options.kind(key)
    if kind == "pattern":
        return None if value == "" else regex_predicate(key, value)
    if kind == "list":
        return None if value == [] else list_predicate(key, value)
    if kind in ("range", "datetime"):
        dates = key in DATE_FIELDS
        return comparison_predicate(key, value, dates=dates, ranged=kind == "range")
    if isinstance(value, list) and value and all(_is_condition(v) for v in value):
        return comparison_predicate(key, value, dates=key in DATE_FIELDS, ranged=False)
    return equality_predicate(key, value)
