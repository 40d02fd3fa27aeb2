"""Text files a user hands us (CSV and TSV lists, class files): UTF-8 text, or one line that says
what is wrong with the file, and on which line.

    for number, line in text_lines(path, what="LOC_synset_mapping.txt"): ...
    for number, cells in csv_rows(path, what="train.tsv", delimiter="\t"): ...

Refused (UserError naming the file and line): UTF-16 or UTF-32 text (by its byte-order mark), NUL
and other control bytes (binary data, or UTF-16 without a byte-order mark), a line over MAX_LINE
characters (so a large file of junk costs one line of memory), what the csv module cannot read as
a row, and, where the caller asks for it, bytes that are not UTF-8. Files are streamed, never read
whole. A UTF-8 byte-order mark (spreadsheet programs write one) and any line ending are fine.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ..errors import UserError


MAX_LINE = 1 << 20  # characters in one line of a text file we are given (a list, a class file)
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")  # never in text (tab, line ends, \v and \f may be)
_UTF16_32 = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # byte-order marks (UTF-32 LE starts as UTF-16 LE's)


def bad_byte(text: str) -> int | None:
    """The first byte of `text` that was not UTF-8 (read with surrogateescape), or None."""
    if text.isascii():
        return None
    return next((ord(c) - 0xDC00 for c in text if "\udc80" <= c <= "\udcff"), None)


def text_lines(path: Path, what: str):
    """(line number, line) of a UTF-8 text file a user gives us, streamed, so a large file of junk
    costs one line of memory. utf-8-sig: lists saved by spreadsheet programs start with a
    byte-order mark; any line ending (\\n, \\r\\n, \\r). Bytes that are not UTF-8 are kept as
    surrogates (a Latin-1 file name still names its file, see bad_byte()): the caller says where
    they are wrong. Raises UserError naming `what` (and the line) for UTF-16/32 text, a NUL or
    other control byte (binary data, or UTF-16 without a byte-order mark) or a line over MAX_LINE
    characters."""
    with open(path, "rb") as raw:
        if raw.read(4).startswith(_UTF16_32):
            raise UserError(f"{what} is UTF-16 or UTF-32 text: save it as UTF-8")
        raw.seek(0)
        f = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        number = 0
        while line := f.readline(MAX_LINE):
            number += 1
            control = _CONTROL.search(line)
            if control:
                byte = "a NUL byte" if control.group() == "\x00" else f"control byte 0x{ord(control.group()):02x}"
                raise UserError(f"{what} line {number} holds {byte}: it is binary data (or UTF-16 text), "
                                f"not UTF-8 text")
            if len(line) == MAX_LINE and not line.endswith(("\n", "\r")):
                raise UserError(f"{what} line {number} is longer than {MAX_LINE:,} characters: not a text file of "
                                f"lines")
            yield number, line


def not_utf8(what: str, number: int, byte: int) -> UserError:
    return UserError(f"{what} line {number} is not UTF-8 text (byte 0x{byte:02x}): save it as UTF-8")


def csv_rows(path: Path, what: str, delimiter: str = ",", strict: bool = True):
    """(line number, stripped cells) of the non-blank rows of a CSV or TSV file (text_lines()),
    `what` naming it in messages. strict: every cell UTF-8, else UserError; otherwise cells may
    keep non-UTF-8 bytes as surrogates for the caller to judge. Raises UserError naming the file
    and line for what text_lines() refuses and for what is not CSV (a field over csv's limit)."""
    reader = csv.reader((line for _, line in text_lines(path, what)), delimiter=delimiter)
    try:
        for row in reader:
            row = [cell.strip() for cell in row]
            if not any(row):
                continue
            byte = bad_byte("".join(row)) if strict else None
            if byte is not None:
                raise not_utf8(what, reader.line_num, byte)
            yield reader.line_num, row
    except csv.Error as e:
        raise UserError(f"{what} line {reader.line_num}: not a CSV row ({e})") from None
