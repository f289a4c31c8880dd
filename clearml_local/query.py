"""The ``get_all`` query language of clearml-server, evaluated over in-memory documents.

Filters (see :mod:`clearml_local.query_filters` for each kind and what matches clearml-server):
pattern fields as RE2 regular expressions, list fields with tag operators, ``[min, max]`` ranges,
dates parsed and compared as dates, ``_any_``/``_or_``/``_all_``/``_and_`` over several fields,
structured ``filters``, equality for any other field. Then:

* ``order_by`` over (nested) fields, ``-`` for descending; numbers compare as numbers, missing
  values sort first (as MongoDB sorts ``null``);
* ``page``/``page_size`` paging and ``only_fields`` projections with MongoDB semantics: a path
  whose parent is an object keeps the (possibly empty) parent; exclusions with a leading ``-``.

Documents are never mutated: projections build new dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from clearml_local.api import validation_error
from clearml_local.query_filters import (
    MULTI_FIELD_KEYS,
    TASK_QUERY,
    Predicate,
    QueryOptions,
    field_predicate,
    multi_field_predicate,
    structured_list_predicate,
)

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
        "last_seen",
        "system_tags_filter",
        "tags_filter",
        "task_types",  # the SDK's DatasetTrigger sends it; clearml-server ignores it too
    }
)


def build_filters(
    body: dict[str, Any], options: QueryOptions = TASK_QUERY, skip: Iterable[str] = ()
) -> list[Predicate]:
    """Predicates for every filter key of a ``get_all`` body (options and ``skip`` keys ignored)."""
    skip = set(skip)
    structured = body.get("filters") or {}
    if not isinstance(structured, dict):
        raise validation_error("field 'filters' must be an object (field -> list filter)")
    predicates: list[Predicate | None] = []
    for key, spec in structured.items():
        if key not in skip and options.kind(key) == "list" and spec:
            predicates.append(structured_list_predicate(key, spec))
    for key, value in body.items():
        if key in OPTION_KEYS or key in skip or key == "filters" or key in structured:
            continue
        if key in MULTI_FIELD_KEYS:
            predicates.append(multi_field_predicate(key, value, options))
        else:
            predicates.append(field_predicate(key, value, options))
    return [p for p in predicates if p is not None]


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


def _literals(values: list[Any]) -> bool:
    """Whether ``values`` are plain values to look up (no operator, exclusion, range or null)."""
    return bool(values) and all(
        isinstance(v, str | int | float | bool)
        and not (isinstance(v, str) and v.startswith(("-", "__$", ">", "<")))
        for v in values
    )


def candidates(
    store: Any, collection: str, body: dict[str, Any], index_fields: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The documents a query can match, narrowed by ``id`` or the most selective indexed field.

    A superset of the matches (the query's predicates still run over it): ``id`` lists are looked
    up directly, otherwise the smallest equality filter on one of ``index_fields`` (see
    ``store.INDEXED_FIELDS``) picks the candidates, else every document. A filter with operators
    (``-x``, ``__$not``, ``>x``, ``null``) or a structured ``filters`` entry does not narrow.
    """
    structured = body.get("filters") if isinstance(body.get("filters"), dict) else {}
    wanted_ids = body.get("id")
    if isinstance(wanted_ids, str):
        wanted_ids = [wanted_ids]
    if isinstance(wanted_ids, list) and _literals(wanted_ids) and "id" not in structured:
        docs = (store.get(collection, i) for i in dict.fromkeys(wanted_ids))
        return [d for d in docs if d is not None]
    best: tuple[int, str, list[Any]] | None = None
    for field in index_fields:
        value = body.get(field)
        values = value if isinstance(value, list) else [value]
        if value is None or field in structured or not _literals(values):
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
    options: QueryOptions = TASK_QUERY,
    extra: Sequence[Predicate] = (),
    skip: Iterable[str] = (),
    default_order: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Filter, order, page and project ``docs`` as a ``get_all`` call asks.

    Args:
        docs: the candidate documents (read-only).
        body: the request body.
        options: which fields take which kind of filter (``query_filters.TASK_QUERY``...).
        extra: predicates the caller adds (hidden objects, project scopes...).
        skip: body keys the caller handles itself.
        default_order: ``order_by`` when the body has none.
    """
    only_fields = body.get("only_fields")
    if only_fields is not None and (
        not isinstance(only_fields, list) or not all(isinstance(f, str) for f in only_fields)
    ):
        raise validation_error("field 'only_fields' must be an array of strings")
    predicates = [*build_filters(body, options, skip), *extra]

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
