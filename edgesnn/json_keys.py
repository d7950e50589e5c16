"""Unknown keys in edgesnn's JSON files (device profiles, plan files): one line naming the key.

A misspelt optional key (``"gpu_memroy_bytes"``) was silently ignored and its field took the
default. :func:`check_keys` refuses any key an object of a known layout does not have, naming
the file, the key's path (``layers[3].strategy_x``), the known keys and the closest known one.

Keys starting with ``_`` (``"_comment"``, ``"_notes"``) are comments: accepted and ignored at
every level (JSON has no comments, and no field of these formats starts with ``_``).

A key written twice in one object (``"memory_bytes"`` edited by adding a second line) was read
as its last value, silently: :func:`loads_unique` refuses it (:class:`DuplicateKeyError`).
Imports only the standard library (the device catalogue and the plan loader use it).
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Callable, Iterable, Mapping

from .errors import clip

__all__ = ["COMMENT_PREFIX", "DuplicateKeyError", "check_keys", "key_path", "loads_unique"]

#: A key starting with this is a comment, at any level of a device profile or plan file.
COMMENT_PREFIX = "_"
#: Unknown keys that were meant as comments: the message suggests ``"_" + key`` for them.
_COMMENT_WORDS = frozenset({"comment", "comments", "note", "notes", "remark", "remarks", "todo"})


def key_path(parent: str, key: str) -> str:
    """``parent.key`` (``key`` alone at the top); a key that is not a plain name is quoted
    (``sources["a b"]``) and cut to 60 characters."""
    shown = key if key.isidentifier() else "[" + clip(json.dumps(key)) + "]"
    if not parent:
        return shown
    return parent + ("." + shown if key.isidentifier() else shown)


def check_keys(obj: Any, known: Iterable[str], parent: str, fail: Callable[[str, str], Exception],
               legacy: Iterable[str] = ()) -> None:
    """Refuse a key of the JSON object ``obj`` that is neither in ``known`` nor in ``legacy``
    (keys older edgesnn versions wrote, still read) nor a comment (``_...``).

    ``parent``: the object's path in the file (``""`` at the top, ``"layers[3]"``); ``fail(path,
    detail)`` builds the exception, so each format keeps its own message style. ``detail`` reads
    ``unknown key (did you mean "memory_bytes"?); known keys: name, memory_bytes, ...``. A value
    that is not an object is left alone (the type checks name it).
    """
    if not isinstance(obj, Mapping):
        return
    names = list(known)
    allowed = set(names) | set(legacy)
    unknown = [k for k in obj if not (isinstance(k, str) and (k in allowed or k.startswith(COMMENT_PREFIX)))]
    if not unknown:
        return
    key = str(unknown[0])
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    word = key.strip("/# ") or "comment"  # "//", "# notes": meant as a comment
    if word.lower() in _COMMENT_WORDS:
        hint = f" (for a comment write {json.dumps(COMMENT_PREFIX + word)})"
    elif close:
        hint = f" (did you mean {json.dumps(close[0])}?)"
    else:
        hint = f" (a key starting with {COMMENT_PREFIX!r} is a comment)"
    more = f"; also unknown: {clip(', '.join(key_path('', str(k)) for k in unknown[1:]))}" if unknown[1:] else ""
    raise fail(key_path(parent, key), f"unknown key{hint}; known keys: {', '.join(names)}{more}")


class DuplicateKeyError(ValueError):
    """A JSON object holds the same key twice (JSON readers keep the last, which hides an edit)."""


def _unique_pairs(pairs: "list[tuple[str, Any]]") -> "dict[str, Any]":
    """``json.loads``' ``object_pairs_hook``: the object of ``pairs``, refusing a repeated key."""
    obj: "dict[str, Any]" = {}
    for key, value in pairs:
        if key in obj and not key.startswith(COMMENT_PREFIX):
            raise DuplicateKeyError(f"key {clip(json.dumps(key))} appears twice in one object; keep one (a "
                                    "JSON reader would take the last, silently)")
        obj[key] = value
    return obj


def loads_unique(text: str) -> Any:
    """``json.loads(text)``, refusing an object that holds a key twice (comments, ``_...``, may repeat).

    Raises:
        DuplicateKeyError: a repeated key (a ``ValueError``; the message names the key).
        json.JSONDecodeError, ValueError, RecursionError: as :func:`json.loads`.
    """
    return json.loads(text, object_pairs_hook=_unique_pairs)
