"""FHIR search: request parameters -> one SQL query over the index tables.

Parsing is separate from SQL so it can be tested alone. Every condition is a subquery on an
index table, combined with the reader's access filter in the same statement: totals, pages and
_include only ever see what the reader may see.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode

from sqlalchemy import and_, exists, false, func, not_, or_, select, true
from sqlalchemy.sql import ColumnElement, Select

from gateway.mapping.dates import InvalidTime, fhir_range
from gateway.mapping.identity import compact_ins, identifier_value, ins_key_is_valid

from .schema import resources, search_date, search_reference, search_string, search_token
from .searchparams import COMMON_PARAMS, SEARCH_PARAMS, SearchParam, normalize

DEFAULT_COUNT = 20
MAX_COUNT = 500
# A search's parameters, and their values all together: each value is a condition of the query.
# SQLite refuses an expression deeper than 1,000 (1,000 types were a 500 there), and past that one
# request held a worker for as long as its URL was long (200,000 types: 101 s on PostgreSQL).
# PostgreSQL plans each parameter as a join: 100 of them took 1–2 s to plan, 30 take 70 ms.
MAX_SEARCH_PARAMETERS = 30
MAX_SEARCH_VALUES = 100
DATE_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
RESULT_PARAMS = {"_count", "_sort", "_summary", "_elements", "_include", "_revinclude", "_format", "_cursor",
                 "_total", "_pretty"}
SORTABLE_TYPES = ("date", "string")


def query_string(request: "SearchRequest") -> str:
    """The search as the audit trail records it: type and parameters, without paging state."""
    return f"{request.res_type}?{urlencode(request.base_params)}"


class SearchError(ValueError):
    """A search the server cannot answer as asked (answered 400); `code` is the issue's code."""

    def __init__(self, message: str, code: str = "invalid"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Criterion:
    name: str              # parameter name as sent, e.g. "patient.identifier"
    param: str             # parameter on the searched type ("patient")
    modifier: str | None
    chain: str | None      # parameter on the referenced type ("identifier")
    values: tuple[str, ...]
    chain_type: str | None = None   # the referenced type a chain names (subject:Patient.identifier)


@dataclass
class SearchRequest:
    res_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    sort: list[tuple[str, bool]] = field(default_factory=lambda: [("_lastUpdated", True)])  # (key, descending)
    summary_count: bool = False
    # _summary and _elements as given, which the answer honours (gateway/fhir/subsetting.py)
    summary: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    total: str = "estimate"       # _total: none, estimate (exact up to TOTAL_BOUND) or accurate
    include: list[tuple[str, str, str | None]] = field(default_factory=list)   # (source type, param, target type)
    revinclude: list[tuple[str, str, str | None]] = field(default_factory=list)
    cursor: tuple[list, str] | None = None
    ignored: list[str] = field(default_factory=list)
    base_params: list[tuple[str, str]] = field(default_factory=list)  # what self/next links repeat


# A '+' offset typed unencoded in a URL (curl '…?date=ge2026-01-01T10:00:00+01:00') reaches the
# query as a space. No date takes that shape otherwise, so the space is read as the '+' it was, as
# several FHIR servers do: it was refused, "'2026-01-01T10:00:00 01:00' is not a FHIR dateTime".
_OFFSET_AS_SPACE = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})(?=,|$)")


def offset_restored(raw: str) -> str:
    """A date value (or comma-separated values) with each '+' offset that URL decoding made a space."""
    return _OFFSET_AS_SPACE.sub(r"\1+\2", raw)


def split_values(raw: str) -> tuple[str, ...]:
    """Comma-separated alternatives (OR); '\\,' is a literal comma."""
    parts = re.split(r"(?<!\\),", raw)
    return tuple(p.replace("\\,", ",") for p in parts if p != "")


def _token_as_stored(value: str) -> str:
    """A token as the index holds it: an INS (`system|1 85 06 75 112 045 54`) as its 15 characters;
    without a system, a value printed in groups whose digits make an INS with its key."""
    system, bar, code = value.partition("|")
    if bar and code:
        return f"{system}|{identifier_value(system, code)}"
    if not bar and (" " in value or "." in value) and ins_key_is_valid(compact := compact_ins(value)):
        return compact
    return value


