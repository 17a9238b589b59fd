"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback.

Text read from files (names, attributes, messages of libraries that quote them) reaches the terminal only
through ``check_name`` (refused unless printable) or ``printable`` (escaped): a file must never be able to
send ESC, BEL, C1 or bidirectional-override characters to the user's terminal.
"""

from __future__ import annotations

MAX_NAME_CHARS = 200  # class, layout, joint, split and other names read from files


class CrossclrError(ValueError):
    """Bad input from the user (a file, a flag, a config): the message says what is wrong and what to do."""


def printable(text: object, limit: int | None = None) -> str:
    """``str(text)`` with every character that is not printable escaped as in ``repr`` (``\\x1b``,
    ``\\x9b``, ``\\u202e``, ``\\n``...), so that it can be written to a terminal on one line; when ``limit``
    is given, ``text`` is first cut to that many characters (then ending with ``…``). Printable text, spaces
    and non-ASCII letters included, is unchanged. Backslashes are kept as they are."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def check_name(value: object, source: str, what: str) -> str:
    """A display name read from a file (class, layout, joint, split, benchmark name): a non-empty string of at
    most MAX_NAME_CHARS printable characters (no line breaks, control, C1 or bidirectional-override
    characters), else a CrossclrError naming ``source``. Such names go into reports and messages, never into
    file names."""
    if not isinstance(value, str):
        raise CrossclrError(f"{source}: {what} {value!r:.60} is a {type(value).__name__}, expected a string")
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise CrossclrError(f"{source}: {what} {value[:MAX_NAME_CHARS]!r} is not a valid name; expected 1 to "
                            f"{MAX_NAME_CHARS} printable characters without line breaks")
    return value
