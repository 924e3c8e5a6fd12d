"""The byte-level alphabet of GPT-2's BPE: every byte as a printable character.

Byte-level BPE works on the UTF-8 bytes of the text. OpenAI's `encoder.py`
writes each byte as one printable Unicode character (`bytes_to_unicode()`),
so that vocabulary tokens are plain strings without whitespace or control
characters: the space byte is `"Ġ"`, the newline `"Ċ"`, and `" the"` is the
token `"Ġthe"`.
"""


def bytes_to_unicode():
    """Returns OpenAI's mapping from byte values to printable characters.

    Bytes that are printable Latin-1 characters (other than the space) map to
    themselves; the others (control characters, space, `\\xa0`, `\\xad`) map
    to `chr(256 + n)`. Byte-level BPE tokens are strings over this alphabet,
    so that whitespace and control bytes never appear in a token string.

    Returns:
        A dict from `int` byte value to one-character `str`.

    Example:

    >>> mapping = bytes_to_unicode()
    >>> mapping[ord("a")], mapping[ord(" ")], mapping[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}
# `text.encode("utf-8").decode("latin-1").translate(...)` turns text into its
# byte-level string in one C call.
_LATIN1_TO_BYTE_LEVEL = {b: c for b, c in BYTE_ENCODER.items()}
_BYTE_LEVEL_TO_LATIN1 = {ord(c): b for b, c in BYTE_ENCODER.items()}


def to_byte_level(text):
    """Map a string to its byte-level BPE alphabet form.

    Example:

    >>> to_byte_level(" café")
    'ĠcafÃ©'
    """
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_LEVEL)


def token_to_bytes(token):
    """The bytes a byte-level token stands for.

    Characters outside the byte-level alphabet (as in added tokens like
    `"<|endoftext|>"`, which are plain ASCII and map to themselves anyway)
    stand for their own UTF-8 encoding.

    Example:

    >>> token_to_bytes("Ġa"), token_to_bytes("ĠcafÃ©").decode("utf-8")
    (b' a', ' café')
    """
    try:
        return token.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return b"".join(
            bytes([BYTE_DECODER[c]]) if c in BYTE_DECODER else c.encode("utf-8")
            for c in token
        )


def fix_surrogates(text):
    """Replace lone surrogates (not encodable as UTF-8) like tiktoken does.

    Example:

    >>> fix_surrogates("a\\ud800b")
    'a�b'
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