def parse_search(res_type: str, params: list[tuple[str, str]], *, strict: bool = False) -> SearchRequest:
    known = SEARCH_PARAMS.get(res_type)
    if known is None:
        raise SearchError(f"search is not supported on {res_type}")
    request = SearchRequest(res_type)
    if len(params) > MAX_SEARCH_PARAMETERS:
        raise SearchError(f"the search has {len(params)} parameters, over the {MAX_SEARCH_PARAMETERS} this "
                          "gateway takes")
    taken = 0
    for name, raw in params:
        # A result parameter's values count too: 10,000 _sort keys were a 500 after 24 s. Counted by
        # their commas, but escaped ones: splitting each parameter doubled the parsing's cost.
        taken += raw.count(",") - raw.count("\\,") + 1
        if taken > MAX_SEARCH_VALUES:
            raise SearchError(f"the search has more than {MAX_SEARCH_VALUES} values, all its parameters together: "
                              "ask for them in several searches")
        if name in RESULT_PARAMS:
            _result_param(request, name, raw)
            continue
        base, _, modifier = name.partition(":")
        # PDSm names parameters by a chain typed with ':' (source:Patient.given): the whole name, or
        # all of it before a modifier, is then the parameter.
        if name in known:
            base, modifier = name, ""
        elif name.rpartition(":")[0] in known:
            base, _, modifier = name.rpartition(":")
        # R4's chain through a reference of one type (subject:Patient.identifier): the type, then
        # the parameter of that type, with its own modifier (subject:Patient.name:exact). It was
        # refused as an unknown modifier.
        chain_type = None
        if "." in modifier and base in known:
            chain_type, _, chained = modifier.partition(".")
            chained, _, modifier = chained.partition(":")
            base = f"{base}.{chained}"
        # A parameter whose name holds a dot (author.given) is a parameter, not a chain.
        param, chain = (base, "") if base in known else base.partition(".")[::2]
        spec = known.get(param)
        if param in COMMON_PARAMS:
            spec = SearchParam(param, "token" if param == "_id" else "date", lambda r: [])
        targets = (_chain_target(spec, chain) if spec is not None and spec.type == "reference" and chain else [])
        if chain_type is not None:
            targets = [target for target in targets if target == chain_type]
        if spec is None or (chain and not targets):
            if strict:
                raise SearchError(f"unknown search parameter '{name}' for {res_type}")
            request.ignored.append(name)
            continue
        # A modifier of a chained parameter applies to the parameter at the end of the chain.
        modified = SEARCH_PARAMS[targets[0]].get(chain, spec) if chain else spec
        if modifier and modifier not in _MODIFIERS[modified.type] and not (
                modified.type == "reference" and modifier in SEARCH_PARAMS):
            raise SearchError(f"modifier ':{modifier}' is not supported on parameter '{base}'")
        if modified.type == "date":
            raw = offset_restored(raw)
        values = split_values(raw)
        if not values:
            raise SearchError(f"parameter '{name}' has no value")
        if modifier == "missing" and values[0] not in ("true", "false"):
            raise SearchError(f"'{name}' takes true or false")
        if modified.type == "token":
            values = tuple(_token_as_stored(value) for value in values)
        if spec.type == "date" and modifier != "missing":
            for value in values:
                _date_condition_bounds(value, name)
        request.criteria.append(Criterion(name, param, modifier or None, chain or None, values, chain_type))
        request.base_params.append((name, raw))
    return request


_MODIFIERS = {
    "token": {"not", "missing"},
    "string": {"exact", "contains", "missing"},
    "date": {"missing"},
    "reference": {"missing"},
}


def _chain_target(spec: SearchParam, chain: str) -> list[str]:
    return [t for t in spec.targets if chain in SEARCH_PARAMS.get(t, {}) or chain in COMMON_PARAMS]


