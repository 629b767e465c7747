#!/usr/bin/env python3
"""Build passthrough's OpenWrt packages without the SDK: .ipk (24.10) and/or .apk (25.12).

    python3 openwrt_pkg/build_ipk.py [--format ipk|apk|both] OUTDIR [--epoch SECONDS] [--only NAME]
                                     [--arch ARCH] [--nfq-python PYTHON] [--cache DIR]

Packages: passthrough_<ver>_<arch>.ipk / passthrough-<ver>-r<rel>.apk, luci-app-passthrough (all,
noarch in apk), python3-netfilterqueue (x86_64: see below). Default format: ipk.

Made by OpenWrt's own tools, taken from the pinned upstream sources (qemu/sources.py, the mirror),
never copied into this repository:
* .ipk: scripts/ipkg-build of the openwrt tree, fed a staged package directory with CONTROL/
  (control, conffiles, postinst, prerm, postrm) as include/package-pack.mk writes it. ipkg-build
  writes a gzip'd tar of ./debian-binary, ./data.tar.gz, ./control.tar.gz (GNU tar --sort=name
  --numeric-owner --mtime, gzip -n): given SOURCE_DATE_EPOCH and root-owned files (we chown
  them as root, or run it under fakeroot like OpenWrt does) the bytes repeat. Installed-Size is
  ipkg-build's (the uncompressed data tar).
* .apk: `apk mkpkg` of apk-tools 3.0.6 (built by qemu/userspace.py), called with the --info
  fields, --script mapping (postinst -> post-install and post-upgrade, prerm -> pre-deinstall,
  postrm -> post-deinstall) and extra files (lib/apk/packages/NAME.list, .conffiles,
  .conffiles_static) of package-pack.mk; apk versions are PKG_VERSION-rPKG_RELEASE. mkpkg
  stamps file mtimes with SOURCE_DATE_EPOCH, sorts entries and signs nothing: same bytes twice.
SOURCE_DATE_EPOCH: --epoch, else $SOURCE_DATE_EPOCH, else the time of the last git commit.

Single source of truth: name, version, release, license, dependencies, title, description,
conffiles, prerm/postrm and the install layout (which file goes where with which mode) are read
from the feed Makefiles (openwrt_pkg/passthrough/Makefile, openwrt_pkg/luci-app-passthrough/
Makefile, openwrt_pkg/python-netfilterqueue/Makefile), so the SDK build and this one cannot drift
apart; dependencies are OpenWrt package names. The postinst does what OpenWrt's default_postinst
(SDK builds) does: run the uci-defaults, enable and (re)start the service; with IPKG_INSTROOT set
(image builds: opkg --offline-root, apk --root) it only creates the rc.d links in the image, and
the prerm only removes them there.

Python files shipped: the packages passthrough/ and nat/ (*.py only) into /usr/lib/passthrough,
without passthrough/lab (the namespace test lab: needs scapy, strongSwan and network namespaces,
nothing a router runs; `passthrough lab` is the only command that needs it) and without tests.

The BPF offload program: what the Makefile's Build/Compile compiles with CompileBPF (OpenWrt's
bpf.mk) from a source its Build/Prepare copies in (nat/bpf/offload.c), this compiles with the
host's clang (-target bpfel or bpfeb after --arch: BPF bytecode differs only in byte order, which
is also why the passthrough package is not "all" any more), strips the DWARF (llvm-strip
--strip-debug, as bpf.mk does; BTF stays, libbpf needs it) and ships where the install rule puts
it (/usr/lib/passthrough/offload.o). No clang: a clear error, no package.

python3-netfilterqueue: on a real SDK build python-netfilterqueue/Makefile compiles the PyPI sdist
(python3-package.mk). Here it is packaged for the test router from the compiled extension of
this host's Python 3.11 (the checkout's .venv, `import netfilterqueue`; the router image runs
Debian's python3.11 on glibc x86_64, so the extension is ABI-compatible), installed where
python3-package.mk puts it (/usr/lib/python3.11/site-packages/netfilterqueue/), its metadata
from that Makefile. Only for --arch x86_64; without such an interpreter it is skipped with a
warning (an error if --only asks for it).
"""
import argparse
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PT_DIR = os.path.join(HERE, "passthrough")
LUCI_DIR = os.path.join(HERE, "luci-app-passthrough")
PY_PACKAGES = ("passthrough", "nat")
PY_EXCLUDE = ("passthrough/lab",)
MODES = {"INSTALL_BIN": 0o755, "INSTALL_DATA": 0o644, "INSTALL_CONF": 0o600}
DEFAULT_ARCH = "x86_64"  # the QEMU test router's; OpenWrt package arch names (opkg print-architecture)
# Byte order of OpenWrt's package architectures: these are big-endian, every other one
# (x86_64, i386_*, aarch64_*, arm_*, mipsel_*, mips64el_*, riscv64_*, loongarch64_*) little.
BIG_ENDIAN_ARCHS = ("mips_", "mips64_", "powerpc_", "powerpc64_", "armeb_")


class BuildError(Exception):
    pass


# --- Makefile reading ---------------------------------------------------------------------------
def read_makefile(path):
    """(variables, defines) of an OpenWrt package Makefile: top-level `NAME:=value` assignments and
    the bodies of `define NAME ... endef` blocks (as lists of lines)."""
    variables, defines = {}, {}
    with open(path) as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"define\s+(\S+)\s*$", line)
        if m:
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "endef":
                body.append(lines[i])
                i += 1
            defines[m.group(1)] = body
        else:
            m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?::|\?|\+)?=\s*(.*)$", line)
            if m and not line.startswith(("\t", " ")):
                variables[m.group(1)] = m.group(2).strip()
        i += 1
    return variables, defines


