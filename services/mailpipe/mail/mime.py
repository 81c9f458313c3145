"""Encode and fold header fields and bodies into the bytes of an RFC 5322 message.

compose_email builds every message from these helpers instead of `EmailMessage`, because the
modern `email` API parses each header again when it is set and refolds it when the message is
serialized. Measured with CPython 3.11 on a 2-core machine, composing a two-part message took
about 2.2 ms that way and about 0.1 ms with this module, while the whole pipeline must reach
1,000 emails per second on two cores. RFC 2047 encoded words still come from `email.header.Header` and
quoted-printable from `binascii`. The tests parse the results back with `email.policy.default`.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from email.header import Header

CRLF = "\r\n"
# The recommended line length of RFC 5322 (section 2.1.1), and the limit that no line may exceed.
RECOMMENDED_LINE_CHARS = 78
MAX_LINE_OCTETS = 998

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# A display name of atoms separated by single spaces can be written as it is. RFC 6532 counts
# every non-ASCII character as atext in a message sent with SMTPUTF8.
_ASCII_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
_UTF8_PHRASE = re.compile(
    r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+"
    r"(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+)*"
)


def unstructured_header(name: str, value: str, *, utf8: bool) -> str:
    """Return the folded field "Name: value" without its final CRLF.

    Non-ASCII text becomes RFC 2047 encoded words unless `utf8` is set, in which case it is
    written as UTF-8 (RFC 6532). Text that looks like an encoded word is encoded too, so that
    receivers cannot decode it into something else.
    """
    if _needs_encoded_words(value, utf8=utf8):
        return _encoded_header(name, value)

    folded = fold(f"{name}: {value}")
    if _longest_line_octets(folded) > MAX_LINE_OCTETS:
        # A word too long to fit on one line can only be split inside encoded words.
        return _encoded_header(name, value)
    return folded


def address_header(name: str, display_name: str, address: str, *, utf8: bool) -> str:
    """Return the folded field "Name: display name <address>" without its final CRLF."""
    if not display_name:
        return f"{name}: {address}"

    if _needs_encoded_words(display_name, utf8=utf8):
        return _encoded_address_header(name, display_name, address)

    phrase_pattern = _UTF8_PHRASE if utf8 else _ASCII_PHRASE
    if phrase_pattern.fullmatch(display_name):
        phrase = display_name
    else:
        escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
        phrase = f'"{escaped}"'

    folded = fold(f"{name}: {phrase} <{address}>")
    if _longest_line_octets(folded) > MAX_LINE_OCTETS:
        return _encoded_address_header(name, display_name, address)
    return folded


def fold(line: str) -> str:
    """Fold a header field by inserting CRLF before spaces, keeping lines to 78 characters
    where the words allow.

    Unfolding (removing each CRLF) restores the field exactly. A line is never broken after
    the field name alone, nor into a line of only whitespace.
    """
    if len(line) <= RECOMMENDED_LINE_CHARS:
        return line

    words = line.split(" ")
    lines: list[str] = []
    current = words[0]
    for position, word in enumerate(words[1:], start=1):
        too_long = len(current) + 1 + len(word) > RECOMMENDED_LINE_CHARS
        if too_long and position > 1 and word and current.strip():
            lines.append(current)
            current = " " + word
        else:
            current = f"{current} {word}"
    lines.append(current)
    return CRLF.join(lines)


def encode_text_body(text: str) -> tuple[str, bytes]:
    """Encode a text body for a 7-bit transport, with CRLF line ends.

    Returns the Content-Transfer-Encoding and the encoded bytes: 7bit for ASCII text whose lines
    fit the line limit, quoted-printable of the UTF-8 text otherwise.
    """
    lines = _LINE_BREAK.split(text)
    if text.isascii() and all(len(line) <= MAX_LINE_OCTETS for line in lines):
        return "7bit", CRLF.join(lines).encode("ascii")

    # Lone surrogates cannot be encoded as UTF-8, so they become "?" instead of failing.
    data = "\n".join(lines).encode("utf-8", "replace")
    encoded = binascii.b2a_qp(data, istext=True)
    return "quoted-printable", encoded.replace(b"\n", CRLF.encode("ascii"))


def encode_body(text: str, html: str | None, *, boundary_seed: str) -> bytes:
    """Encode the Content-* fields, the blank line and the body: text alone, or
    multipart/alternative with text first and HTML second.

    The boundary is derived from `boundary_seed` (the Message-ID), so the same email always
    gives the same bytes.
    """
    text_part = _text_part(text, subtype="plain")
    if html is None:
        return text_part

    html_part = _text_part(html, subtype="html")
    boundary = _boundary(boundary_seed, parts=(text_part, html_part))
    delimiter = f"--{boundary}".encode("ascii")
    crlf = CRLF.encode("ascii")
    return b"".join(
        [
            f'Content-Type: multipart/alternative;{CRLF} boundary="{boundary}"'.encode("ascii"),
            crlf,
            crlf,
            delimiter + crlf,
            text_part,
            crlf + delimiter + crlf,
            html_part,
            crlf + delimiter + b"--" + crlf,
        ]
    )


def _text_part(text: str, *, subtype: str) -> bytes:
    transfer_encoding, body = encode_text_body(text)
    fields = (
        f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
        f"Content-Transfer-Encoding: {transfer_encoding}{CRLF}{CRLF}"
    )
    return fields.encode("ascii") + body


def _boundary(seed: str, *, parts: tuple[bytes, ...]) -> str:
    # A quoted-printable body cannot contain "==", but a 7bit one could, so a collision is
    # checked and a counter changes the boundary.
    counter = 0
    while True:
        digest = hashlib.sha256(f"{seed}/{counter}".encode()).hexdigest()[:32]
        boundary = f"==mailpipe_{digest}"
        if not any(boundary.encode("ascii") in part for part in parts):
            return boundary
        counter += 1


def _needs_encoded_words(value: str, *, utf8: bool) -> bool:
    return "=?" in value or (not utf8 and not value.isascii())


def _encoded_header(name: str, value: str) -> str:
    encoded = Header(value, "utf-8", header_name=name).encode(
        linesep=CRLF, maxlinelen=RECOMMENDED_LINE_CHARS
    )
    return f"{name}: {encoded}"


def _encoded_address_header(name: str, display_name: str, address: str) -> str:
    phrase = _encoded_header(name, display_name)
    last_line = phrase.rsplit(CRLF, 1)[-1]
    separator = " "
    if len(last_line) + len(address) + 3 > RECOMMENDED_LINE_CHARS:
        separator = CRLF + " "
    return f"{phrase}{separator}<{address}>"


def _longest_line_octets(folded: str) -> int:
    return max(len(line.encode("utf-8", "surrogatepass")) for line in folded.split(CRLF))
