"""A tiny MaxMind DB (``.mmdb``) writer for tests: networks -> records, so a test
can place loopback addresses wherever it needs them.

The format (MaxMind DB spec 2.0): a binary search tree over the address bits
(IPv6, IPv4 at ``::a.b.c.d`` as MaxMind's own databases keep it), 32-bit records;
16 zero bytes; the data section; then ``\\xab\\xcd\\xefMaxMind.com`` and the
metadata map. A record below the node count points at a node, equal to it means
"no data", above it points into the data section (offset + node count + 16).
Values: maps, strings, doubles, unsigned ints, booleans and arrays, enough for
GeoIP2 City-shaped records.
"""
from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path

_MARKER = b"\xab\xcd\xefMaxMind.com"
_RECORD_BITS = 32


class U16(int):
    kind = 5


class U32(int):
    kind = 6


class U64(int):
    kind = 9  # libmaxminddb insists on each metadata field's exact integer type


def _control(kind: int, size: int) -> bytes:
    """The control byte(s) of a value of ``kind`` (spec type number) and ``size``."""
    extended = kind > 7
    head = (0 if extended else kind) << 5
    if size < 29:
        out = bytes([head | size])
    elif size < 285:
        out = bytes([head | 29, size - 29])
    elif size < 65821:
        out = bytes([head | 30]) + (size - 285).to_bytes(2, "big")
    else:
        out = bytes([head | 31]) + (size - 65821).to_bytes(3, "big")
    return out[:1] + (bytes([kind - 7]) if extended else b"") + out[1:]


def encode(value) -> bytes:
    """One value in the data section's encoding."""
    if isinstance(value, bool):
        return _control(14, int(value))
    if isinstance(value, str):
        raw = value.encode()
        return _control(2, len(raw)) + raw
    if isinstance(value, float):
        return _control(3, 8) + struct.pack(">d", value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("only unsigned integers")
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        kind = getattr(value, "kind", 5 if value < 1 << 16 else 6 if value < 1 << 32 else 9)
        return _control(kind, len(raw)) + raw
    if isinstance(value, dict):
        return _control(7, len(value)) + b"".join(encode(str(k)) + encode(v)
                                                  for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return _control(11, len(value)) + b"".join(encode(v) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _bits(network: str) -> list[int]:
    net = ipaddress.ip_network(network, strict=False)
    addr, length = int(net.network_address), net.prefixlen
    if net.version == 4:  # IPv4 lives at ::a.b.c.d in an IPv6 tree
        length += 96
    return [(addr >> (127 - i)) & 1 for i in range(length)]


def write(path: Path, records: dict[str, dict], database_type: str = "GeoIP2-City") -> Path:
    """Write a database mapping each network (``"127.0.0.1/32"``, ``"10.0.0.0/8"``,
    ``"::1"``) to its record. A narrower network inside another wins for its addresses
    only if it is listed after the wider one."""
    nodes: list[list] = [[None, None]]  # each side: None (no data), ("node", i) or ("data", off)
    data, offsets = bytearray(), {}
    for network, record in records.items():
        raw = encode(record)
        if raw not in offsets:
            offsets[raw] = len(data)
            data += raw
        bits, node = _bits(network), 0
        for depth, bit in enumerate(bits):
            if depth == len(bits) - 1:
                nodes[node][bit] = ("data", offsets[raw])
                break
            side = nodes[node][bit]
            if side is None or side[0] == "data":  # split a wider network's leaf
                nodes.append([side, side])
                nodes[node][bit] = ("node", len(nodes) - 1)
            node = nodes[node][bit][1]
    count = len(nodes)

    def value(side) -> int:
        if side is None:
            return count
        return side[1] if side[0] == "node" else count + 16 + side[1]
    tree = b"".join(struct.pack(">II", value(left), value(right)) for left, right in nodes)
    metadata = {"node_count": U32(count), "record_size": U16(_RECORD_BITS),
                "ip_version": U16(6), "database_type": database_type, "languages": ["en"],
                "binary_format_major_version": U16(2), "binary_format_minor_version": U16(0),
                "build_epoch": U64(int(time.time())), "description": {"en": "inferbus test data"}}
    path.write_bytes(tree + bytes(16) + bytes(data) + _MARKER + encode(metadata))
    return path


def city(country: str, continent: str, lat: float, lon: float, radius_km: int = 20) -> dict:
    """A GeoIP2 City-shaped record."""
    return {"continent": {"code": continent}, "country": {"iso_code": country},
            "location": {"latitude": float(lat), "longitude": float(lon),
                         "accuracy_radius": radius_km}}