def block_fields(body):
    """KEY:=value fields of a define body, with backslash continuation lines joined."""
    out, cur = {}, None
    for raw in body:
        line = raw.strip()
        if cur is not None:
            out[cur] += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                cur = None
            continue
        m = re.match(r"([A-Z_]+)\s*(?::|\+)?=\s*(.*)$", line)
        if m:
            key, val = m.group(1), m.group(2)
            out[key] = val.rstrip("\\").strip()
            if val.endswith("\\"):
                cur = key
    return out


def depends(spec):
    """OpenWrt DEPENDS -> control Depends: +pkg -> pkg; @SYMBOL and $(VARIABLE) (build-config
    only, e.g. $(BPF_DEPENDS) = @HAS_BPF_TOOLCHAIN) dropped."""
    out = []
    for tok in spec.split():
        if tok.startswith(("@", "$(")):
            continue
        if tok.startswith("+"):
            tok = tok[1:]
        if ":" in tok:  # +CONFIG_SYMBOL:pkg: conditional, the package
            tok = tok.split(":", 1)[1]
        if tok and tok not in out:
            out.append(tok)
    return out


def make_script(body):
    """A define body as shell text ($$ is make's escaped $)."""
    return "\n".join(line.replace("$$", "$") for line in body).strip("\n") + "\n"


# --- package contents -------------------------------------------------------------------------------
class Tree:
    """Files of a package: path (absolute, as installed) -> (mode, bytes or None for a directory)."""

    def __init__(self):
        self.entries = {}

    def add_dir(self, path, mode=0o755):
        path = "/" + path.strip("/")
        while path not in ("/", ""):
            if path not in self.entries:
                self.entries[path] = (mode, None)
            path = os.path.dirname(path)

    def add_file(self, path, data, mode):
        if path in self.entries and self.entries[path][1] is None:
            raise BuildError("%s is a directory" % path)
        self.add_dir(os.path.dirname(path))
        self.entries[path] = (mode, data)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def python_files(root, package):
    """*.py files of a python package below root (sorted), without the excluded subtrees."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__"
                             and "%s/%s" % (rel_dir, d) not in PY_EXCLUDE)
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                out.append("%s/%s" % (rel_dir, fn))
    return sorted(out)


# --- the BPF object -----------------------------------------------------------------------------------
def bpf_sources(defines):
    """{object name in $(PKG_BUILD_DIR): repository path of its C source}: the objects Build/Compile
    makes with $(call CompileBPF,$(PKG_BUILD_DIR)/X.c), the sources Build/Prepare copies there
    from $(PT_SRC)."""
    copied = {}
    for raw in defines.get("Build/Prepare", []):
        words = raw.split()
        if len(words) == 3 and words[0] == "$(CP)" and words[1].startswith("$(PT_SRC)/") \
                and words[2].rstrip("/") == "$(PKG_BUILD_DIR)":
            rel = words[1][len("$(PT_SRC)/"):]
            copied[os.path.basename(rel)] = rel
    out = {}
    for raw in defines.get("Build/Compile", []):
        for src in re.findall(r"\$\(call CompileBPF,\$\(PKG_BUILD_DIR\)/([\w.-]+\.c)\s*\)", raw):
            if src not in copied:
                raise BuildError("Build/Compile compiles %s, which Build/Prepare does not copy from $(PT_SRC)" % src)
            out[src[:-2] + ".o"] = copied[src]
    return out


def bpf_target(arch):
    """clang's BPF target for an OpenWrt package architecture: bpfeb or bpfel."""
    return "bpfeb" if arch.startswith(BIG_ENDIAN_ARCHS) else "bpfel"


def _tool(names):
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    return None


def clang_tools():
    """(clang, llvm-strip or None): $CLANG / $LLVM_STRIP, else from PATH (also versioned names)."""
    names = [os.environ["CLANG"]] if os.environ.get("CLANG") else ["clang"] + ["clang-%d" % v for v in range(20, 10, -1)]
    clang = _tool(names)
    if not clang:
        raise BuildError("clang not found: the BPF offload program (nat/bpf/offload.c) is compiled with clang "
                         "(Debian: apt-get install clang libbpf-dev; or set CLANG=/path/to/clang)")
    version = re.match(r"clang(-\d+)?$", os.path.basename(clang))
    version = (version.group(1) or "") if version else ""  # clang-14 -> llvm-strip-14
    names = [os.environ["LLVM_STRIP"]] if os.environ.get("LLVM_STRIP") else ["llvm-strip" + version, "llvm-strip"]
    return clang, _tool(names)


