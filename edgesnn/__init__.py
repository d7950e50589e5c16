"""edgesnn: memory-lean training of spiking neural networks on edge devices."""

import os as _os

__version__ = "0.1.0"

# Source checkout: setuptools installs ``export/`` and ``devices/`` (beside this folder) as the
# sub-packages ``edgesnn.export`` and ``edgesnn.devices`` (package-dir in pyproject.toml). When
# this folder is imported straight from the checkout (``python -m edgesnn.export.runner`` in the
# repository root puts the root first on sys.path), let sub-package lookup also search the root
# so those two resolve to the same files. Installed copies (no pyproject.toml beside them) are
# untouched; nothing is imported or executed here.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(_os.path.join(_root, "export", "__init__.py")):
    __path__.append(_root)  # noqa: F821 - the package's search path
del _root


def __getattr__(name: str):
    # Lazy, so that ``import edgesnn`` (and the CLI's --help) does not import torch.
    if name == "optimize_memory":
        from .memopt import optimize_memory

        return optimize_memory
    if name == "checkpoint_over_time":
        from .memopt import checkpoint_over_time

        return checkpoint_over_time
    raise AttributeError(f"module 'edgesnn' has no attribute {name!r}")
