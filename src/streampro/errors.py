"""One error type for mistakes a user can fix.

``UserError(what, fix)`` says what is wrong (with the file:line or the field) and what to do.
``streampro.cli.main`` prints it as one line::

    streampro <command>: error: <what> — <fix>

(then ``details``, one indented line each, when there are several problems) and exits with
status 2, without a traceback; ``streampro --debug <command> ...`` shows the traceback. It
subclasses ``ValueError`` so that programmatic callers catching ``ValueError`` keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A user-caused error: ``what`` is wrong, ``fix`` says how to put it right."""

    def __init__(self, what: str, fix: str, *, details: tuple[str, ...] = ()):
        super().__init__(f"{what} — {fix}")
        self.what = what
        self.fix = fix
        self.details = tuple(details)

    def __reduce__(self):
        # Exceptions cross process pools by pickling; rebuild from the parts, not from str().
        return (_rebuild, (type(self), self.what, self.fix, self.details))

    @classmethod
    def from_exception(cls, exc: BaseException, fix: str) -> UserError:
        """``exc`` as a UserError, for library errors worded ``<what>; <fix>`` (see :func:`split_message`).

        A message without a fix gets ``fix``; a UserError keeps its parts.
        """
        if isinstance(exc, UserError):
            return cls(exc.what, exc.fix, details=exc.details)
        what, found_fix = split_message(str(exc))
        return cls(what, found_fix or fix)


def _rebuild(cls, what, fix, details):
    return cls(what, fix, details=details)


_OPEN, _CLOSE = "([{", ")]}"


def split_message(message: str) -> tuple[str, str | None]:
    """``"<what> — <fix>"`` or ``"<what>; <fix>"`` -> ``(what, fix)``; ``(message, None)`` without either.

    A ``"; "`` inside brackets, quotes or backticks does not count.
    """
    if " — " in message:
        what, fix = message.split(" — ", 1)
        return what, fix
    depth, quote = 0, None
    for i, c in enumerate(message):
        if quote:
            quote = None if c == quote else quote
        elif c in "`'\"" and (c == "`" or i == 0 or not message[i - 1].isalnum()):
            quote = c  # an apostrophe inside a word ("file's") opens nothing
        elif c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth = max(0, depth - 1)
        elif c == ";" and depth == 0 and message[i + 1 : i + 2] == " ":
            return message[:i], message[i + 2 :]
    return message, None
