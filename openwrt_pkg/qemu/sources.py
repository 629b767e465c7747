"""Where OpenWrt's upstream sources come from: the pinned commits, the mirror or a git clone.

The project builds its router image and its packages from OpenWrt's own code, never from a copy
kept in this repository. `OPENWRT_SRC` names a folder in the layout of the workplace mirror
(`tarballs/SOURCES.tsv` + one tarball per repository); without it, `../shared/openwrt-src` next to
the checkout is used when present, else the same commits are cloned from upstream over git.

    unpack(name, dest_parent) -> path of the unpacked repository (dest_parent/<name>)
"""
import hashlib
import os
import shutil
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# name -> (upstream git URL, commit, commit date). The mirror's SOURCES.tsv must list the same commits.
PINS = {
    "libubox": ("https://github.com/openwrt/libubox", "1aa36ee774c8db4d7a396903e0d2e1fb79ee8bf1", "2026-02-13"),
    "udebug": ("https://github.com/openwrt/udebug", "875e1a7af6ca9d86524d18169c3a79f4a1920053", "2026-01-16"),
    "ubus": ("https://github.com/openwrt/ubus", "3cc98db1a422dcf560f2d6347fd410f17565a89d", "2025-12-02"),
    "uci": ("https://github.com/openwrt/uci", "66127cd76c5d0bd46d5a90302cc6110f53a4e2f8", "2025-12-02"),
    "ucode": ("https://github.com/jow-/ucode", "81205a25437a83e3b9e1eb55ac169be84453d53b", "2026-07-22"),
    "jsonpath": ("https://github.com/openwrt/jsonpath", "e5a07f468508f5e599723373445d442623ece70d", "2026-02-10"),
    "procd": ("https://github.com/openwrt/procd", "2c1834abae171261f2d9161e5a28c36cbcc394a4", "2026-08-18"),
    "ubox": ("https://github.com/openwrt/ubox", "6f78fa496bf36c55864a41e353df7d13f04b1077", "2025-10-30"),
    "rpcd": ("https://github.com/openwrt/rpcd", "4476687403d8c6e988eaa1ecc892e998838e6da9", "2026-04-21"),
    "uhttpd": ("https://github.com/openwrt/uhttpd", "f682ccabee9ed5f39dd3b0aaf96228975eeb478d", "2026-07-24"),
    "ustream-ssl": ("https://github.com/openwrt/ustream-ssl", "99bd3d2b167ccdffb6de072d02c380cb37b23e33", "2024-07-28"),
    "firewall4": ("https://github.com/openwrt/firewall4", "b6e5157527d361f99ad52eaa6da273cb0f2dfd59", "2025-03-17"),
    "netifd": ("https://github.com/openwrt/netifd", "e97e36f9b5b545866c40d9803bd39e257389647e", "2026-07-17"),
    "opkg-lede": ("https://github.com/openwrt/opkg-lede", "38eccbb1fd694d4798ac1baf88f9ba83d1eac616", "2024-10-16"),
    "lucihttp": ("https://github.com/jow-/lucihttp", "9b5b683fbb2bb0010aa031d620d0ab8105516757", "2023-03-15"),
    "apk-tools": ("https://gitlab.alpinelinux.org/alpine/apk-tools", "90b974fd8510fbc2b3d6adde311ad1ba8754c728", "2026-06-30"),
    # the two big trees: only selected paths are used (base-files, package Makefiles, scripts/ipkg-build;
    # luci-base, the bootstrap theme, luci-mod-*, rpcd-mod-luci)
    "openwrt": ("https://github.com/openwrt/openwrt", "caef0a839a80749b7a125f09cb26814980fb7202", "2025-12-18"),
    "luci": ("https://github.com/openwrt/luci", "6ca4cc328bb689eed37dae8f6eeed40868192538", "2024-07-10"),
}


class SourceError(Exception):
    pass


def mirror_dir():
    """The mirror folder in use, or None (then sources are cloned)."""
    env = os.environ.get("OPENWRT_SRC")
    if env:
        if not os.path.isfile(os.path.join(env, "tarballs", "SOURCES.tsv")):
            raise SourceError("OPENWRT_SRC=%s has no tarballs/SOURCES.tsv" % env)
        return os.path.abspath(env)
    default = os.path.join(os.path.dirname(REPO), "shared", "openwrt-src")
    if os.path.isfile(os.path.join(default, "tarballs", "SOURCES.tsv")):
        return default
    return None


def _mirror_index(mirror):
    """commit -> tarball path, from SOURCES.tsv (repository, commit, date, file)."""
    out = {}
    with open(os.path.join(mirror, "tarballs", "SOURCES.tsv")) as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) >= 4:
                out[cols[1]] = os.path.join(mirror, "tarballs", cols[3])
    return out


def describe():
    """{name: {"commit", "url", "from"}} for the manifest."""
    mirror = mirror_dir()
    index = _mirror_index(mirror) if mirror else {}
    return {n: {"commit": c, "date": d, "url": u, "from": index.get(c, "git " + u)} for n, (u, c, d) in PINS.items()}


def version(name):
    """OpenWrt's version string for a package built from a git commit: YYYY.MM.DD~<hash8>
    (PKG_SOURCE_DATE~PKG_SOURCE_VERSION, as its package Makefiles write them)."""
    _url, commit, date = PINS[name]
    return "%s~%s" % (date.replace("-", "."), commit[:8])


def fingerprint(names):
    """Changes when any named component's pinned commit changes."""
    return hashlib.sha256(repr(sorted((n, PINS[n][1]) for n in names)).encode()).hexdigest()[:16]


def unpack(name, dest_parent):
    """Unpack (or clone) component `name` at its pinned commit into dest_parent/<name>."""
    url, commit, _date = PINS[name]
    dest = os.path.join(dest_parent, name)
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest_parent, exist_ok=True)
    mirror = mirror_dir()
    if mirror:
        tarball = _mirror_index(mirror).get(commit)
        if not tarball:
            raise SourceError("mirror %s has no tarball of %s at %s (SOURCES.tsv)" % (mirror, name, commit))
        with tarfile.open(tarball) as t:
            top = {m.name.split("/", 1)[0] for m in t.getmembers()}
            if top != {name}:
                raise SourceError("%s unpacks to %s, expected one folder %s" % (tarball, sorted(top), name))
            t.extractall(dest_parent)
        return dest
    try:
        subprocess.run(["git", "init", "-q", dest], check=True)
        subprocess.run(["git", "-C", dest, "fetch", "-q", "--depth", "1", url, commit], check=True, timeout=900)
        subprocess.run(["git", "-C", dest, "checkout", "-q", "FETCH_HEAD"], check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise SourceError("no mirror (OPENWRT_SRC) and cloning %s@%s failed: %s" % (url, commit[:12], e))
    shutil.rmtree(os.path.join(dest, ".git"), ignore_errors=True)
    return dest
