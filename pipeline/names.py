"""Names that reach the catalog, the warehouse and the tracking store: tables, namespaces, tags and branches, experiments and registered models.

A table name becomes a directory under the warehouse and a key in the catalog, so it is
checked once, at the edge, before anything is read or written: ``zz.t`` and ``zz.t<TAB>``
must not become two tables in one folder, ``../../etc`` must not become a path, and ``?`` or
``#`` must not turn into stray files under another name. Ref names (tags, branches) live only
in table metadata, so they may hold ``/`` (``icetrain/digits/v1``) but no control characters
or surrounding spaces. An experiment name becomes a folder of the project's artifact store
and a registered model's name part of an Iceberg tag (``icetrain/NAME/vN``), so both are held
to a narrow alphabet with no path separators and no ``..``: ``../../x`` or ``/tmp/x`` must not
put a run's artifacts outside the project home.
"""

from __future__ import annotations

import re
import unicodedata

from pipeline.errors import InvalidNameError

MAX_PART = 128
MAX_IDENTIFIER = 255
MAX_REF = 255
MAX_TRACKING_NAME = 128
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_TRACKING_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_. -]*")


def check_table_name(identifier: str) -> tuple[str, str]:
    """Validate ``namespace.table`` and split it; nested namespaces (``a.b.t``) are allowed.

    Each part starts with a letter, digit or underscore and holds only letters, digits,
    ``_`` and ``-`` (at most 128 characters; 255 in all).

    Raises:
        InvalidNameError: the name is empty, too long, or a part has another character.
    """
    if not isinstance(identifier, str) or not identifier:
        raise InvalidNameError("a table name is required, as 'namespace.table'")
    shown = _show(identifier)
    if len(identifier) > MAX_IDENTIFIER:
        raise InvalidNameError(f"table name {shown} is {len(identifier)} characters long; at most {MAX_IDENTIFIER}")
    parts = identifier.split(".")
    if len(parts) < 2:
        raise InvalidNameError(f"table must be named as 'namespace.table', got {shown}")
    for part in parts:
        problem = _part_problem(part)
        if problem:
            raise InvalidNameError(f"table name {shown} is not valid: {problem}")
    return ".".join(parts[:-1]), parts[-1]


def check_ref_name(name: str, kind: str = "tag") -> str:
    """Validate a tag or branch name: 1-255 printable characters, no surrounding spaces.

    Raises:
        InvalidNameError: empty, too long, surrounded by spaces or holding a control character.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"a {kind} name must not be empty")
    shown = _show(name)
    if len(name) > MAX_REF:
        raise InvalidNameError(f"{kind} name {shown} is {len(name)} characters long; at most {MAX_REF}")
    if name != name.strip():
        raise InvalidNameError(f"{kind} name {shown} has surrounding spaces")
    bad = next((c for c in name if not c.isprintable() or (unicodedata.category(c).startswith("Z") and c != " ")), None)
    if bad is not None:
        raise InvalidNameError(f"{kind} name {shown} holds the unprintable character {bad!r}")
    return name


def check_tracking_name(name: str, kind: str = "experiment") -> str:
    """Validate an MLflow experiment or registered-model name before anything is read or trained.

    1-128 characters: letters, digits, ``_``, ``-``, ``.`` and inner spaces, starting with a
    letter, digit or ``_``; no ``..``, no ``/`` or ``\\``.

    Raises:
        InvalidNameError: the name could escape the artifact store or make a bad tag.
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(
            f"an {kind} name must not be empty" if kind[0] in "aeiou" else f"a {kind} name must not be empty"
        )
    shown = _show(name)
    if len(name) > MAX_TRACKING_NAME:
        raise InvalidNameError(f"{kind} name {shown} is {len(name)} characters long; at most {MAX_TRACKING_NAME}")
    if not _TRACKING_NAME.fullmatch(name) or ".." in name or name != name.rstrip(" ."):
        bad = next((c for c in name if not (c.isascii() and (c.isalnum() or c in "_. -"))), None)
        why = (
            f"holds {bad!r}"
            if bad is not None
            else "starts with a character other than a letter, digit or '_', ends with '.' or ' ', or holds '..'"
        )
        raise InvalidNameError(
            f"{kind} name {shown} is not valid: it {why}; use letters, digits, '_', '-', '.' and spaces"
        )
    return name


def _part_problem(part: str) -> str:
    if not part:
        return "it has an empty part (two dots in a row, or a dot at an end)"
    if len(part) > MAX_PART:
        return f"part {_show(part[:20] + '...')} is {len(part)} characters long; at most {MAX_PART}"
    if _PART.fullmatch(part):
        return ""
    bad = next((c for c in part if not (c.isascii() and (c.isalnum() or c in "_-"))), part[0])
    return f"part {_show(part)} holds {bad!r}; use letters, digits, '_' and '-' (not first)"


def _show(text: str) -> str:
    """A name as Python writes it, so tabs, newlines and spaces are visible in the one-line message."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")


def check_alias_name(alias: str) -> str:
    """Validate a registered-model alias (``champion``): a letter or ``_``, then letters, digits, ``_`` or ``-``;
    not ``latest`` and not ``v<number>`` (MLflow reserves both).

    Raises:
        InvalidNameError: the alias is not one MLflow accepts.
    """
    if (
        not isinstance(alias, str)
        or not _ALIAS.fullmatch(alias)
        or alias.lower() == "latest"
        or re.fullmatch(r"[vV]\d+", alias)
    ):
        raise InvalidNameError(
            f"alias {_show(alias) if isinstance(alias, str) else repr(alias)} is not valid: use a letter or '_', then letters, digits, '_' or '-' (not 'latest' or 'v<number>')"
        )
    return alias
