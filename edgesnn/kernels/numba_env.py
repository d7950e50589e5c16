"""Process-wide settings shared by the kernel configuration: once-per-process warnings that point
at the user's line, and exporting a ``NUMBA_*`` setting without dropping ones made in code."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Hashable

_WARNED: set = set()  # keys of the warnings already given (each is given once per process)

_LIBRARY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the edgesnn package


def _warn_once(key: Hashable, message: str) -> None:
    """Warn (``RuntimeWarning``) once per process per ``key``, attributed to the first caller
    outside edgesnn, the import machinery, torch and numba (the user's line, not a library one)."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    prefixes = [_LIBRARY_DIR + os.sep, "<frozen importlib"]
    for name in ("torch", "numba"):
        module_file = getattr(sys.modules.get(name), "__file__", None)
        if module_file:
            prefixes.append(os.path.dirname(module_file) + os.sep)
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(tuple(prefixes)):
        frame = frame.f_back
        if frame is not None and not _import_internal(frame.f_code.co_filename):
            level += 1  # warnings.warn does not count the import machinery's frames
    warnings.warn(message, RuntimeWarning, stacklevel=level if frame is not None else 2)


def _import_internal(filename: str) -> bool:
    """A frame that ``warnings.warn`` skips when it counts ``stacklevel`` (the import machinery)."""
    return "importlib" in filename and "_bootstrap" in filename


def _export_numba_setting(env_name: str, attr: str, value: str) -> None:
    """Export ``env_name=value`` (read by Numba at import, and by child processes) and, when Numba
    is already imported, set ``numba.config.<attr>``. Numba's compiler re-reads every ``NUMBA_*``
    variable when it sees one change, which would drop the settings a user made in code
    (``numba.config.THREADING_LAYER = ...``): the new value is recorded as already seen."""
    os.environ[env_name] = value
    nb_config = sys.modules.get("numba.core.config")
    if nb_config is None:
        return
    setattr(nb_config, attr, value)
    seen = getattr(getattr(nb_config, "_env_reloader", None), "old_environ", None)
    if isinstance(seen, dict):
        seen[env_name] = value
