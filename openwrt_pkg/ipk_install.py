#!/usr/bin/env python3
"""Install .ipk packages into a root file system directory, the way opkg lays them out; runs nothing.

    python3 openwrt_pkg/ipk_install.py ROOTFS PKG.ipk [PKG.ipk ...]

For each package: the data archive is unpacked into ROOTFS (modes kept, owner root), and its
control files go to ROOTFS/usr/lib/opkg/info/<name>.{control,conffiles,postinst,prerm,postrm}
with <name>.list (the installed files), plus a stanza in ROOTFS/usr/lib/opkg/status, so opkg on
the booted system knows the package. Maintainer scripts are NOT run (run
/usr/lib/opkg/info/<name>.postinst inside the system if wanted).

Conffiles behave like opkg's: an existing file that differs from the package's version is kept
and the package's version is written next to it as FILE-opkg.

Both container formats are read: gzip'd tar (what OpenWrt's ipkg-build and build_ipk.py write)
and Debian-style `ar`. Members that would land outside ROOTFS (absolute names, `..`, links
pointing out) are refused.
"""
import argparse
import gzip
import hashlib
import io
import os
import posixpath
import sys
import tarfile

INFO_DIR = "usr/lib/opkg/info"
STATUS_FILE = "usr/lib/opkg/status"


class IpkError(Exception):
    pass


