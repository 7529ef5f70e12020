from __future__ import annotations

__all__ = ["HepdaskError"]


class HepdaskError(Exception):
    """A problem with the user's input, explained in one paragraph: what, where, and what to do."""
