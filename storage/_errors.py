"""The one error type of the storage room."""

from __future__ import annotations


class StorageError(ValueError):
    """A storage URL is malformed, or its server cannot be used, or an export cannot be made.

    The message is one line naming the fix; the CLI prints it and exits non-zero, never a traceback.
    """


def first_line(e: BaseException) -> str:
    """The first line of an exception's text (drivers put hints on later lines), cut to a readable length."""
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
