"""The ``get_all`` query language of clearml-server, evaluated over in-memory documents.

Supported, as the SDK and agent use it:

* equality filters on any (dotted) field; a list value means "any of" (``status: [a, b]``);
  ``null`` matches a missing field; string lists of ``">=x"``/``"<=x"``/``">x"``/``"<x"`` are ranges
  (``created``, ``last_update``...);
* ``name`` (and other pattern fields) as a case-insensitive regular expression;
* tag lists (``tags``, ``system_tags``) with the operators ``__$all``, ``__$any``, ``__$not`` and a
  leading ``-`` to exclude;
* ``order_by`` over (nested) fields, ``-`` for descending; numbers compare as numbers, missing
  values sort first (as MongoDB sorts ``null``);
* ``page``/``page_size`` paging and ``only_fields`` projections with MongoDB semantics: a path
  whose parent is an object keeps the (possibly empty) parent; exclusions with a leading ``-``.

Documents are never mutated: projections build new dicts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from clearml_local.api import validation_error

Predicate = Callable[[dict[str, Any]], bool]
_MISSING = object()

#: Body keys that are query options, not field filters.
OPTION_KEYS = frozenset(
    {
        "only_fields",
        "order_by",
        "page",
        "page_size",
        "size",
        "search_hidden",
        "include_subprojects",
        "shallow_search",
        "scroll_id",
        "refresh_scroll",
        "allow_public",
        "method",
        "search_text",
        "_any_",
        "_all_",
        "batch_size",
        "check_own_contents",
        "stats_for_state",
        "stats_with_children",
        "include_stats",
        "include_stats_filter",
        "include_dataset_stats",
        "non_public",
        "active_users",
        "children_type",
        "children_tags",
        "children_tags_filter",
        "filters",
        "last_seen",
        "system_tags_filter",
        "tags_filter",
    }
)
TAG_FIELDS = frozenset({"tags", "system_tags"})
_RANGE = re.compile(r"^(>=|<=|>|<)(.*)$")


def get_path(doc: Any, path: str | Sequence[str]) -> Any:
    """The value at a dotted path, or the ``_MISSING`` sentinel (see :func:`is_missing`)."""
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


def is_missing(value: Any) -> bool:
    """Whether :func:`get_path` found nothing."""
    return value is _MISSING


# --- filters --------------------------------------------------------------------------------------
def tag_predicate(field: str, spec: Sequence[Any]) -> Predicate:
    """A predicate for a tag filter list (``["a", "-b", "__$all", "c", "__$not", "d"]``)."""
    include_any: list[str] = []
    include_all: list[str] = []
    exclude: list[str] = []
    mode = "any"
    negate_next = False
    for item in spec:
        if item is None:
            continue
        if not isinstance(item, str):
            raise validation_error(f"field '{field}' must be an array of strings")
        if item in ("__$all", "__$and"):
            mode, negate_next = "all", False
            continue
        if item in ("__$any", "__$or"):
            mode, negate_next = "any", False
            continue
        if item == "__$not":
            negate_next = True
            continue
        if negate_next or (item.startswith("-") and len(item) > 1):
            exclude.append(item if negate_next else item[1:])
            negate_next = False
        elif mode == "all":
            include_all.append(item)
        else:
            include_any.append(item)
    any_set, all_set, ex_set = set(include_any), set(include_all), set(exclude)

    def predicate(doc: dict[str, Any]) -> bool:
        tags = doc.get(field) or ()
        if ex_set and not ex_set.isdisjoint(tags):
            return False
        if all_set and not all_set.issubset(tags):
            return False
        return not any_set or not any_set.isdisjoint(tags)

    return predicate


def regex_predicate(field: str, pattern: str) -> Predicate:
    """A case-insensitive regular-expression filter on a string field."""
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise validation_error(f"field '{field}' is not a valid regular expression: {exc}") from None
    parts = field.split(".")

    def predicate(doc: dict[str, Any]) -> bool:
        value = get_path(doc, parts)
        return isinstance(value, str) and compiled.search(value) is not None

    return predicate


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(value, list) and not isinstance(wanted, list):
        return wanted in value  # MongoDB: a scalar matches an array containing it
    return value == wanted


def equality_predicate(field: str, wanted: Any) -> Predicate:
    """Field equals ``wanted``; a list means any of its values; ``None`` matches missing."""
    parts = field.split(".")
    if isinstance(wanted, list):
        ranges = _ranges(wanted)
        if ranges is not None:
            return _range_predicate(parts, ranges)
        options = wanted
        hashable = all(isinstance(w, str | int | float | bool) or w is None for w in options)
        option_set = set(options) if hashable else None
        accepts_missing = None in options

        def any_of(doc: dict[str, Any]) -> bool:
            value = get_path(doc, parts)
            if value is _MISSING or value is None:
                return accepts_missing
            if option_set is not None and isinstance(value, str | int | float | bool):
                return value in option_set
            return any(_matches(value, w) for w in options)

        return any_of

    def equals(doc: dict[str, Any]) -> bool:
        value = get_path(doc, parts)
        if value is _MISSING or value is None:
            return wanted is None
        return _matches(value, wanted)

    return equals


def _ranges(values: list[Any]) -> list[tuple[str, str]] | None:
    if not values or not all(isinstance(v, str) for v in values):
        return None
    found = [_RANGE.match(v) for v in values]
    if not all(found):
        return None
    return [(m[1], m[2]) for m in found if m]


def _range_predicate(parts: list[str], ranges: list[tuple[str, str]]) -> Predicate:
    checks = {
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        "<": lambda a, b: a < b,
    }

    def predicate(doc: dict[str, Any]) -> bool:
        value = get_path(doc, parts)
        if value is _MISSING or value is None:
            return False
        try:
            return all(checks[op](value, _coerce(bound, value)) for op, bound in ranges)
        except TypeError:
            return False

    return predicate


def _coerce(bound: str, like: Any) -> Any:
    if isinstance(like, bool) or not isinstance(like, int | float):
        return bound
    try:
        return float(bound)
    except ValueError:
        return bound


def build_filters(
    body: dict[str, Any],
    *,
    pattern_fields: Iterable[str] = ("name",),
    skip: Iterable[str] = (),
) -> list[Predicate]:
    """Predicates for every filter key of a ``get_all`` body (options and ``skip`` keys ignored)."""
    pattern_fields, skip = set(pattern_fields), set(skip)
    predicates: list[Predicate] = []
    for key, value in body.items():
        if key in OPTION_KEYS or key in skip:
            continue
        if key in TAG_FIELDS:
            spec = [value] if isinstance(value, str) else value
            if not isinstance(spec, list):
                raise validation_error(f"field '{key}' must be an array of strings")
            if spec:
                predicates.append(tag_predicate(key, spec))
        elif key in pattern_fields and isinstance(value, str):
            predicates.append(regex_predicate(key, value))
        elif key == "id":
            ids = [value] if isinstance(value, str) else value
            if not isinstance(ids, list):
                raise validation_error("field 'id' must be a string or an array of strings")
            predicates.append(equality_predicate("id", ids))
        elif isinstance(value, dict):
            continue  # structured filters of newer APIs are not supported: ignored like unknown keys
        else:
            predicates.append(equality_predicate(key, value))
    return predicates


# --- ordering, paging, projection -----------------------------------------------------------------
_RANKS: dict[type, int] = {int: 1, float: 1, str: 2, bool: 5}


def _sort_key_for(parts: list[str]) -> Callable[[dict[str, Any]], tuple[int, Any]]:
    """A sort key: (type rank, value); missing/None first, numbers, strings, others (as MongoDB)."""

    def key(doc: dict[str, Any]) -> tuple[int, Any]:
        value: Any = doc
        try:
            for part in parts:
                value = value[part]
        except (KeyError, TypeError, IndexError):
            return (0, 0)
        if value is None:
            return (0, 0)
        rank = _RANKS.get(type(value))
        return (rank, value) if rank is not None else (3, str(value))

    return key


def order(docs: list[dict[str, Any]], order_by: Sequence[str] | None) -> list[dict[str, Any]]:
    """Sort ``docs`` by the ``order_by`` fields (stable, multi-key, ``-`` for descending)."""
    if not order_by:
        return docs
    if isinstance(order_by, str):
        order_by = [order_by]
    if not isinstance(order_by, list):
        raise validation_error("field 'order_by' must be an array of field names")
    result = list(docs)
    for spec in reversed(order_by):
        if not isinstance(spec, str) or not spec.strip("-"):
            raise validation_error("field 'order_by' must be an array of field names")
        result.sort(key=_sort_key_for(spec.lstrip("-").split(".")), reverse=spec.startswith("-"))
    return result


def page(
    docs: list[dict[str, Any]], body: dict[str, Any], default_size: int | None = None
) -> list[dict[str, Any]]:
    """The requested page (``page`` is 0-based; ``page_size``/``size`` default: everything)."""
    number = body.get("page")
    size = body.get("page_size", body.get("size", default_size))
    if (number is not None and not isinstance(number, int)) or isinstance(number, bool):
        raise validation_error("field 'page' must be an integer")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise validation_error("field 'page_size' must be a non-negative integer")
    if size is None:
        return docs
    start = (number or 0) * size
    return docs[start : start + size]


def project(doc: dict[str, Any], only_fields: Sequence[str] | None) -> dict[str, Any]:
    """A MongoDB-style projection of ``doc`` (``id`` always included in inclusion projections)."""
    if not only_fields:
        return doc
    includes = [f for f in only_fields if not f.startswith("-")]
    if not includes:
        return _exclude(doc, [f[1:].split(".") for f in only_fields])
    tree: dict[str, Any] = {}
    for field in [*includes, "id"]:
        node = tree
        parts = field.split(".")
        for i, part in enumerate(parts):
            if node.get(part) is True:
                break  # a shorter path already takes the whole sub-document
            if i == len(parts) - 1:
                node[part] = True
            else:
                node = node.setdefault(part, {})
    return _include(doc, tree)


def _include(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_include(v, tree) for v in value if isinstance(v, dict | list)]
    out: dict[str, Any] = {}
    for key, sub in tree.items():
        if key not in value:
            continue
        child = value[key]
        if sub is True:
            out[key] = child
        elif isinstance(child, dict | list):
            out[key] = _include(child, sub)
    return out


def _exclude(doc: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    out = dict(doc)
    for parts in paths:
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                break
            node[part] = dict(child)
            node = node[part]
        else:
            node.pop(parts[-1], None)
    return out


def candidates(
    store: Any, collection: str, body: dict[str, Any], index_fields: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The documents a query can match, narrowed by ``id`` or the most selective indexed field.

    A superset of the matches (the query's predicates still run over it): ``id`` lists are looked
    up directly, otherwise the smallest equality filter on one of ``index_fields`` (see
    ``store.INDEXED_FIELDS``) picks the candidates, else every document.
    """
    wanted_ids = body.get("id")
    if isinstance(wanted_ids, str):
        wanted_ids = [wanted_ids]
    if isinstance(wanted_ids, list) and wanted_ids and all(isinstance(i, str) for i in wanted_ids):
        docs = (store.get(collection, i) for i in dict.fromkeys(wanted_ids))
        return [d for d in docs if d is not None]
    best: tuple[int, str, list[Any]] | None = None
    for field in index_fields:
        value = body.get(field, _MISSING)
        if value is _MISSING or value is None or isinstance(value, dict):
            continue
        values = value if isinstance(value, list) else [value]
        if _ranges(values) is not None:
            continue
        size = store.index_size(collection, field, values)
        if size is not None and (best is None or size < best[0]):
            best = (size, field, values)
    if best is None:
        return store.all(collection)
    return store.lookup(collection, best[1], best[2])


