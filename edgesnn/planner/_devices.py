"""Import ``edgesnn.devices`` both when installed and from a source checkout.

The installed package maps ``edgesnn.devices`` to the repository's top-level ``devices/`` folder
(pyproject ``package-dir``); running from the checkout with ``PYTHONPATH=.`` has no such mapping,
so the folder is loaded under that name here.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path


def load_devices_module():
    """The ``edgesnn.devices`` module."""
    try:
        return importlib.import_module("edgesnn.devices")
    except ModuleNotFoundError:
        init = Path(__file__).resolve().parents[2] / "devices" / "__init__.py"
        if not init.is_file():
            raise
        spec = importlib.util.spec_from_file_location("edgesnn.devices", init, submodule_search_locations=[str(init.parent)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["edgesnn.devices"] = mod
        spec.loader.exec_module(mod)
        import edgesnn

        edgesnn.devices = mod
        return mod