def compile_bpf(src_rel, arch, warn=None):
    """The bytes of src_rel (repository path) compiled for arch's byte order: clang -O2 -g with
    the repository as working directory and its path mapped to '.', so no path of this checkout
    ends up in the object (BTF line info names the source); then llvm-strip --strip-debug. The
    uapi headers are the host's: asm/ from its multiarch directory, and when the target's byte
    order is not the host's an asm/byteorder.h of our own, since the host's would declare the
    host's bit-field order (the IP header's ihl/version nibbles would swap)."""
    clang, strip = clang_tools()
    target = bpf_target(arch)
    with tempfile.TemporaryDirectory(prefix="pt-bpf-") as tmp:
        incs = []
        order = "big" if target == "bpfeb" else "little"
        if order != sys.byteorder:
            os.makedirs(os.path.join(tmp, "asm"))
            with open(os.path.join(tmp, "asm", "byteorder.h"), "w") as f:
                f.write("/* build_ipk.py: %s-endian BPF from a %s-endian host's uapi headers */\n"
                        "#include <linux/byteorder/%s_endian.h>\n" % (order, sys.byteorder, order))
            incs.append("-I" + tmp)
        p = subprocess.run([clang, "-print-multiarch"], capture_output=True, text=True)
        multiarch = p.stdout.strip() if p.returncode == 0 else ""
        if multiarch and os.path.isdir("/usr/include/" + multiarch):
            incs.append("-I/usr/include/" + multiarch)
        out = os.path.join(tmp, "out.o")
        cmd = [clang, "-O2", "-g", "-Wall", "-Werror", "-target", target, "-fdebug-prefix-map=%s=." % REPO] + incs + \
            ["-c", src_rel, "-o", out]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if p.returncode != 0:
            hint = " (Debian: apt-get install libbpf-dev)" if "bpf/bpf_helpers.h' file not found" in p.stderr else ""
            raise BuildError("compiling %s failed%s (%s): %s" % (src_rel, hint, " ".join(cmd),
                                                                (p.stderr or p.stdout).strip()[-2000:]))
        if strip:
            p = subprocess.run([strip, "--strip-debug", out], capture_output=True, text=True)
            if p.returncode != 0:
                raise BuildError("%s --strip-debug failed: %s" % (strip, p.stderr.strip()))
        elif warn:
            warn("llvm-strip not found (Debian: apt-get install llvm): %s ships with its DWARF" % src_rel)
        return _read(out)


def passthrough_tree(variables, defines, arch=DEFAULT_ARCH, warn=None):
    """The data of the passthrough package, from Package/passthrough/install."""
    tree = Tree()
    objects = bpf_sources(defines)
    body = defines.get("Package/%s/install" % variables["PKG_NAME"])
    if not body:
        raise BuildError("no Package/passthrough/install in the Makefile")
    for raw in body:
        words = raw.split()
        if not words:
            continue
        cmd = words[0]
        m = re.match(r"\$\((\w+)\)$", cmd)
        if not m:
            raise BuildError("install rule not understood: %r" % raw)
        verb = m.group(1)
        args = words[1:]
        if verb == "INSTALL_DIR":
            for a in args:
                tree.add_dir(_dest(a))
        elif verb in MODES and len(args) == 2 and args[0].startswith("$(PKG_BUILD_DIR)/"):
            obj = args[0][len("$(PKG_BUILD_DIR)/"):]
            if obj not in objects:
                raise BuildError("install rule not understood (%s is not built): %r" % (obj, raw))
            tree.add_file(_dest(args[1]), compile_bpf(objects[obj], arch, warn), MODES[verb])
        elif verb in MODES:
            if len(args) != 2 or not args[0].startswith("./"):
                raise BuildError("install rule not understood: %r" % raw)
            tree.add_file(_dest(args[1]), _read(os.path.join(PT_DIR, args[0][2:])), MODES[verb])
        elif verb == "CP":
            dest = _dest(args[-1])
            for src in args[:-1]:
                if not src.startswith("$(PKG_BUILD_DIR)/"):
                    raise BuildError("install rule not understood: %r" % raw)
                pkg = src[len("$(PKG_BUILD_DIR)/"):].strip("/")
                if pkg not in PY_PACKAGES:
                    raise BuildError("unexpected copy of %r" % pkg)
                for rel in python_files(REPO, pkg):
                    tree.add_file(dest.rstrip("/") + "/" + rel, _read(os.path.join(REPO, rel)), 0o644)
        else:
            raise BuildError("install rule not understood: %r" % raw)
    return tree


def _dest(arg):
    if not arg.startswith("$(1)/"):
        raise BuildError("install destination must start with $(1)/: %r" % arg)
    return "/" + arg[len("$(1)/"):].strip("/")


def luci_tree():
    """luci.mk layout: htdocs/ -> /www, root/ -> /."""
    tree = Tree()
    for sub, prefix in (("htdocs", "/www"), ("root", "")):
        base = os.path.join(LUCI_DIR, sub)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in sorted(filenames):
                src = os.path.join(dirpath, fn)
                rel = os.path.relpath(src, base).replace(os.sep, "/")
                mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
                tree.add_file(prefix + "/" + rel, _read(src), mode)
    return tree


# --- scripts ---------------------------------------------------------------------------------------
def init_numbers(data):
    text = data.decode()
    start = re.search(r"^START=(\d+)", text, re.M)
    stop = re.search(r"^STOP=(\d+)", text, re.M)
    return (start.group(1) if start else None), (stop.group(1) if stop else None)


def _subshell(body):
    """A Makefile script body as lines of a ( ... ) inside the generated script: its `exit`
    ends only the package's own part, as default_postinst / default_prerm source it."""
    return (["("] + ["\t" + ln if ln else ln for ln in make_script(body).rstrip("\n").split("\n")
                     if not ln.startswith("#!")] + [")"])