def _result_param(request: SearchRequest, name: str, raw: str) -> None:
    if name == "_count":
        if not (raw.isascii() and raw.isdigit()):
            raise SearchError("_count must be a non-negative integer")
        request.count = min(int(raw), MAX_COUNT)
        request.base_params.append((name, str(request.count)))
    elif name == "_sort":
        keys = []
        for key in split_values(raw):
            descending = key.startswith("-")
            key = key.lstrip("-")
            spec = SEARCH_PARAMS[request.res_type].get(key)
            if key not in COMMON_PARAMS and (spec is None or spec.type not in SORTABLE_TYPES):
                raise SearchError(f"cannot sort {request.res_type} by '{key}'")
            keys.append((key, descending))
        request.sort = keys
        request.base_params.append((name, raw))
    elif name in ("_summary", "_elements"):
        (request.summary if name == "_summary" else request.elements).append(raw)
        request.summary_count = request.summary_count or raw == "count"
        request.base_params.append((name, raw))
    elif name in ("_include", "_revinclude"):
        for value in split_values(raw):
            parts = value.split(":")
            if len(parts) not in (2, 3):
                raise SearchError(f"{name}={value}: expected Type:parameter[:TargetType]")
            if parts[0] not in SEARCH_PARAMS:
                raise SearchError(f"{name}={value}: {parts[0]} is not a type this server searches "
                                  f"({', '.join(sorted(SEARCH_PARAMS))})")
            spec = SEARCH_PARAMS[parts[0]].get(parts[1])
            if spec is None or spec.type != "reference":
                raise SearchError(f"{name}={value}: {parts[1]} is not a reference parameter of {parts[0]}")
            if name == "_include" and parts[0] != request.res_type:
                raise SearchError(f"_include={value}: the source type must be {request.res_type}")
            entry = (parts[0], parts[1], parts[2] if len(parts) == 3 else None)
            (request.include if name == "_include" else request.revinclude).append(entry)
        request.base_params.append((name, raw))
    elif name == "_cursor":
        request.cursor = decode_cursor(raw)
    elif name == "_total":
        if raw not in ("none", "estimate", "accurate"):
            raise SearchError("_total takes none, estimate or accurate")
        request.total = raw
        request.base_params.append((name, raw))


# Paging cursors are signed: a forged or edited one is refused before its keys reach the SQL. Every
# process of a gateway signs with the same key (derived from GATEWAY_SECRET_KEY by the app factory),
# so a cursor one worker issued is good on another.
_cursor_key = secrets.token_bytes(32)


def set_cursor_key(secret: str) -> None:
    global _cursor_key
    _cursor_key = hashlib.sha256(b"gateway paging cursor\0" + secret.encode()).digest()


def _signature(payload: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(_cursor_key, payload, hashlib.sha256).digest()[:18]).decode()


def encode_cursor(keys: list, direction: str) -> str:
    raw = base64.urlsafe_b64encode(json.dumps({"k": keys, "d": direction}, separators=(",", ":")).encode())
    return raw.decode().rstrip("=") + "." + _signature(raw.rstrip(b"="))


def decode_cursor(value: str) -> tuple[list, str]:
    refused = SearchError("_cursor is not a paging cursor issued by this server")
    payload, _, signature = value.partition(".")
    if not payload or not hmac.compare_digest(signature.encode(), _signature(payload.encode()).encode()):
        raise refused
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        keys, direction = data["k"], data["d"]
        if not isinstance(keys, list) or direction not in ("n", "p") or not all(
                isinstance(k, (str, int, float)) or k is None for k in keys):
            raise ValueError
        return keys, direction
    except (ValueError, KeyError, TypeError):
        raise refused from None


# ---------------------------------------------------------------------------------------------
# SQL


def _date_condition_bounds(value: str, name: str) -> tuple[str, str, str]:
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    try:
        low, high = fhir_range(text)
    except InvalidTime as exc:
        raise SearchError(f"{name}: {exc}") from None
    return prefix, low, high


