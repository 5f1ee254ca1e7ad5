"""Fill JPEGs stored without the parts they all share (cache format version 2).

Every fill of a chunk is a baseline JPEG from the same encoder at the same quality, so its start
(SOI, JFIF APP0, both quantisation tables: 158 B), its frame header (SOF0, 19 B, which differs
only in the tile's size), its scan header (SOS, 14 B), the four Huffman table segments' headers
(16 B) and its end marker (2 B) are the same for all of them: 209 B of a fill of 300-3,000 B.
The chunk record holds those parts once (:func:`shared_parts`); each fill is stored as (5 B
plus its tables and scan)::

    rows (2 B, big-endian) | columns (2 B) | t (1 B) | t Huffman tables (DHT bodies) | entropy-coded scan

and :func:`rebuild` puts the JPEG back together, byte for byte the encoder's output (checked
when the chunk is written, :func:`compact`), so the loader decodes the same bytes as from a
version 1 cache. A fill that does not fit this pattern (another encoder's markers, other shared
parts) is stored whole: it starts with the JPEG start marker ``FF D8``, which a compact fill
never does (its first byte is the high byte of a row count below 65,280).
"""

from __future__ import annotations

import functools
import struct

SOI, SOF0, DHT, SOS, EOI = b"\xff\xd8", 0xC0, 0xC4, 0xDA, b"\xff\xd9"


class Parts(tuple):
    """(head, frame, scan, tables): the bytes before the frame header, the frame header with rows
    and columns zero, the scan header, and the shared Huffman tables (DHT bodies back to back:
    the encoder's standard tables) that a fill stored with ``t = 0`` uses."""

    __slots__ = ()

    def __new__(cls, head: bytes, frame: bytes, scan: bytes, tables: bytes = b""):
        return super().__new__(cls, (bytes(head), bytes(frame), bytes(scan), bytes(tables)))

    def to_json(self) -> dict:
        return {"head": self[0].hex(), "frame": self[1].hex(), "scan": self[2].hex(), "tables": self[3].hex()}

    @classmethod
    def from_json(cls, d: dict) -> "Parts":
        return cls(*(bytes.fromhex(d[k]) for k in ("head", "frame", "scan")), bytes.fromhex(d.get("tables", "")))


def _split(jpeg: bytes):
    """(head, frame with size zeroed, rows, columns, [DHT bodies], scan header, scan data) of a
    baseline JPEG laid out as SOI, other segments, SOF0, DHT segments (one table each), SOS, data,
    EOI; None for any other layout."""
    if not jpeg.startswith(SOI) or not jpeg.endswith(EOI):
        return None
    i, n = 2, len(jpeg)
    frame_at = None
    tables: list[bytes] = []
    while i + 4 <= n and jpeg[i] == 0xFF:
        marker = jpeg[i + 1]
        length = int.from_bytes(jpeg[i + 2:i + 4], "big")
        seg = jpeg[i:i + 2 + length]
        if marker == SOF0:
            if frame_at is not None or tables or length < 8:
                return None
            frame_at = i
        elif marker == DHT:
            if frame_at is None:
                return None
            body = seg[4:]
            if len(body) < 17 or 17 + sum(body[1:17]) != len(body):  # exactly one table per segment
                return None
            tables.append(body)
        elif marker == SOS:
            if frame_at is None or not tables:
                return None
            frame = jpeg[frame_at:frame_at + 2 + int.from_bytes(jpeg[frame_at + 2:frame_at + 4], "big")]
            rows, cols = struct.unpack(">HH", frame[5:9])
            zeroed = frame[:5] + b"\0\0\0\0" + frame[9:]
            return jpeg[:frame_at], zeroed, rows, cols, tables, seg, jpeg[i + 2 + length:-2]
        elif frame_at is not None:  # a segment between the frame and the scan other than DHT
            return None
        i += 2 + length
    return None


def tables_of(jpeg: bytes) -> bytes:
    """The Huffman tables (DHT bodies back to back) of a JPEG of this layout; b"" for another layout."""
    s = _split(jpeg)
    return b"".join(s[4]) if s is not None else b""


def shared_parts(jpeg: bytes, tables: bytes = b"") -> Parts | None:
    """The parts of ``jpeg`` that the other fills of its chunk share (with the shared Huffman
    ``tables``), None when it has another layout."""
    s = _split(jpeg)
    return None if s is None else Parts(s[0], s[1], s[5], tables)


def compact(jpeg: bytes, parts: Parts | None) -> bytes:
    """The stored form of ``jpeg`` given its chunk's ``parts``: compact when it fits them (and
    :func:`rebuild` gives ``jpeg`` back, byte for byte), else ``jpeg`` itself. A fill whose tables
    are the shared ones stores none (``t = 0``)."""
    s = _split(jpeg) if parts is not None else None
    if s is None or (s[0], s[1], s[5]) != tuple(parts[:3]) or len(s[4]) > 255 or s[2] >= 0xFF00:
        return jpeg
    tables = b"".join(s[4])
    shared = bool(parts[3]) and tables == parts[3]
    out = struct.pack(">HHB", s[2], s[3], 0 if shared else len(s[4])) + (b"" if shared else tables) + s[6]
    return out if rebuild(out, parts) == jpeg else jpeg


def stored_size(jpeg: bytes, parts: Parts | None) -> int:
    """Bytes :func:`compact` stores for ``jpeg``."""
    return len(compact(jpeg, parts))


def rebuild(stored: bytes, parts: Parts | None) -> bytes:
    """The JPEG bytes of a stored fill (see the module docstring). ValueError when ``stored`` is
    too short for what its first bytes say (damaged)."""
    if stored[:2] == SOI or parts is None:
        return bytes(stored)
    if len(stored) < 5:
        raise ValueError(f"a stored fill of {len(stored)} B is too short")
    start, frame_tail, shared_dht, scan = _joined(parts)
    if stored[4] == 0:
        return b"".join((start, stored[:4], frame_tail, shared_dht, scan, stored[5:], EOI))
    out = [start, stored[:4], frame_tail]
    i = _append_tables(out, stored, len(stored), start=5, count=stored[4])
    out += [scan, stored[i:], EOI]
    return b"".join(out)


@functools.lru_cache(maxsize=64)
def _joined(parts: Parts) -> tuple[bytes, bytes, bytes, bytes]:
    """What every fill of ``parts`` puts around its own bytes, joined once (the loader rebuilds a
    fill per sample and batch): head and frame start, frame end, the shared tables' DHT segments,
    the scan header."""
    head, frame, scan, shared = parts
    dht: list = []
    _append_tables(dht, shared, len(shared))
    return head + frame[:5], frame[9:], b"".join(dht), scan


def _append_tables(out: list, data: bytes, end: int, start: int = 0, count: int | None = None) -> int:
    """Append DHT segments for the tables in ``data[start:]`` (``count`` of them, or up to ``end``);
    returns where they end."""
    i, done = start, 0
    while (done < count) if count is not None else (i < end):
        size = 17 + sum(data[i + 1:i + 17])
        if i + size > end:
            raise ValueError(f"a stored fill of {end} B ends inside its Huffman tables")
        out.append(b"\xff\xc4" + (size + 2).to_bytes(2, "big"))
        out.append(data[i:i + size])
        i += size
        done += 1
    return i