def service_postinst(tree, name, extra_body=None):
    """What OpenWrt's default_postinst does for this package, as a self-contained script; the
    package's own postinst from its Makefile (postinst-pkg) where default_postinst runs it:
    after the uci-defaults, before the service is enabled and started."""
    lines = ["#!/bin/sh",
             "# %s postinst (openwrt_pkg/build_ipk.py): what OpenWrt's default_postinst does." % name,
             '[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0']
    inits = sorted(p for p in tree.entries if p.startswith("/etc/init.d/") and tree.entries[p][1] is not None)
    defaults = sorted(p for p in tree.entries if p.startswith("/etc/uci-defaults/") and tree.entries[p][1] is not None)
    lines.append('if [ -n "${IPKG_INSTROOT}" ]; then')
    lines.append("\t# image build: the uci-defaults run at first boot; enable the service in the image")
    for p in inits:
        svc = os.path.basename(p)
        start, stop = init_numbers(tree.entries[p][1])
        lines.append('\tmkdir -p "${IPKG_INSTROOT}/etc/rc.d"')
        if start:
            lines.append('\tln -sf ../init.d/%s "${IPKG_INSTROOT}/etc/rc.d/S%s%s"' % (svc, start, svc))
        if stop:
            lines.append('\tln -sf ../init.d/%s "${IPKG_INSTROOT}/etc/rc.d/K%s%s"' % (svc, stop, svc))
    lines.append("\texit 0")
    lines.append("fi")
    for p in defaults:
        lines.append('[ -f %s ] && ( cd /etc/uci-defaults && . %s ) && rm -f %s' % (p, p, p))
    if extra_body:
        lines.extend(_subshell(extra_body))
    for p in inits:
        lines.append('[ "${PKG_UPGRADE}" = "1" ] || %s enable' % p)
        # default_postinst runs `start` after default_prerm's `stop`; restart only a running one
        # (a fresh install has no procd service to delete: no "Command failed" line)
        lines.append("%s enabled && { %s running && %s restart || %s start; }" % (p, p, p, p))
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def service_prerm(tree, name, extra_body):
    lines = ["#!/bin/sh",
             "# %s prerm (openwrt_pkg/build_ipk.py): what OpenWrt's default_prerm does, then the" % name,
             "# package's own prerm from its Makefile."]
    inits = sorted(p for p in tree.entries if p.startswith("/etc/init.d/") and tree.entries[p][1] is not None)
    lines.append('if [ -n "${IPKG_INSTROOT}" ]; then')
    lines.append("\t# removal from an image (opkg --offline-root, apk --root): only what `rc.common disable`")
    lines.append("\t# does, in the image; nothing runs, nothing of the build host is touched")
    for p in inits:
        svc = os.path.basename(p)
        lines.append('\trm -f "${IPKG_INSTROOT}"/etc/rc.d/S??%s "${IPKG_INSTROOT}"/etc/rc.d/K??%s' % (svc, svc))
    lines.append("\texit 0")
    lines.append("fi")
    for p in inits:
        lines.append("%s stop >/dev/null 2>&1" % p)
        lines.append('[ "${PKG_UPGRADE}" = "1" ] || %s disable' % p)
    if extra_body:
        lines.extend(_subshell(extra_body))
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


LUCI_POSTINST = """#!/bin/sh
# luci-app postinst (as luci.mk writes it): drop LuCI's caches, let rpcd re-read the ACLs.
[ -n "${IPKG_INSTROOT}" ] || {
	rm -f /tmp/luci-indexcache.*
	rm -rf /tmp/luci-modulecache/
	killall -HUP rpcd 2>/dev/null
	exit 0
}
"""


# --- packages --------------------------------------------------------------------------------------
class Package:
    """One package, format-neutral: what include/package-pack.mk knows when it writes the .ipk
    (CONTROL/ + ipkg-build) or the .apk (apk mkpkg)."""

    def __init__(self, name, pkg_version, pkg_release, arch, depends, tree, description, apk_description,
                 fields, conffiles=(), scripts=None):
        self.name = name
        self.pkg_version, self.pkg_release = pkg_version, pkg_release
        self.arch = arch
        self.depends = list(depends)
        self.tree = tree
        self.description = description          # ipk: TITLE, then the description lines
        self.apk_description = apk_description  # apk: package-pack.mk's $(strip description)
        self.fields = dict(fields)              # Source, SourceName, License, LicenseFiles, Section, URL, Maintainer
        self.conffiles = list(conffiles)
        self.scripts = dict(scripts or {})      # ipk names: postinst, prerm, postrm -> text
        for c in self.conffiles:
            if c not in tree.entries or tree.entries[c][1] is None:
                raise BuildError("%s: conffile %s is not a file of the package" % (name, c))

    @property
    def ipk_version(self):  # OpenWrt 24.10: $(PKG_VERSION)-$(PKG_RELEASE)
        return "%s-%s" % (self.pkg_version, self.pkg_release)

    @property
    def apk_version(self):  # OpenWrt 25.12 (package-defaults.mk): $(PKG_VERSION)-r$(PKG_RELEASE)
        return "%s-r%s" % (self.pkg_version, self.pkg_release)

    def ipk_name(self):
        return "%s_%s_%s.ipk" % (self.name, self.ipk_version, self.arch)

    def apk_name(self):  # package-pack.mk: $(1)$(ABIV_$(1))-$(VERSION).apk
        return "%s-%s.apk" % (self.name, self.apk_version)

    def control(self, epoch):
        """CONTROL/control, field order of package-pack.mk; Installed-Size is ipkg-build's to fill."""
        f = self.fields
        return control_text([
            ("Package", self.name), ("Version", self.ipk_version), ("Depends", ", ".join(self.depends)),
            ("Source", f.get("Source")), ("SourceName", f.get("SourceName")), ("License", f.get("License")),
            ("LicenseFiles", f.get("LicenseFiles")), ("Section", f.get("Section")),
            ("SourceDateEpoch", str(epoch)), ("URL", f.get("URL")), ("Maintainer", f.get("Maintainer")),
            ("Architecture", self.arch), ("Installed-Size", "0")], self.description)


def control_text(fields, description):
    out = []
    for k, v in fields:
        if v:
            out.append("%s: %s" % (k, v))
    desc = description.strip("\n").split("\n") if description else []
    out.append("Description: %s" % (desc[0].strip() if desc else ""))
    for line in desc[1:]:
        out.append(" " + (line.strip() or "."))
    return ("\n".join(out) + "\n").encode()


def _apk_description(defines, name, title):
    """package-pack.mk: --info "description:$(strip $(Package/NAME/description))", where the
    description defaults to the TITLE."""
    body = defines.get("Package/%s/description" % name)
    return " ".join(" ".join(body).split()) if body else title