def _date_match(low_col, high_col, value: str, name: str) -> ColumnElement[bool]:
    prefix, low, high = _date_condition_bounds(value, name)
    return {
        "eq": and_(low_col >= low, high_col <= high),
        "ne": not_(and_(low_col >= low, high_col <= high)),
        "lt": low_col < low,
        "gt": high_col > high,
        "le": low_col <= high,
        "ge": high_col >= low,
        "sa": low_col > high,
        "eb": high_col < low,
        "ap": and_(low_col <= high, high_col >= low),
    }[prefix]


def _token_match(value: str) -> ColumnElement[bool]:
    if "|" in value:
        system, code = value.split("|", 1)
        if not code:
            return search_token.c.system == system
        return and_(search_token.c.system == system, search_token.c.code == code)
    return search_token.c.code == value


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _string_match(value: str, modifier: str | None) -> ColumnElement[bool]:
    if modifier == "exact":
        return search_string.c.exact == value
    norm = _like_escape(normalize(value))
    pattern = f"%{norm}%" if modifier == "contains" else f"{norm}%"
    return search_string.c.value.like(pattern, escape="\\")


def _reference_targets(value: str, base_url: str | None) -> tuple[str | None, str]:
    if base_url and value.startswith(base_url.rstrip("/") + "/"):
        value = value[len(base_url.rstrip("/")) + 1:]
    if "/" in value:
        target_type, target_id = value.rsplit("/", 1)
        return target_type.rsplit("/", 1)[-1], target_id
    return None, value


def matching_ids(res_type: str, criterion: Criterion, base_url: str | None = None) -> tuple[Select, bool]:
    """A subquery of the ids of `res_type` matching the criterion, and whether to negate it.

    `_id` and `_lastUpdated` are columns of the resources table: see `direct_condition`.
    """

    spec = SEARCH_PARAMS[res_type][criterion.param]
    table = {"token": search_token, "string": search_string, "date": search_date,
             "reference": search_reference}[spec.type]
    owned = and_(table.c.res_type == res_type, table.c.param == criterion.param)
    if criterion.modifier == "missing":
        # missing=true: no index row at all; the caller negates the "has a row" subquery.
        return select(table.c.res_id).where(owned), criterion.values[0] == "true"

    if spec.type == "reference" and criterion.chain:
        alternatives = []
        for target in [criterion.chain_type] if criterion.chain_type else _chain_target(spec, criterion.chain):
            chained = Criterion(criterion.chain, criterion.chain, criterion.modifier, None, criterion.values)
            direct = direct_condition(chained)
            if direct is not None:
                inner, negate = select(resources.c.res_id).where(resources.c.res_type == target, direct), False
            else:
                inner, negate = matching_ids(target, chained, base_url)
            target_ids = search_reference.c.target_id.notin_(inner) if negate else search_reference.c.target_id.in_(inner)
            alternatives.append(and_(search_reference.c.target_type == target, target_ids))
        return select(search_reference.c.res_id).where(owned, or_(*alternatives)), False

    if spec.type == "token":
        cond = or_(*(_token_match(v) for v in criterion.values))
        return select(search_token.c.res_id).where(owned, cond), criterion.modifier == "not"
    if spec.type == "string":
        cond = or_(*(_string_match(v, criterion.modifier) for v in criterion.values))
        return select(search_string.c.res_id).where(owned, cond), False
    if spec.type == "date":
        cond = or_(*(_date_match(search_date.c.low, search_date.c.high, v, criterion.name) for v in criterion.values))
        return select(search_date.c.res_id).where(owned, cond), False
    # reference
    alternatives = []
    for value in criterion.values:
        target_type, target_id = _reference_targets(value, base_url)
        if criterion.modifier and criterion.modifier in SEARCH_PARAMS:
            target_type = criterion.modifier
        cond = search_reference.c.target_id == target_id
        if target_type:
            cond = and_(cond, search_reference.c.target_type == target_type)
        alternatives.append(cond)
    return select(search_reference.c.res_id).where(owned, or_(*alternatives)), False


