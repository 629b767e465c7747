"""Run the pure-core unit tests under MicroPython (also works under CPython).

    micropython tests/mpy/run.py [-v] [NAME_SUBSTRING ...]

A module tests/unit/test_*.py takes part when its first line is exactly `# micropython: run`.
Such a module uses plain `def test_*():` functions with bare asserts, no pytest, and imports
only pure modules. Every test_* function of every such module is called; the closing line is
"N passed, M failed" and the exit status is nonzero on any failure or when nothing ran.
"""
import os
import sys

MARKER = "# micropython: run"


def _normpath(path):
    if not path.startswith("/"):
        path = os.getcwd() + "/" + path
    parts = []
    for p in path.split("/"):
        if p == "" or p == ".":
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/" + "/".join(parts)


def _dirname(path):
    i = path.rfind("/")
    return path[:i] if i > 0 else "/"


def _print_exc(e):
    if hasattr(sys, "print_exception"):  # MicroPython
        sys.print_exception(e, sys.stdout)
    else:
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stdout)


def discover(unit_dir):
    names = []
    for fn in sorted(os.listdir(unit_dir)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        with open(unit_dir + "/" + fn) as f:
            first = f.readline()
        if first.strip() == MARKER:
            names.append(fn[:-3])
    return names


def main(argv):
    verbose = "-v" in argv
    wanted = [a for a in argv if not a.startswith("-")]
    script = sys.argv[0] if sys.argv and sys.argv[0] else "tests/mpy/run.py"
    root = _dirname(_dirname(_dirname(_normpath(script))))
    unit_dir = root + "/tests/unit"
    for p in (unit_dir, root):
        if p not in sys.path:
            sys.path.insert(0, p)
    impl = sys.implementation.name
    passed = 0
    failed = 0
    modules = discover(unit_dir)
    if wanted:
        modules = [m for m in modules if any(w in m for w in wanted)]
    print("%s: %d module(s) marked '%s' in %s" % (impl, len(modules), MARKER, unit_dir))
    for name in modules:
        try:
            mod = __import__(name)
        except Exception as e:
            failed += 1
            print("FAIL %s (import): %r" % (name, e))
            _print_exc(e)
            continue
        tests = [a for a in sorted(dir(mod)) if a.startswith("test_")]
        mod_failed = 0
        for attr in tests:
            fn = getattr(mod, attr)
            if not callable(fn):
                continue
            try:
                fn()
            except Exception as e:  # AssertionError included
                failed += 1
                mod_failed += 1
                print("FAIL %s.%s: %r" % (name, attr, e))
                _print_exc(e)
                continue
            passed += 1
            if verbose:
                print("ok   %s.%s" % (name, attr))
        print("%-32s %d tests, %d failed" % (name, len(tests), mod_failed))
    print("%d passed, %d failed" % (passed, failed))
    if failed or not passed:
        if not passed:
            print("no test ran")
        sys.exit(1)


main(sys.argv[1:])
