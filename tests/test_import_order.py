"""Import order: every module of the distribution imports first in a process of its own (moved out of
tests/test_numerics_safety.py, whose section 6 it was)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules():
    """Every module of the distribution by its installed name (``export/`` and ``devices/`` install as
    ``edgesnn.export`` and ``edgesnn.devices``), ``__main__`` aside (importing it runs the CLI)."""
    out = []
    for folder, prefix in (("edgesnn", "edgesnn"), ("export", "edgesnn.export"), ("devices", "edgesnn.devices")):
        for dirpath, dirnames, names in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            pkg = prefix if rel == "." else prefix + "." + rel.replace(os.sep, ".")
            for name in sorted(names):
                if name.endswith(".py") and name != "__main__.py":
                    out.append(pkg if name == "__init__.py" else pkg + "." + name[:-3])
    return out


#: Imports each module named on its command line first, in a child forked from a process that has
#: imported only torch and NumPy (not edgesnn, not Numba: the kernels configure Numba before its first
#: import), two children at a time. A fresh interpreter per module cost ~4 s each in importing torch.
#: A module that fails because an optional third-party package is not installed (e.g. numba-cuda on
#: the newest-PyTorch CI leg) is listed as ``missing:``; the kernels and functional core must import.
_IMPORT_FIRST = r"""
import importlib, importlib.util, os, sys
import numpy, torch  # noqa: F401
assert not any(m == "numba" or m.startswith(("numba.", "edgesnn")) for m in sys.modules), "parent imported too much"
bad, running = [], {}

def reap():
    pid, status = os.wait()
    mod, r = running.pop(pid)
    with os.fdopen(r) as fh:
        msg = fh.read().strip()
    if status:
        bad.append(f"{mod}: {msg or status}")
    elif msg:
        print(f"missing: {mod}: {msg}")

for mod in sys.argv[1:]:
    while len(running) >= 2:
        reap()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code, msg = 0, ""
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            optional = e.name and not e.name.startswith("edgesnn") and importlib.util.find_spec(e.name.split(".")[0]) is None
            core = mod.startswith(("edgesnn.kernels", "edgesnn.functional"))
            code, msg = (0 if optional and not core else 1), f"{type(e).__name__}: {e}"
        except BaseException as e:
            code, msg = 1, f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
        os.write(w, msg.encode()[:2000])
        os._exit(code)
    os.close(w)
    running[pid] = (mod, r)
while running:
    reap()
print("\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    """No module depends on another edgesnn module having been imported before it (import cycles,
    import-time order): each is imported first in a process of its own."""
    mods = _modules()
    assert {"edgesnn.kernels.numba_revlif", "edgesnn.export.step_runner", "edgesnn.devices", "edgesnn.nir.chain"} <= set(mods)
    assert len(mods) > 100
    r = subprocess.run([sys.executable, "-c", _IMPORT_FIRST, *mods], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
