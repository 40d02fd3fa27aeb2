"""The one exception type for mistakes a user can fix (bad flag, missing file, unknown name).

The CLI prints a `UserError` as one line and exits with status 2; `--debug` shows the traceback.
Anything else that escapes is a bug in this package and is shown with its traceback. Library callers
can catch it as a `ValueError`.
"""


class UserError(ValueError):
    """A problem with the user's input: the message says what, where, and what to do."""