def run_query(
    docs: Iterable[dict[str, Any]],
    body: dict[str, Any],
    *,
    extra: Sequence[Predicate] = (),
    pattern_fields: Iterable[str] = ("name",),
    skip: Iterable[str] = (),
    default_order: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Filter, order, page and project ``docs`` as a ``get_all`` call asks.

    Args:
        docs: the candidate documents (read-only).
        body: the request body.
        extra: predicates the caller adds (hidden objects, project scopes...).
        pattern_fields: fields whose string value is a regular expression.
        skip: body keys the caller handles itself.
        default_order: ``order_by`` when the body has none.
    """
    only_fields = body.get("only_fields")
    if only_fields is not None and (
        not isinstance(only_fields, list) or not all(isinstance(f, str) for f in only_fields)
    ):
        raise validation_error("field 'only_fields' must be an array of strings")
    predicates = [*build_filters(body, pattern_fields=pattern_fields, skip=skip), *extra]

    def match(doc: dict[str, Any]) -> bool:
        for predicate in predicates:  # noqa: SIM110 - hot loop: cheaper than all(<genexpr>)
            if not predicate(doc):
                return False
        return True

    order_by = body.get("order_by") or default_order
    if order_by:
        matched = page(order([d for d in docs if match(d)], order_by), body)
    else:  # unordered: stop scanning once the requested page is full
        limit = _page_end(body)
        matched = []
        for doc in docs:
            if match(doc):
                matched.append(doc)
                if limit is not None and len(matched) >= limit:
                    break
        matched = page(matched, body)
    return [project(d, only_fields) for d in matched]


def _page_end(body: dict[str, Any]) -> int | None:
    size = body.get("page_size", body.get("size"))
    number = body.get("page") or 0
    if not isinstance(size, int) or isinstance(size, bool) or not isinstance(number, int):
        return None
    return (number + 1) * size if size >= 0 and number >= 0 else None
