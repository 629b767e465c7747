#!/usr/bin/env python3
"""Installed size of passthrough's own OpenWrt packages, as markdown tables.

    python3 openwrt_pkg/size_report.py                  # builds the .ipk files into a temp dir
    python3 openwrt_pkg/size_report.py --format apk     # the same from .apk files (apk mkpkg)
    python3 openwrt_pkg/size_report.py dist/*.ipk       # packages built before (.ipk or .apk)

The packages are built by build_ipk.py, the project's own builder, so the numbers are those of
what a router installs. For each package the files are grouped (Python code of passthrough/ and
nat/, the BPF object, init script and config, the LuCI view, ...) and summed: "installed" is the
sum of the unpacked files' sizes (no directories, no filesystem blocks). Beside it: the package's
own Installed-Size field (.ipk: ipkg-build writes the size of the uncompressed data tar, tar
headers and padding included; .apk: mkpkg's installed-size) and the compressed size (.ipk: its
data.tar.gz; .apk: the file). Only the standard library and, from this directory, ipk_install.py
(reading an .ipk), build_ipk.py (building) and qemu/pkgdb.py (`apk adbdump` for an .apk).
"""
import argparse
import io
import marshal
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ipk_install  # noqa: E402  (this directory: the .ipk reader the installer uses)

# First matching rule names a file's group. Paths are as installed, without the leading "/".
GROUPS = [
    (r"usr/lib/passthrough/passthrough/", "Python: passthrough/ (daemon, CLI, parsers, UCI)"),
    (r"usr/lib/passthrough/nat/", "Python: nat/ (nftables, conntrack, BPF loader)"),
    (r"usr/lib/passthrough/offload\.o$", "BPF object offload.o"),
    (r"(etc/|usr/bin/)", "init script, config, uci-defaults, /usr/bin wrapper"),
    (r"usr/share/(passthrough|nftables\.d)/", "fw4 include and forward-chain rule"),
    (r"www/", "LuCI view (JavaScript)"),
    (r"usr/share/rpcd/ucode/", "rpcd ucode plugin (flow table over ubus)"),
    (r"usr/share/(luci/menu\.d|rpcd/acl\.d)/", "LuCI menu and ACL"),
    (r".*\.so$", "compiled extension (.so)"),
    (r".*\.dist-info/", "Python package metadata (.dist-info)"),
    (r".*site-packages/.*\.py$", "Python: netfilterqueue"),
    (r"lib/apk/packages/", "apk file lists (lib/apk/packages/)"),
]


class ReportError(Exception):
    pass


def group_of(path):
    for pattern, label in GROUPS:
        if re.match(pattern, path):
            return label
    return "other"


class Package:
    """What is measured of one package file: name, format, files {path: size} (data of .py files
    kept to size their bytecode), the Installed-Size field and the compressed size."""

    def __init__(self, path, name, fmt, files, installed_field, packed, py_sources):
        self.path, self.name, self.fmt = path, name, fmt
        self.files = files
        self.installed_field = installed_field
        self.packed = packed
        self.py_sources = py_sources  # {path: bytes} of the .py files (.ipk only; None for .apk)

    @property
    def total(self):
        return sum(self.files.values())

    def groups(self):
        """[(label, files, bytes)] in GROUPS order, "other" last."""
        acc = {}
        for path, size in self.files.items():
            label = group_of(path)
            n, b = acc.get(label, (0, 0))
            acc[label] = (n + 1, b + size)
        order = [label for _, label in GROUPS] + ["other"]
        return [(label,) + acc[label] for label in dict.fromkeys(order) if label in acc]


def read_ipk(path):
    """An .ipk, read by ipk_install.py (both container formats); the data tar's compressed size
    from its outer members."""
    try:
        with open(path, "rb") as f:
            members = ipk_install.outer_members(f.read())
        fields, _, data_tar = ipk_install.unpack(members, path)
    except (OSError, tarfile.TarError, EOFError, ipk_install.IpkError) as e:
        raise ReportError("%s: not an .ipk (%s)" % (path, e))
    files, py = {}, {}
    with tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:") as data:
        for m in data.getmembers():
            if not m.isfile():  # directories and links take no file data
                continue
            rel = m.name.lstrip("./")
            files[rel] = m.size
            if rel.endswith(".py"):
                py[rel] = data.extractfile(m).read()
    installed = fields.get("Installed-Size")
    return Package(path, fields.get("Package"), "ipk", files,
                   int(installed) if installed else None, len(members["./data.tar.gz"]), py)


def apk_tool():
    """(apk binary, environment): `apk` on PATH, else the stage qemu/userspace.py builds and caches
    (what build_ipk.py --format apk uses)."""
    found = shutil.which("apk")
    if found:
        return found, dict(os.environ)
    sys.path.insert(0, os.path.join(HERE, "qemu"))
    import pkgdb
    try:
        tools = pkgdb.find_tools()
    except pkgdb.PkgDbError as e:
        raise ReportError("reading .apk needs apk-tools: %s" % e)
    return tools.apk, tools.env()