def direct_condition(criterion: Criterion) -> ColumnElement[bool] | None:
    """Conditions on the resources table itself (`_id`, `_lastUpdated`), or None."""
    if criterion.param == "_id":
        condition = resources.c.res_id.in_(criterion.values)
        return not_(condition) if criterion.modifier == "not" else condition
    if criterion.param == "_lastUpdated":
        return or_(*(_date_match(resources.c.last_updated, resources.c.last_updated, v, criterion.name)
                     for v in criterion.values))
    return None


# How many rows a criterion of each kind is likely to match: the most selective one drives the
# query (an IN on the resources key), every other is probed row by row with a correlated EXISTS.
# Driving with `status=current` would make the database list every current document first.
_BROAD_TOKENS = {"status", "security-label", "isArchived", "category", "language", "contenttype", "gender", "active"}


def _selectivity(res_type: str, criterion: Criterion) -> int:
    if criterion.modifier in ("not", "missing"):
        return 9
    if criterion.param == "_id":
        return 0
    spec = SEARCH_PARAMS[res_type].get(criterion.param)
    if spec is None:
        return 8
    if spec.type == "reference":
        return 1
    if spec.type == "token":
        return 7 if criterion.param in _BROAD_TOKENS else 2
    return {"string": 3, "date": 6}[spec.type]


def names_its_rows(request: SearchRequest) -> bool:
    """Whether a criterion names the rows to look at: a reference (a patient, a subject) or ids."""
    return any(_selectivity(request.res_type, c) <= 1 for c in request.criteria)


def where_clause(request: SearchRequest, access: ColumnElement[bool], base_url: str | None, *,
                 access_drives: bool = False) -> ColumnElement[bool]:
    """The search's condition. The most selective criterion drives (an IN on the resources key), or
    with `access_drives` the access filter's list of patients: then every criterion is probed row by
    row, and the type is compared as an expression, which keeps SQLite from walking the
    (type, last updated) index in the page's order, hoping for its first rows early."""
    kind = resources.c.res_type.concat("") if access_drives else resources.c.res_type
    conditions = [kind == request.res_type, resources.c.deleted == false(), access]
    ordered = sorted(request.criteria, key=lambda c: _selectivity(request.res_type, c))
    for position, criterion in enumerate(ordered):
        direct = direct_condition(criterion)
        if direct is not None:
            conditions.append(direct)
            continue
        subquery, negate = matching_ids(request.res_type, criterion, base_url)
        if position == 0 and not negate and not access_drives:
            conditions.append(resources.c.res_id.in_(subquery))
            continue
        owner = subquery.selected_columns[0]
        probe = exists(subquery.where(owner == resources.c.res_id))
        conditions.append(not_(probe) if negate else probe)
    return and_(*conditions)


def sort_columns(request: SearchRequest) -> list[tuple[ColumnElement, bool]]:
    columns = []
    for key, descending in request.sort:
        if key == "_lastUpdated":
            column = resources.c.last_updated
        elif key == "_id":
            column = resources.c.res_id
        else:
            spec = SEARCH_PARAMS[request.res_type][key]
            table, value = (search_date, search_date.c.low) if spec.type == "date" else (search_string, search_string.c.value)
            column = func.coalesce(
                select(func.min(value)).where(table.c.res_type == request.res_type, table.c.param == key,
                                              table.c.res_id == resources.c.res_id).scalar_subquery(), "")
        columns.append((column, descending))
    if not any(key == "_id" for key, _ in request.sort):
        columns.append((resources.c.res_id, request.sort[0][1] if request.sort else False))
    return columns


def after_keys(columns: list[tuple[ColumnElement, bool]], keys: list, reverse: bool) -> ColumnElement[bool]:
    """Rows strictly after `keys` in the sort order (before them when paging backwards)."""
    if len(keys) != len(columns):
        raise SearchError("_cursor does not belong to this search")
    alternatives = []
    for i, (column, descending) in enumerate(columns):
        equal_prefix = [c == k for (c, _), k in zip(columns[:i], keys[:i])]
        goes_down = descending != reverse
        step = column < keys[i] if goes_down else column > keys[i]
        alternatives.append(and_(*equal_prefix, step))
    return or_(*alternatives) if alternatives else true()
