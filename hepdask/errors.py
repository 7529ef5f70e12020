from __future__ import annotations

__all__ = ["HepdaskError", "RequestError", "first_line"]


class HepdaskError(Exception):
    """A problem with the user's input, explained in one paragraph: what, where, and what to do."""


class RequestError(HepdaskError):
    """A request an HTTP service refuses: the paragraph is the answer's ``error``, ``status``
    its HTTP code (401 no or bad token, 403 not allowed, 404 not found or not yours, 409 not now,
    413 too large, 422 invalid)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-paragraph error quotes of a library's multi-line message."""
    return next(iter(str(err).strip().splitlines()), type(err).__name__)
