"""Checking and encoding the JSON values a job carries (params and ctx).

Values are checked before anything is written, so a bad value never reaches
the database. Only the types that survive a JSON round trip unchanged are
allowed: a tuple would come back as a list and an int key as a string, which
would make a step see something other than what was stored.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidValueError

MAX_DEPTH = 64
"""How deeply dicts and lists may nest inside params or ctx."""

DEFAULT_MAX_CTX_BYTES = 1024 * 1024
"""The default cap on the encoded size of a job's ctx (1 MiB)."""

_ALLOWED = "dict (with str keys), list, str, int, float, bool and None"


def check_json(value: Any, field: str, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise InvalidValueError unless ``value`` is plain JSON data.

    ``field`` names the value in the message, e.g. ``params`` or ``ctx``; the
    message points at the offending element as ``params['a'][2]``.
    """
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > max_depth:
            raise InvalidValueError(
                f"{field} nests deeper than {max_depth} levels at {path}; "
                "flatten the structure"
            )
        if item is None or isinstance(item, (str, bool, int)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidValueError(
                    f"{path} is {item!r}; JSON has no NaN or Infinity, "
                    "use None or a string instead"
                )
            continue
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidValueError(
                        f"{path} has the key {key!r} of type "
                        f"{type(key).__name__}; JSON object keys must be str"
                    )
                stack.append((child, f"{path}[{key!r}]", depth + 1))
            continue
        if isinstance(item, list):
            for index, child in enumerate(item):
                stack.append((child, f"{path}[{index}]", depth + 1))
            continue
        hint = " (convert it to a list)" if isinstance(item, tuple) else ""
        raise InvalidValueError(
            f"{path} is a {type(item).__name__}{hint}; only {_ALLOWED} are allowed"
        )


def check_dict(value: Any, field: str) -> dict[str, Any]:
    """Check that ``value`` is a JSON object (a dict) and return it."""
    if not isinstance(value, dict):
        raise InvalidValueError(f"{field} must be a dict, got {type(value).__name__}")
    check_json(value, field)
    return value


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def dumps(value: Any) -> str:
    """Encode checked JSON data canonically: sorted keys, no spaces.

    Equal values always give equal text, which de-duplication relies on.
    """
    if not value and type(value) is dict:
        return "{}"  # The usual empty ctx, without the encoder's setup.
    return _CANONICAL.encode(value)


def loads(text: str | bytes | dict[str, Any] | list[Any]) -> Any:
    """Decode JSON read from a database; drivers may have decoded it already."""
    if isinstance(text, (dict, list)):
        return text
    return json.loads(text)


def copy_json(value: Any) -> Any:
    """A deep copy of JSON data, several times faster than copy.deepcopy."""
    kind = type(value)
    if kind is dict:
        return {key: copy_json(item) for key, item in value.items()}
    if kind is list:
        return [copy_json(item) for item in value]
    return value


def check_ctx_size(encoded: str, max_bytes: int, field: str = "ctx") -> None:
    """Raise InvalidValueError if the encoded ctx is over the size cap."""
    size = len(encoded.encode("utf-8"))
    if size > max_bytes:
        raise InvalidValueError(
            f"{field} is {size} bytes encoded, over the cap of {max_bytes} "
            "bytes; keep large data in your own tables and put its key in "
            "the ctx, or raise max_ctx_bytes"
        )
