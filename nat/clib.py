"""Loading the C libraries the shell drives by ctypes (libnftables, libbpf)."""
import ctypes


def load_library(soname, name, **kw):
    """ctypes.CDLL by soname first; ctypes.util.find_library only when that fails. find_library
    runs ldconfig (a process per call) and ctypes.util imports shutil, subprocess and tempfile,
    with bz2, lzma and random: ~2 MB of the daemon's resident memory for a name that is fixed
    (the soname is what the packages ship: OpenWrt's libnftables1 / libbpf, Debian's alike)."""
    try:
        return ctypes.CDLL(soname, **kw)
    except OSError as first:
        from ctypes.util import find_library
        found = find_library(name)
        if not found or found == soname:
            raise first
        return ctypes.CDLL(found, **kw)


def trim_heap():
    """Give the heap's free pages back to the kernel: glibc keeps what libnftables freed after a
    ruleset load (its cache of the tables) for reuse, resident, as the daemon idles for weeks.
    A no-op where malloc_trim does not exist (musl returns free memory by itself)."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False