def source_epoch():
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    try:
        p = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%ct"], capture_output=True, text=True,
                           timeout=30)
        if p.returncode == 0 and p.stdout.strip():
            return int(p.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    newest = 0
    for top in (HERE,) + tuple(os.path.join(REPO, p) for p in PY_PACKAGES):
        for dirpath, _, filenames in os.walk(top):
            for fn in filenames:
                newest = max(newest, int(os.stat(os.path.join(dirpath, fn)).st_mtime))
    return newest


def build_passthrough(arch=DEFAULT_ARCH, warn=None, **_):
    variables, defines = read_makefile(os.path.join(PT_DIR, "Makefile"))
    name = variables["PKG_NAME"]
    pkg = block_fields(defines["Package/%s" % name])
    arch = pkg.get("PKGARCH", arch)  # without PKGARCH an SDK build takes the target's architecture
    tree = passthrough_tree(variables, defines, arch, warn)
    conffiles = [ln.strip() for ln in defines.get("Package/%s/conffiles" % name, []) if ln.strip()]
    scripts = {"postinst": service_postinst(tree, name, defines.get("Package/%s/postinst" % name)),
               "prerm": service_prerm(tree, name, defines.get("Package/%s/prerm" % name))}
    if defines.get("Package/%s/postrm" % name):
        scripts["postrm"] = make_script(defines["Package/%s/postrm" % name])
    title = pkg.get("TITLE", "")
    return Package(name, variables["PKG_VERSION"], variables["PKG_RELEASE"], arch, depends(pkg.get("DEPENDS", "")),
                   tree, title + "\n" + "\n".join(defines.get("Package/%s/description" % name, [])),
                   _apk_description(defines, name, title),
                   {"Source": "feeds/passthrough/%s" % name, "SourceName": name,
                    "License": variables.get("PKG_LICENSE"), "Section": pkg.get("SECTION"),
                    "URL": pkg.get("URL"), "Maintainer": variables.get("PKG_MAINTAINER")},
                   conffiles, scripts)


def build_luci(arch=None, warn=None, **_):
    variables, defines = read_makefile(os.path.join(LUCI_DIR, "Makefile"))
    name = os.path.basename(LUCI_DIR)
    title = variables.get("LUCI_TITLE", name)
    return Package(name, variables["PKG_VERSION"], variables["PKG_RELEASE"], variables.get("LUCI_PKGARCH", "all"),
                   depends(variables.get("LUCI_DEPENDS", "")), luci_tree(), title,
                   " ".join(variables["LUCI_DESCRIPTION"].split()) if variables.get("LUCI_DESCRIPTION") else title,
                   {"Source": "feeds/passthrough/%s" % name, "SourceName": name,
                    "License": variables.get("PKG_LICENSE"), "Section": "luci",
                    "Maintainer": variables.get("PKG_MAINTAINER")},
                   (), {"postinst": LUCI_POSTINST})


# --- python3-netfilterqueue ---------------------------------------------------------------------------
NFQ_DIR = os.path.join(HERE, "python-netfilterqueue")
NFQ_PACKAGE = "python3-netfilterqueue"
NFQ_ARCH = "x86_64"       # the build host's compiled extension: x86_64 glibc, like the test router
ROUTER_PYTHON = (3, 11)   # python3-package.mk's PYTHON3_VERSION for OpenWrt 24.10, and the test image's
NFQ_PROBE = r"""
import json, os, sys, sysconfig
import netfilterqueue
from importlib import metadata
print(json.dumps({"file": netfilterqueue.__file__, "python": list(sys.version_info[:2]),
                  "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
                  "version": metadata.version("netfilterqueue")}))
"""


class Unavailable(BuildError):
    """A package this host cannot make (no compiled extension of the right kind)."""


def nfq_pythons(python=None):
    if python:
        return [python]
    out = []
    for p in (os.path.join(REPO, ".venv", "bin", "python"), sys.executable):
        if p and os.path.exists(p) and p not in out:
            out.append(p)
    return out


def find_netfilterqueue(python=None):
    """(interpreter, probe dict) of the first interpreter (--nfq-python, else the checkout's
    .venv, else this one) that imports netfilterqueue."""
    tried = []
    for py in nfq_pythons(python):
        try:
            p = subprocess.run([py, "-I", "-c", NFQ_PROBE], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            tried.append("%s: %s" % (py, e))
            continue
        if p.returncode == 0:
            import json
            return py, json.loads(p.stdout.strip().splitlines()[-1])
        tried.append("%s: %s" % (py, (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]))
    raise Unavailable("%s is packaged from a compiled netfilterqueue extension (pip install netfilterqueue "
                      "into .venv, or --nfq-python PYTHON); none found: %s" % (NFQ_PACKAGE, "; ".join(tried)))


def _elf_machine(data):
    """(class, byte order, e_machine) of an ELF file."""
    if data[:4] != b"\x7fELF":
        return None
    order = "<" if data[5] == 1 else ">"
    return data[4], data[5], struct.unpack(order + "H", data[18:20])[0]


def netfilterqueue_tree(info, site, warn=None):
    """python3-package.mk's layout: the module and its dist-info under $(PYTHON3_PKG_DIR); the
    extension stripped (as $(RSTRIP) does), the Cython/typing sources (.pyx, .pxd, .pyi) and
    pip's bookkeeping (RECORD, INSTALLER, REQUESTED) left out."""
    tree = Tree()
    pkgdir = os.path.dirname(info["file"])
    sitedir = os.path.dirname(pkgdir)
    ext = info["ext_suffix"]
    found_ext = False
    for fn in sorted(os.listdir(pkgdir)):
        src = os.path.join(pkgdir, fn)
        if not os.path.isfile(src):
            continue
        if fn.endswith(".py"):
            tree.add_file("%s/netfilterqueue/%s" % (site, fn), _read(src), 0o644)
        elif fn.endswith(ext):
            data = _read(src)
            if _elf_machine(data) != (2, 1, 62):
                raise Unavailable("%s is not an x86-64 ELF shared object" % src)
            tree.add_file("%s/netfilterqueue/%s" % (site, fn), strip_shared_object(src, warn) or data, 0o755)
            found_ext = True
    if not found_ext:
        raise Unavailable("%s has no compiled extension *%s" % (pkgdir, ext))
    want = "netfilterqueue-%s.dist-info" % info["version"]
    dist = [d for d in os.listdir(sitedir) if d.lower() == want.lower()]
    if not dist:
        raise Unavailable("%s has no %s" % (sitedir, want))
    base = os.path.join(sitedir, dist[0])
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for fn in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, fn), base).replace(os.sep, "/")
            if rel in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            tree.add_file("%s/%s/%s" % (site, dist[0], rel), _read(os.path.join(dirpath, fn)), 0o644)
    return tree


