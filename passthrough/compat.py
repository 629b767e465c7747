"""Shims so the pure core (parsers, flows, policy, mapping) runs under CPython and MicroPython alike.

MicroPython lacks time.monotonic, struct.Struct, dataclasses, enum and typing; keep the pure core to
what both have and route the differences through here.
"""
import time

try:
    _monotonic = time.monotonic

    def now():
        """Seconds from an arbitrary origin, never going backwards."""
        return _monotonic()
except AttributeError:  # MicroPython
    _ticks_ms = time.ticks_ms
    _ticks_diff = time.ticks_diff
    _origin = _ticks_ms()

    def now():
        return _ticks_diff(_ticks_ms(), _origin) / 1000.0

try:
    from binascii import hexlify as _hexlify
except ImportError:  # pragma: no cover - every port we target has binascii
    from ubinascii import hexlify as _hexlify


def hexstr(data):
    """Lower-case hex of a bytes-like object, as str."""
    return _hexlify(bytes(data)).decode()


def int_be(data):
    """Big-endian unsigned int of a bytes-like object (MicroPython wants positional args)."""
    return int.from_bytes(bytes(data), "big")


try:
    # CPython's C version: two per queued packet, 0.39 -> 0.23 us each (timeit), and the control
    # path sits close to its target of 0.5x a bare queue loop (bench/README.md). MicroPython has none.
    from socket import inet_ntoa as _inet_ntoa
except ImportError:
    _inet_ntoa = None


def ip4_str(data):
    if _inet_ntoa is not None:
        return _inet_ntoa(bytes(data))
    b = bytes(data)
    return "%d.%d.%d.%d" % (b[0], b[1], b[2], b[3])


def ip4_bytes(text):
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError("bad IPv4 address: %r" % (text,))
    out = bytearray(4)
    for i in range(4):
        if not parts[i].isdigit():
            raise ValueError("bad IPv4 address: %r" % (text,))
        v = int(parts[i])
        if v > 255:
            raise ValueError("bad IPv4 address: %r" % (text,))
        out[i] = v
    return bytes(out)


def ip6_str(data):
    """RFC 5952 text form of a 16-byte IPv6 address (longest zero run compressed)."""
    b = bytes(data)
    words = [(b[i] << 8) | b[i + 1] for i in range(0, 16, 2)]
    best_start, best_len, cur_start, cur_len = -1, 0, -1, 0
    for i in range(8):
        if words[i] == 0:
            if cur_start < 0:
                cur_start, cur_len = i, 1
            else:
                cur_len += 1
            if cur_len > best_len:
                best_start, best_len = cur_start, cur_len
        else:
            cur_start, cur_len = -1, 0
    if best_len < 2:
        return ":".join("%x" % w for w in words)
    head = ":".join("%x" % w for w in words[:best_start])
    tail = ":".join("%x" % w for w in words[best_start + best_len:])
    return head + "::" + tail


def which(prog):
    """Path of an executable on PATH, or None (shutil.which's job: shutil is not in MicroPython,
    and on CPython it loads the bz2 and lzma modules with their C libraries, ~0.5 MB resident,
    for a daemon that only asks this)."""
    try:
        import os
    except ImportError:  # pragma: no cover - very old MicroPython ports
        import uos as os
    path = os.getenv("PATH") if hasattr(os, "getenv") else None
    for d in (path or "/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        p = (d or ".") + "/" + prog
        try:
            st = os.stat(p)
        except OSError:
            continue
        if st[0] & 0o111 and (st[0] & 0o170000) == 0o100000:
            return p
    return None