def _ar_members(blob):
    if not blob.startswith(b"!<arch>\n"):
        raise IpkError("not an ar archive")
    out, pos = {}, 8
    while pos + 60 <= len(blob):
        head = blob[pos:pos + 60]
        name = head[0:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        pos += 60
        out["./" + _member_name(name)] = blob[pos:pos + size]
        pos += size + (size & 1)
    return out


def outer_members(blob):
    """{'./debian-binary': bytes, './data.tar.gz': bytes, './control.tar.gz': bytes}"""
    if blob.startswith(b"!<arch>\n"):
        return _ar_members(blob)
    if not blob.startswith(b"\x1f\x8b"):
        raise IpkError("neither a gzip'd tar nor an ar archive")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile():
                out["./" + _member_name(m.name)] = tf.extractfile(m).read()
    return out


def read_ipk(path):
    """(control fields dict, control files {name: (mode, bytes)}, data tar bytes)."""
    with open(path, "rb") as f:
        return unpack(outer_members(f.read()), path)


def unpack(members, path):
    """read_ipk's result from outer_members' (the caller keeps the compressed members)."""
    for need in ("./debian-binary", "./control.tar.gz", "./data.tar.gz"):
        if need not in members:
            raise IpkError("%s: no %s" % (path, need))
    if not members["./debian-binary"].startswith(b"2."):
        raise IpkError("%s: unsupported package format %r" % (path, members["./debian-binary"]))
    files = {}
    with tarfile.open(fileobj=io.BytesIO(members["./control.tar.gz"]), mode="r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile():
                files[posixpath.basename(m.name)] = (m.mode & 0o7777, tf.extractfile(m).read())
    if "control" not in files:
        raise IpkError("%s: control archive has no control file" % path)
    return parse_control(files["control"][1].decode()), files, gzip.decompress(members["./data.tar.gz"])


def parse_control(text):
    fields, last = {}, None
    for line in text.split("\n"):
        if line.startswith((" ", "\t")) and last:
            fields[last] += "\n" + line
        elif ":" in line:
            k, v = line.split(":", 1)
            last = k.strip()
            fields[last] = v.strip()
    return fields


def _member_name(name):
    """'./etc/x' -> 'etc/x' (only the one leading './'), '.' and './' -> '.'"""
    while name.startswith("./"):
        name = name[2:]
    return name or "."


def _safe(root, name):
    rel = posixpath.normpath(_member_name(name))
    if name.startswith("/") or rel == ".." or rel.startswith("../"):
        raise IpkError("refusing member outside the root: %r" % name)
    return rel


def install(root, path):
    """Install one .ipk into root; returns the package name."""
    root = os.path.abspath(root)
    fields, ctl_files, data_tar = read_ipk(path)
    name = fields.get("Package")
    if not name:
        raise IpkError("%s: control has no Package field" % path)
    conffiles = [c.strip() for c in ctl_files.get("conffiles", (0, b""))[1].decode().split("\n") if c.strip()]
    installed, conf_sums = [], {}
    with tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:") as tf:
        for m in tf.getmembers():
            rel = _safe(root, m.name)
            if rel == ".":
                continue
            dest = os.path.join(root, rel)
            abs_name = "/" + rel
            if m.isdir():
                os.makedirs(dest, exist_ok=True)
                os.chmod(dest, m.mode & 0o7777)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if m.issym():
                target = posixpath.normpath(posixpath.join(posixpath.dirname(abs_name), m.linkname))
                if not target.startswith("/") or target.startswith("/.."):
                    raise IpkError("refusing link out of the root: %s -> %s" % (m.name, m.linkname))
                if os.path.lexists(dest):
                    os.remove(dest)
                os.symlink(m.linkname, dest)
                installed.append(abs_name)
                continue
            if not m.isfile():
                raise IpkError("unsupported member type in %s: %s" % (path, m.name))
            data = tf.extractfile(m).read()
            if abs_name in conffiles:
                conf_sums[abs_name] = hashlib.md5(data).hexdigest()
                if os.path.exists(dest):
                    with open(dest, "rb") as f:
                        if f.read() != data:  # keep the admin's file, as opkg does
                            dest = dest + "-opkg"
            if os.path.lexists(dest) and not os.path.isfile(dest):
                raise IpkError("%s exists and is not a file" % dest)
            with open(dest, "wb") as f:
                f.write(data)
            os.chmod(dest, m.mode & 0o7777)
            os.utime(dest, (m.mtime, m.mtime))
            installed.append(abs_name)
    info = os.path.join(root, INFO_DIR)
    os.makedirs(info, exist_ok=True)
    for fn, (mode, data) in ctl_files.items():
        p = os.path.join(info, "%s.%s" % (name, fn))
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, 0o755 if fn in ("preinst", "postinst", "prerm", "postrm") else 0o644)
    with open(os.path.join(info, name + ".list"), "w") as f:
        f.write("".join(p + "\n" for p in installed))
    _update_status(root, name, fields, conffiles, conf_sums)
    return name


def _update_status(root, name, fields, conffiles, conf_sums):
    path = os.path.join(root, STATUS_FILE)
    stanzas = []
    if os.path.exists(path):
        with open(path) as f:
            for block in f.read().split("\n\n"):
                if block.strip() and parse_control(block).get("Package") != name:
                    stanzas.append(block.strip("\n"))
    lines = ["Package: %s" % name, "Version: %s" % fields.get("Version", "")]
    if fields.get("Depends"):
        lines.append("Depends: %s" % fields["Depends"])
    lines.append("Status: install user installed")
    lines.append("Architecture: %s" % fields.get("Architecture", "all"))
    if conffiles:
        lines.append("Conffiles:")
        lines.extend(" %s %s" % (c, conf_sums.get(c, "")) for c in conffiles)
    lines.append("Installed-Time: %s" % (fields.get("SourceDateEpoch") or "0"))
    stanzas.append("\n".join(lines))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n\n".join(stanzas) + "\n\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rootfs", help="root directory to install into")
    ap.add_argument("ipk", nargs="+", help=".ipk files")
    args = ap.parse_args(argv)
    for p in args.ipk:
        try:
            name = install(args.rootfs, p)
        except (IpkError, OSError, tarfile.TarError) as e:
            print("ipk_install: %s: %s" % (p, e), file=sys.stderr)
            return 1
        print("installed %s into %s" % (name, args.rootfs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