def strip_shared_object(path, warn=None):
    """`strip --strip-unneeded` of a shared object (what OpenWrt's rstrip.sh does to packages),
    or None without binutils."""
    strip = _tool([os.environ["STRIP"]] if os.environ.get("STRIP") else ["strip"])
    if not strip:
        if warn:
            warn("strip not found (Debian: apt-get install binutils): %s ships unstripped" % path)
        return None
    with tempfile.TemporaryDirectory(prefix="pt-strip-") as tmp:
        out = os.path.join(tmp, "out.so")
        p = subprocess.run([strip, "--strip-unneeded", "-o", out, path], capture_output=True, text=True)
        if p.returncode != 0:
            raise BuildError("%s --strip-unneeded %s failed: %s" % (strip, path, p.stderr.strip()))
        return _read(out)


def build_netfilterqueue(arch=DEFAULT_ARCH, warn=None, python=None, **_):
    """python3-netfilterqueue for the test router: metadata from python-netfilterqueue/Makefile,
    files from this host's compiled extension (an SDK build compiles the PyPI sdist instead)."""
    variables, defines = read_makefile(os.path.join(NFQ_DIR, "Makefile"))
    name = NFQ_PACKAGE
    if "Package/%s" % name not in defines:
        raise BuildError("%s/Makefile defines no Package/%s" % (NFQ_DIR, name))
    pkg = block_fields(defines["Package/%s" % name])
    if arch != NFQ_ARCH:
        raise Unavailable("%s is packaged from this host's compiled %s extension, not for %s: build it with "
                          "the SDK (python-netfilterqueue/Makefile compiles the PyPI sdist)" % (name, NFQ_ARCH, arch))
    py, info = find_netfilterqueue(python)
    if tuple(info["python"]) != ROUTER_PYTHON:
        raise Unavailable("%s's netfilterqueue is for python %d.%d; the router runs python %d.%d"
                          % ((py,) + tuple(info["python"]) + ROUTER_PYTHON))
    if info["version"] != variables["PKG_VERSION"]:
        raise BuildError("%s has netfilterqueue %s, python-netfilterqueue/Makefile says PKG_VERSION:=%s: "
                         "install that version (pip install netfilterqueue==%s) or update the Makefile"
                         % (py, info["version"], variables["PKG_VERSION"], variables["PKG_VERSION"]))
    site = "/usr/lib/python%d.%d/site-packages" % ROUTER_PYTHON
    title = pkg.get("TITLE", "")
    return Package(name, variables["PKG_VERSION"], variables["PKG_RELEASE"], pkg.get("PKGARCH", arch),
                   depends(pkg.get("DEPENDS", "")), netfilterqueue_tree(info, site, warn),
                   title + "\n" + "\n".join(defines.get("Package/%s/description" % name, [])),
                   _apk_description(defines, name, title),
                   {"Source": "feeds/passthrough/%s" % os.path.basename(NFQ_DIR),
                    "SourceName": variables["PKG_NAME"], "License": variables.get("PKG_LICENSE"),
                    "LicenseFiles": variables.get("PKG_LICENSE_FILES"), "Section": pkg.get("SECTION"),
                    "URL": pkg.get("URL"), "Maintainer": variables.get("PKG_MAINTAINER")})


BUILDERS = {"passthrough": build_passthrough, "luci-app-passthrough": build_luci,
            NFQ_PACKAGE: build_netfilterqueue}
FORMATS = ("ipk", "apk", "both")


# --- writing the packages -----------------------------------------------------------------------------
def stage_tree(tree, dest, epoch):
    """The package's files under dest, modes from the tree, mtimes = epoch (ipkg-build's tar
    --mtime and apk mkpkg's SOURCE_DATE_EPOCH override them anyway)."""
    os.makedirs(dest, exist_ok=True)
    os.chmod(dest, 0o755)
    for path in sorted(tree.entries):
        mode, data = tree.entries[path]
        full = dest + path
        if data is None:
            os.makedirs(full, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(data)
        os.chmod(full, mode)
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (epoch, epoch), follow_symlinks=False)
    os.utime(dest, (epoch, epoch))


def _as_root_owner(argv, dirs, env):
    """Run argv with every file of dirs owned by root: directly when we are root (after a chown),
    else under fakeroot, as OpenWrt runs ipkg-build and apk mkpkg ($(FAKEROOT))."""
    if os.geteuid() == 0:
        for d in dirs:
            for dirpath, dirnames, filenames in os.walk(d):
                for n in [dirpath] + [os.path.join(dirpath, x) for x in dirnames + filenames]:
                    os.lchown(n, 0, 0)
        cmd = argv
    else:
        fakeroot = shutil.which("fakeroot")
        if not fakeroot:
            raise BuildError("not root and no fakeroot: package files must belong to root "
                             "(Debian: apt-get install fakeroot, or build as root)")
        cmd = [fakeroot, "--", "sh", "-c", 'for d in $DIRS; do chown -R 0:0 "$d" || exit 1; done; exec "$@"',
               "sh"] + argv
        env = dict(env, DIRS=" ".join(dirs))
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError("%s: %s" % (argv[0], e))


