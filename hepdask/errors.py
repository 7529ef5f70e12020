from __future__ import annotations

__all__ = ["HepdaskError", "first_line"]


class HepdaskError(Exception):
    """A problem with the user's input, explained in one paragraph: what, where, and what to do."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-paragraph error quotes of a library's multi-line message."""
    return next(iter(str(err).strip().splitlines()), type(err).__name__)
