"""Text for terminals and logs: names that hold control characters (ANSI escapes, newlines) are
shown escaped, and no stream the command line writes passes raw control characters through."""

from __future__ import annotations

import os
import re
from typing import TextIO

# C0 and C1 control characters, DEL; tab, newline and carriage return (progress redraws) are text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(name: object) -> str:
    """A file name (or any text) for a report line: as it is, or repr-escaped ('a\\x1b[31m.mp4')
    when it holds a control character, so it can neither redraw the terminal nor forge a line."""
    text = os.fspath(name) if isinstance(name, os.PathLike) else str(name)
    return repr(text) if _ANY_CONTROL.search(text) else text


def escape_controls(text: str, *, keep_lines: bool = True) -> str:
    """text with its control characters as \\xNN: all of them but tab, newline and carriage return,
    or with keep_lines=False all of them (for a line that must stay one line)."""
    pattern = _CONTROL if keep_lines else _ANY_CONTROL
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class EscapingStream:
    """A text stream that escapes control characters on their way to `stream` (see escape_controls)."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(escape_controls(text))

    def __getattr__(self, name: str):  # flush, isatty, fileno, encoding, ...
        return getattr(self._stream, name)