def _gnu_tar_check():
    p = subprocess.run(["tar", "--version"], capture_output=True, text=True)
    if p.returncode != 0 or "GNU tar" not in p.stdout:
        raise BuildError("ipkg-build needs GNU tar (--sort=name, --mtime): `tar --version` says %r"
                         % (p.stdout or p.stderr).strip()[:200])


def write_ipk(pkg, outdir, epoch, ipkg_build):
    """The .ipk by OpenWrt's scripts/ipkg-build, from a staged package directory with CONTROL/
    as package-pack.mk writes it. ipkg-build itself makes the archives reproducible: GNU tar
    --sort=name --numeric-owner --mtime=@SOURCE_DATE_EPOCH, `gzip -n`; the ownership is the
    staged files' (root, see _as_root_owner); TZ=UTC and LC_ALL=C fix how its `date` output
    is read back."""
    _gnu_tar_check()
    with tempfile.TemporaryDirectory(prefix="pt-ipk-") as tmp:
        idir = os.path.join(tmp, pkg.name)
        stage_tree(pkg.tree, idir, epoch)
        ctl = os.path.join(idir, "CONTROL")
        os.mkdir(ctl)
        files = {"control": (0o644, pkg.control(epoch))}
        if pkg.conffiles:
            files["conffiles"] = (0o644, ("\n".join(pkg.conffiles) + "\n").encode())
        for script in ("postinst", "prerm", "postrm"):
            if pkg.scripts.get(script):
                files[script] = (0o755, pkg.scripts[script].encode())
        for fn, (mode, data) in files.items():
            with open(os.path.join(ctl, fn), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(ctl, fn), mode)
        os.chmod(ctl, 0o755)
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), PKG_SOURCE_DATE_EPOCH=str(epoch), TZ="UTC", LC_ALL="C")
        env.pop("TAR", None)  # ipkg-build honours $TAR: GNU tar from PATH
        shell = shutil.which("bash") or "/bin/sh"  # package-pack.mk: $(STAGING_DIR_HOST)/bin/bash ipkg-build
        p = _as_root_owner([shell, ipkg_build, idir, out], [idir], env)
        made = sorted(os.listdir(out))
        if p.returncode != 0 or made != [pkg.ipk_name()]:
            raise BuildError("ipkg-build %s failed (exit %d, made %s): %s" % (
                pkg.name, p.returncode, made or "nothing", (p.stderr + p.stdout).strip()[-2000:]))
        path = os.path.join(outdir, pkg.ipk_name())
        shutil.move(os.path.join(out, made[0]), path + ".tmp")
        os.chmod(path + ".tmp", 0o644)
        os.replace(path + ".tmp", path)
        return path


def apk_scripts(pkg):
    """package-pack.mk's mapping of the ipk maintainer scripts onto apk's: post-install is the
    postinst (for an SDK build: default_postinst + Package/postinst; ours is self-contained),
    post-upgrade the same after `export PKG_UPGRADE=1`, pre-deinstall the prerm, post-deinstall
    the postrm (pre-install / pre-upgrade only come from a preinst, which none has)."""
    out = []
    post = pkg.scripts.get("postinst")
    if post:
        out.append(("post-install", post))
        out.append(("post-upgrade", "#!/bin/sh\nexport PKG_UPGRADE=1\n" + re.sub(r"^\s*#!", "#!", post)))
    if pkg.scripts.get("prerm"):
        out.append(("pre-deinstall", pkg.scripts["prerm"]))
    if pkg.scripts.get("postrm"):
        out.append(("post-deinstall", re.sub(r"^\s*#!", "#!", pkg.scripts["postrm"])))
    return out


def apk_files(pkg):
    """package-pack.mk's additions to the data of an .apk: lib/apk/packages/NAME.list (files and
    links, sorted), NAME.conffiles and NAME.conffiles_static (path and sha256)."""
    tree = Tree()
    tree.entries = dict(pkg.tree.entries)
    listing = sorted(p for p, (_, data) in pkg.tree.entries.items() if data is not None)
    base = "/lib/apk/packages/%s" % pkg.name
    tree.add_dir("/lib/apk/packages")
    tree.add_file(base + ".list", "".join(p + "\n" for p in listing).encode(), 0o644)
    if pkg.conffiles:
        tree.add_file(base + ".conffiles", ("\n".join(pkg.conffiles) + "\n").encode(), 0o644)
        tree.add_file(base + ".conffiles_static", "".join(
            "%s %s\n" % (c, hashlib.sha256(pkg.tree.entries[c][1]).hexdigest()) for c in pkg.conffiles).encode(), 0o644)
    return tree