def read_apk(path, tool=None):
    """An .apk (apk v3, ADB) by `apk adbdump`, whose YAML-like text lists every path with its
    files' sizes (line-based reading, so no YAML library is needed)."""
    apk, env = tool or apk_tool()
    p = subprocess.run([apk, "adbdump", path], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise ReportError("apk adbdump %s: %s" % (path, p.stderr.strip()))
    name, installed, files = None, None, {}
    section, directory, pending = None, "", None
    for line in p.stdout.splitlines():
        m = re.match(r"^(\w[\w-]*):", line)
        if m:
            section = m.group(1)
            continue
        if section == "info":
            m = re.match(r"^  (name|installed-size): (\S+)", line)
            if m:
                if m.group(1) == "name":
                    name = m.group(2)
                else:
                    installed = int(m.group(2))
        elif section == "paths":
            if re.match(r"^  - ", line):  # a new directory entry ("- acl:" is the root)
                m = re.match(r"^  - name: (.*)$", line)
                directory = m.group(1) if m else ""
            m = re.match(r"^      - name: (.*)$", line)
            if m:
                pending = (directory + "/" if directory else "") + m.group(1)
            m = re.match(r"^        size: (\d+)$", line)
            if m and pending is not None:
                files[pending] = int(m.group(1))
                pending = None
    if name is None or not files:
        raise ReportError("apk adbdump %s: no package name or files found" % path)
    return Package(path, name, "apk", files, installed, os.path.getsize(path), None)


def read_package(path, tool=None):
    if path.endswith(".ipk"):
        return read_ipk(path)
    if path.endswith(".apk"):
        return read_apk(path, tool)
    raise ReportError("%s: expected an .ipk or .apk" % path)


def bytecode_size(sources):
    """What CPython's __pycache__ adds for these .py files: a timestamp .pyc is a 16-byte header
    plus the marshalled code object, compiled by this interpreter (same as py_compile)."""
    return sum(16 + len(marshal.dumps(compile(src, path, "exec", dont_inherit=True)))
               for path, src in sources.items())


# --- output ---------------------------------------------------------------------------------------
def kib(n):
    return "%.1f" % (n / 1024.0)


def markdown(pkgs):
    out = ["| package | files | count | bytes | KiB |", "| --- | --- | ---: | ---: | ---: |"]
    for pkg in pkgs:
        for label, n, b in pkg.groups():
            out.append("| %s | %s | %d | %d | %s |" % (pkg.name, label, n, b, kib(b)))
        out.append("| **%s** | **all files** | **%d** | **%d** | **%s** |"
                   % (pkg.name, len(pkg.files), pkg.total, kib(pkg.total)))
    total = sum(p.total for p in pkgs)
    out.append("| **all packages** | | **%d** | **%d** | **%s** |" % (sum(len(p.files) for p in pkgs), total, kib(total)))
    out.append("")
    packed = "data.tar.gz" if all(p.fmt == "ipk" for p in pkgs) else "compressed (.ipk: data.tar.gz, .apk: file)"
    out += ["| package | file | files, KiB | Installed-Size field, KiB | %s, KiB |" % packed,
            "| --- | --- | ---: | ---: | ---: |"]
    for pkg in pkgs:
        field = kib(pkg.installed_field) if pkg.installed_field is not None else "none"
        out.append("| %s | %s | %s | %s | %s |" % (pkg.name, os.path.basename(pkg.path), kib(pkg.total), field,
                                                 kib(pkg.packed)))
    out.append("")
    # The .py/.pyc choice: say what the packages ship; a router's CPython writes __pycache__
    # next to the sources on first import (passthrough's prerm removes it), so size that too.
    py = {p.name: [f for f in p.files if f.endswith(".py")] for p in pkgs}
    pyc = {p.name: [f for f in p.files if f.endswith(".pyc")] for p in pkgs}
    for pkg in pkgs:
        if not py[pkg.name] and not pyc[pkg.name]:
            continue
        line = "%s ships %d .py files (%s KiB) and %d .pyc files" % (
            pkg.name, len(py[pkg.name]), kib(sum(pkg.files[f] for f in py[pkg.name])), len(pyc[pkg.name]))
        if pkg.py_sources:
            line += "; the __pycache__ CPython %d.%d writes for them on first import: %s KiB" % (
                sys.version_info[0], sys.version_info[1], kib(bytecode_size(pkg.py_sources)))
        out.append("* " + line + ".")
    return "\n".join(out) + "\n"


def build(outdir, fmt, arch):
    import build_ipk
    try:
        return build_ipk.build(outdir, fmt=fmt, arch=arch,
                               warn=lambda msg: print("size_report: %s" % msg, file=sys.stderr))
    except build_ipk.BuildError as e:
        raise ReportError("build_ipk: %s" % e)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("packages", nargs="*", help=".ipk / .apk files (default: build them with build_ipk.py)")
    ap.add_argument("--format", dest="fmt", choices=("ipk", "apk"), default="ipk",
                    help="what to build when no packages are given (default %(default)s)")
    ap.add_argument("--arch", default="x86_64", help="build_ipk.py --arch (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.packages:
            paths = args.packages
            tool = apk_tool() if any(p.endswith(".apk") for p in paths) else None
            pkgs = [read_package(p, tool) for p in paths]
        else:
            with tempfile.TemporaryDirectory(prefix="pt-size-") as tmp:
                paths = build(tmp, args.fmt, args.arch)
                tool = apk_tool() if args.fmt == "apk" else None
                pkgs = [read_package(p, tool) for p in paths]
    except (ReportError, OSError) as e:
        print("size_report: %s" % e, file=sys.stderr)
        return 1
    sys.stdout.write(markdown(pkgs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
