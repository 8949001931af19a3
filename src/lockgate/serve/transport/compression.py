"""HTTP content codings of infer bodies, as tritonclient uses them: `Content-Encoding: gzip` or
`deflate` requests, decompressed within the body limit, and responses compressed when the
client asks with `Accept-Encoding`.

Decompression is incremental with a bound on its output, so a small body that inflates beyond
the limit (a zip bomb) is refused with 413 after at most the limit's worth of memory.
"""

from __future__ import annotations

import zlib

from lockgate.errors import ErrorKind, LockgateError, invalid

CODINGS = ("gzip", "deflate")
# Responses shorter than this go out uncompressed even when the client accepts a coding (HTTP
# leaves it to the server; tritonclient reads both): a tiny body only grows and costs time.
MIN_COMPRESSED_BYTES = 1024
_GZIP, _ZLIB, _RAW_DEFLATE = 31, 15, -15


def decompress(body: bytes, coding: str, limit: int) -> bytes:
    """The body decoded from `coding` (gzip, deflate or identity), at most `limit` bytes."""
    name = coding.strip().lower()
    if name in ("", "identity"):
        return body
    if name == "gzip":
        wbits = _GZIP
    elif name == "deflate":  # HTTP's deflate is the zlib format; accept raw deflate too
        wbits = _ZLIB if _is_zlib(body) else _RAW_DEFLATE
    else:
        raise invalid(f"unsupported Content-Encoding {coding!r} (gzip, deflate or identity)")
    chunks: list[bytes] = []
    total = 0
    data = body
    inflater = zlib.decompressobj(wbits)
    while True:
        try:
            chunk = inflater.decompress(data, limit - total + 1)
        except zlib.error as exc:
            raise invalid(f"malformed {name} body: {exc}") from None
        total += len(chunk)
        if total > limit:
            raise LockgateError(
                ErrorKind.TOO_LARGE, f"decompressed body exceeds the {limit}-byte limit"
            )
        chunks.append(chunk)
        if inflater.eof:
            data = inflater.unused_data
            if not data:
                return b"".join(chunks)
            if name != "gzip":
                raise invalid(f"{len(data)} bytes after the end of the deflate body")
            inflater = zlib.decompressobj(_GZIP)  # gzip allows several members back to back
        elif inflater.unconsumed_tail:
            data = inflater.unconsumed_tail
        elif chunk:
            data = b""  # all input consumed; more output may still be pending
        else:
            raise invalid(f"truncated {name} body")


def _is_zlib(body: bytes) -> bool:
    """A zlib stream starts with a deflate method byte and a header checksum (RFC 1950)."""
    return len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0


def accepted(accept_encoding: str) -> str | None:
    """The coding to answer with: gzip or deflate, whichever the client weighs most (gzip on a
    tie or for `*`), or None."""
    best, best_q = None, 0.0
    for part in accept_encoding.split(","):
        token, _, params = part.partition(";")
        token = token.strip().lower()
        if token == "*":
            token = "gzip"
        if token not in CODINGS:
            continue
        q = _quality(params)
        if q > best_q or (q == best_q and q > 0 and token == "gzip"):
            best, best_q = token, q
    return best


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def compress(body: bytes, coding: str) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, _GZIP if coding == "gzip" else _ZLIB)
    return deflater.compress(body) + deflater.flush()


def encode_response(
    body: bytes, headers: dict[str, str], accept_encoding: str
) -> tuple[bytes, dict[str, str]]:
    """The response body compressed as the client accepts, with its Content-Encoding."""
    if len(body) < MIN_COMPRESSED_BYTES:
        return body, headers
    coding = accepted(accept_encoding)
    if coding is None:
        return body, headers
    headers = {**headers, "content-encoding": coding, "vary": "accept-encoding"}
    return compress(body, coding), headers
