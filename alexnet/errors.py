"""The one exception type for mistakes a user can fix (bad flag, missing file, unknown name).

The CLI prints a `UserError` as one line and exits with status 2; `--debug` shows the traceback.
Anything else that escapes is a bug in this package and is shown with its traceback. Library callers
can catch it as a `ValueError`. Its message is made printable (`printable`): a message that quotes a
library's error text or a file name carries no terminal escape sequences or control characters.
"""
import re


class UserError(ValueError):
    """A problem with the user's input: the message says what, where, and what to do."""

    def __init__(self, *args):
        super().__init__(*(printable(a) if isinstance(a, str) else a for a in args))


# Terminal escape sequences: CSI (ESC [ ... final byte, or the 8-bit CSI 0x9b), OSC (ESC ] ... BEL
# or ESC \), and the two-byte ESC forms. torch's weights_only error, for one, wraps its advice in
# ESC [1m ... ESC [0m, which a terminal would act on and a log file shows as ^[[1m.
_ESCAPES = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
                      r"|\x1b[@-Z\\-_]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 but tab and newline, DEL, C1


def printable(text: str) -> str:
    """`text` without terminal escape sequences and control characters (tab and newline kept;
    carriage returns, form feeds and vertical tabs become spaces), so that a message quoting a
    library's error text or a file name cannot restyle, move or clear the user's terminal."""
    text = _ESCAPES.sub("", text)
    text = re.sub(r"[\r\x0b\x0c]", " ", text)
    return _CONTROLS.sub("", text)
