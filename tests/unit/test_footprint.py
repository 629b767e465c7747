"""What the daemon loads (issue 13: nothing the config does not use). Each module here costs
resident memory on a 128 MB router for as long as the daemon runs; these are the ones it did
load without using them (bench/README.md, memory)."""
import ctypes
import subprocess
import sys

import pytest

from nat.clib import load_library

NOT_LOADED = ("shutil", "tempfile", "bz2", "lzma", "ctypes.util", "logging.handlers", "pickle", "random")


def test_daemon_modules_leave_out_what_it_does_not_use():
    code = ("import sys, logging\n"
            "import passthrough.daemon as d, nat.kernel, nat.bpf, nat.offload, nat.ctnetlink\n"
            "d.setup_logging('info', use_syslog=False)\n"  # procd's way: --no-syslog, stderr to logd
            "nat.kernel.Nft()\n"
            "try:\n    nat.bpf._libbpf()\nexcept nat.bpf.OffloadError:\n    pass\n"
            "print(' '.join(sorted(sys.modules)))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    loaded = set(p.stdout.split())
    assert "passthrough.daemon" in loaded and "nat.kernel" in loaded
    assert not loaded & set(NOT_LOADED), sorted(loaded & set(NOT_LOADED))


def test_syslog_handler_only_when_asked_for():
    code = ("import sys, os\nimport passthrough.daemon as d\n"
            "d.setup_logging('info', use_syslog=True)\nprint('logging.handlers' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    import os
    assert p.stdout.strip() == str(os.path.exists("/dev/log"))


def test_load_library_by_soname_then_by_name():
    assert isinstance(load_library("libc.so.6", "c"), ctypes.CDLL)
    with pytest.raises(OSError):
        load_library("libpassthrough-none.so.9", "passthrough-none")


def test_trim_heap_gives_freed_memory_back():
    """A heap with most of its blocks freed between kept ones (as libnftables leaves it after a
    ruleset load) holds them resident until trim_heap (glibc's malloc_trim)."""
    code = ("from nat.clib import trim_heap\n"
            "def anon():\n"
            "    return int(next(l for l in open('/proc/self/status') if l.startswith('RssAnon')).split()[1])\n"
            "blocks = [bytes(2000) for _ in range(20000)]\nkeep = blocks[::50]\ndel blocks\n"
            "before = anon()\nok = trim_heap()\nprint(before, anon(), ok)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    before, after, ok = p.stdout.split()
    assert ok == "True" and int(before) - int(after) > 20000, p.stdout  # ~38 MB freed, kept until trimmed