def write_apk(pkg, outdir, epoch, tools):
    """The .apk by the real `apk mkpkg`, called as package-pack.mk calls it (--info name,
    version, description, arch (all -> noarch), license, origin, url, maintainer, provides,
    depends; --script; --files), with SOURCE_DATE_EPOCH: mkpkg stamps every file's mtime with
    it, directories carry none, entries are sorted and nothing is signed, so the bytes repeat.
    --no-xattrs: a build host's extended attributes (SELinux labels) are no package content."""
    with tempfile.TemporaryDirectory(prefix="pt-apk-") as tmp:
        idir = os.path.join(tmp, "files")
        stage_tree(apk_files(pkg), idir, epoch)
        sdir = os.path.join(tmp, "scripts")
        os.mkdir(sdir)
        argv = [tools.apk, "mkpkg",
                "--info", "name:" + pkg.name, "--info", "version:" + pkg.apk_version,
                "--info", "description:" + pkg.apk_description,
                "--info", "arch:" + ("noarch" if "all" in pkg.arch else pkg.arch),
                "--info", "license:" + (pkg.fields.get("License") or ""),
                "--info", "origin:" + (pkg.fields.get("Source") or ""),
                "--info", "url:" + (pkg.fields.get("URL") or ""),
                "--info", "maintainer:" + (pkg.fields.get("Maintainer") or ""),
                "--info", "provides:"]
        for kind, text in apk_scripts(pkg):
            path = os.path.join(sdir, kind)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)
            argv += ["--script", "%s:%s" % (kind, path)]
        out = os.path.join(tmp, pkg.apk_name())
        argv += ["--info", "depends:" + " ".join(pkg.depends), "--files", idir, "--no-xattrs", "--output", out]
        p = _as_root_owner(argv, [idir], tools.env(SOURCE_DATE_EPOCH=str(epoch), LC_ALL="C"))
        if p.returncode != 0 or not os.path.isfile(out):
            raise BuildError("apk mkpkg %s failed (exit %d): %s" % (pkg.name, p.returncode,
                                                                   (p.stderr + p.stdout).strip()[-2000:]))
        path = os.path.join(outdir, pkg.apk_name())
        shutil.move(out, path + ".tmp")
        os.chmod(path + ".tmp", 0o644)
        os.replace(path + ".tmp", path)
        return path


def _pkgdb():
    sys.path.insert(0, os.path.join(HERE, "qemu"))
    import pkgdb
    return pkgdb


def build(outdir, epoch=None, only=None, arch=DEFAULT_ARCH, warn=None, fmt="ipk", tools=None, python=None,
          cache=None):
    """Build the packages into outdir; returns their paths (.ipk first, then .apk).

    fmt: "ipk" (OpenWrt 24.10, by scripts/ipkg-build), "apk" (25.12, by apk mkpkg) or "both".
    arch: the OpenWrt package architecture of passthrough (its BPF object's byte order follows
    it); luci-app-passthrough is "all"; python3-netfilterqueue is this host's x86_64 extension,
    built by default only for arch x86_64 and when an interpreter with netfilterqueue is found
    (`python`, else .venv, else this one): otherwise a warning, unless `only` asks for it.
    tools: pkgdb.Tools / a userspace manifest / a stage path for apk and ipkg-build (default:
    pkgdb.find_tools(cache); an ipk-only build just unpacks ipkg-build, see
    pkgdb.ipkg_build_script)."""
    if epoch is None:
        epoch = source_epoch()
    if fmt not in FORMATS:
        raise BuildError("unknown format %r (ipk, apk or both)" % (fmt,))
    if not re.match(r"^[a-z0-9][a-z0-9_.+-]*$", arch or ""):
        raise BuildError("bad architecture name %r (e.g. x86_64, mips_24kc, aarch64_cortex-a53)" % arch)
    for name in only or ():
        if name not in BUILDERS:
            raise BuildError("unknown package %r (%s)" % (name, ", ".join(BUILDERS)))
    packages = []
    for key in BUILDERS:
        if only and key not in only:
            continue
        try:
            packages.append(BUILDERS[key](arch=arch, warn=warn, python=python))
        except Unavailable as e:
            if only:
                raise
            if warn:
                warn("%s not built: %s" % (key, e))
    formats = ("ipk", "apk") if fmt == "both" else (fmt,)
    pkgdb = _pkgdb()
    try:
        if tools is not None or "apk" in formats:
            tools = pkgdb.find_tools(tools, cache)
        ipkg_build = tools.ipkg_build if tools is not None else pkgdb.ipkg_build_script(cache)
    except pkgdb.PkgDbError as e:
        raise BuildError(str(e))
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for kind in formats:
        for pkg in packages:
            paths.append(write_ipk(pkg, outdir, epoch, ipkg_build) if kind == "ipk" else
                         write_apk(pkg, outdir, epoch, tools))
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", help="where to write the packages")
    ap.add_argument("--format", dest="fmt", choices=FORMATS, default="ipk",
                    help="ipk (OpenWrt 24.10, scripts/ipkg-build), apk (25.12, apk mkpkg) or both "
                         "(default %(default)s)")
    ap.add_argument("--epoch", type=int, help="mtime of every entry (default: SOURCE_DATE_EPOCH, else last git commit)")
    ap.add_argument("--only", action="append", choices=sorted(BUILDERS), help="build only this package")
    ap.add_argument("--arch", default=DEFAULT_ARCH,
                    help="OpenWrt package architecture of passthrough, e.g. mips_24kc (default %(default)s): "
                         "its BPF object is compiled for that byte order")
    ap.add_argument("--nfq-python", metavar="PYTHON",
                    help="interpreter whose compiled netfilterqueue becomes python3-netfilterqueue "
                         "(default: the checkout's .venv, else this one)")
    ap.add_argument("--cache", help="userspace.py cache with apk-tools/opkg and the openwrt tree "
                                    "(default: $PT_QEMU_CACHE or /var/cache/passthrough-qemu)")
    args = ap.parse_args(argv)

    def warn(msg):
        print("build_ipk: warning: %s" % msg, file=sys.stderr)
    try:
        paths = build(args.outdir, args.epoch, args.only, args.arch, warn, args.fmt, python=args.nfq_python,
                      cache=args.cache)
    except (BuildError, OSError, KeyError) as e:
        print("build_ipk: %s" % e, file=sys.stderr)
        return 1
    for p in paths:
        print("%s  %s" % (hashlib.sha256(_read(p)).hexdigest(), p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
