"""openwrt_pkg/size_report.py: the installed-size report of the packages build_ipk.py makes (built
here into a tmp dir, .ipk), checked against the data tars read independently, and on a small
hand-made .ipk (an unknown file, no BPF object)."""
import io
import os
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "openwrt_pkg"))

import build_ipk  # noqa: E402
import size_report  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("size")
    return build_ipk.build(str(out), only=["passthrough", "luci-app-passthrough"])


def data_files(ipk):
    """{path: size} of the regular files in an .ipk's data.tar.gz, read without size_report."""
    with tarfile.open(ipk, "r:gz") as outer:
        data = outer.extractfile("./data.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        return {m.name[2:]: m.size for m in t.getmembers() if m.isfile()}


def test_groups_sum_to_the_unpacked_files(built):
    for path in built:
        pkg = size_report.read_package(path)
        want = data_files(path)
        assert pkg.files == want
        groups = pkg.groups()
        assert sum(b for _, _, b in groups) == pkg.total == sum(want.values()) > 0
        assert sum(n for _, n, _ in groups) == len(want)
        assert all(n > 0 and b > 0 for _, n, b in groups)
        assert "other" not in [g for g, _, _ in groups]  # every file of ours has a group
        # ipkg-build's Installed-Size is the uncompressed data tar: files plus headers and padding
        assert pkg.installed_field >= pkg.total
        assert 0 < pkg.packed < pkg.installed_field


def test_offload_object_and_python_are_counted(built):
    pt = size_report.read_package([p for p in built if os.path.basename(p).startswith("passthrough_")][0])
    groups = {g: (n, b) for g, n, b in pt.groups()}
    obj = data_files(pt.path)["usr/lib/passthrough/offload.o"]
    assert groups["BPF object offload.o"] == (1, obj) and obj > 1000
    py = build_ipk.python_files(ROOT, "passthrough")
    assert groups["Python: passthrough/ (daemon, CLI, parsers, UCI)"][0] == len(py)
    assert groups["Python: nat/ (nftables, conntrack, BPF loader)"][0] == len(build_ipk.python_files(ROOT, "nat"))
    assert not [f for f in pt.files if f.endswith(".pyc")]  # the builder ships sources
    assert size_report.bytecode_size(pt.py_sources) > 0


def test_markdown_of_built_packages(built, capsys):
    assert size_report.main(built) == 0
    out = capsys.readouterr().out
    assert out.startswith("| package | files | count | bytes | KiB |")
    assert "| passthrough | BPF object offload.o | 1 |" in out
    assert "| **luci-app-passthrough** | **all files** |" in out
    total = sum(size_report.read_package(p).total for p in built)
    assert "| **all packages** | | " in out and " | **%d** |" % total in out
    npy = len(build_ipk.python_files(ROOT, "passthrough") + build_ipk.python_files(ROOT, "nat"))
    assert "* passthrough ships %d .py files" % npy in out and "and 0 .pyc files" in out


def _ipk(path, files, installed="1234"):
    """A minimal .ipk: the layout ipkg-build writes, with these data files."""
    def tgz(entries):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()
    control = ("Package: demo\nVersion: 1-1\nArchitecture: all\nInstalled-Size: %s\nDescription: x\n"
               % installed).encode()
    outer = {"./debian-binary": b"2.0\n", "./data.tar.gz": tgz({"./" + k: v for k, v in files.items()}),
             "./control.tar.gz": tgz({"./control": control})}
    with open(path, "wb") as f:
        f.write(tgz(outer))
    return str(path)


def test_unknown_files_go_to_other_and_no_bpf_row(tmp_path):
    ipk = _ipk(tmp_path / "demo_1-1_all.ipk", {"usr/lib/passthrough/nat/x.py": b"x = 1\n",
                                               "opt/blob": b"\0" * 100})
    pkg = size_report.read_package(ipk)
    assert pkg.name == "demo" and pkg.installed_field == 1234
    assert pkg.groups() == [("Python: nat/ (nftables, conntrack, BPF loader)", 1, 6), ("other", 1, 100)]
    assert "offload.o" not in size_report.markdown([pkg])


def test_bad_input_is_an_error(tmp_path, capsys):
    bad = tmp_path / "x.ipk"
    bad.write_bytes(b"not a package")
    assert size_report.main([str(bad)]) == 1
    assert "not an .ipk" in capsys.readouterr().err
    with pytest.raises(size_report.ReportError):
        size_report.read_package(str(tmp_path / "x.deb"))
