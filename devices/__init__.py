"""Device catalogue: memory, reserved memory, bandwidth and cores of edge boards (``edgesnn.devices``).

Each profile is a JSON file in this package (one per board) with the fields of
:class:`DeviceProfile`. Users add their own boards by passing a path to a JSON file with the same
fields (``load_device("my_board.json")``) or by putting such files in a directory named by the
environment variable ``EDGESNN_DEVICE_PATH`` (``os.pathsep``-separated list of directories).
``load_device("auto")`` measures the host: ``MemAvailable`` from ``/proc/meminfo`` and the number
of usable cores. A key that is not a field (a misspelt optional one would silently be its default)
is refused in one line naming it and the closest field, at the top and in ``runs``, and so is a key
written twice in one object; keys starting with ``_`` (``"_comment"``) are comments, and
``sources`` keys are free text (:mod:`edgesnn.json_keys`).

Memory the planner may use (bytes)::

    usable = memory_bytes - reserved_bytes - runtime_overhead_bytes

``reserved_bytes`` is what the OS and services hold; ``runtime_overhead_bytes`` what the training
process holds before it allocates a tensor of its own (libraries, CUDA context, allocator pools).

What runs on the board (optional fields, set in every built-in profile): ``os`` (the OS / JetPack
release the profile assumes), ``python`` (its default Python), ``cuda`` (its CUDA version, or
``None``) and ``runs``, a mapping with the keys of :data:`RUNS_KEYS`: ``planner``, ``training``
(CPU backends), ``training_gpu`` (torch on the board's GPU) and ``cuda_kernels``
(``backend="cuda"``) are ``True`` / ``False`` / ``None`` (``None``: possible but unverified, see
``notes``), for that OS with its default Python; ``device_runner`` and ``notes`` are text. edgesnn
needs Python >= 3.10 and torch >= 2.5, and ``edgesnn plan`` imports torch, so on boards whose OS
cannot install them (JetPack 4 and 5) plan on a host: ``edgesnn plan --device <board>``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..json_keys import DuplicateKeyError, check_keys, loads_unique

__all__ = ["DeviceProfile", "list_devices", "load_device", "profile_path", "host_profile", "torch_runtime_overhead",
           "DEFAULT_CPU_RUNTIME_OVERHEAD", "DEFAULT_CUDA_BUILD_RUNTIME_OVERHEAD", "RUNS_KEYS"]

_HERE = Path(__file__).resolve().parent
GiB = 1024**3

#: RSS of a fresh CPU training process after ``import torch, edgesnn`` and one tiny training step,
#: measured on the 2-core x86 host (torch 2.13 CPU wheel, torch backend): about 317 MiB (see
#: ``tools/validate_planner.py --calibrate``).
DEFAULT_CPU_RUNTIME_OVERHEAD = 317 * 1024**2
#: The same for a CUDA build of torch, GPU or not: the build's CUDA libraries (cuBLAS, NVRTC,
#: nvJitLink, libtorch_cuda, ...) load with ``import torch``. Measured on the same host without a
#: GPU: 600.5 MiB (torch 2.8.0+cu128), 698.1 MiB (2.15.0+cu132); the larger one. PyPI's default
#: torch wheels for x86-64 and aarch64 Linux are such builds.
DEFAULT_CUDA_BUILD_RUNTIME_OVERHEAD = 698 * 1024**2

_REQUIRED = ("name", "memory_bytes", "reserved_bytes", "runtime_overhead_bytes", "bandwidth_gbs", "cores")

#: Accepted ranges of a profile's integer fields (inclusive). 2**50 bytes (1 PiB) keeps every byte
#: count the planner derives exactly representable as a float64 (< 2**53).
_INT_RANGES = {"memory_bytes": (1, 2**50), "reserved_bytes": (0, 2**50), "runtime_overhead_bytes": (0, 2**50),
               "cores": (1, 65536)}
#: Accepted DRAM bandwidth in GB/s (1 MB/s .. 100 TB/s): it only scales the predicted time, which must stay finite.
_BANDWIDTH_RANGE = (0.001, 100000.0)

#: Keys of ``DeviceProfile.runs``: tri-state flags (True / False / None = unverified) and text.
RUNS_FLAGS = ("planner", "training", "training_gpu", "cuda_kernels")
RUNS_TEXT = ("device_runner", "notes")
RUNS_KEYS = RUNS_FLAGS + RUNS_TEXT


@dataclass(frozen=True)
class DeviceProfile:
    """One board.

    Attributes:
        name: catalogue key, e.g. ``"jetson-orin-nano-8gb"``.
        memory_bytes: physical memory (bytes); on Jetson and Raspberry Pi CPU and GPU share it.
        reserved_bytes: held by the OS, services and firmware carve-outs (bytes).
        runtime_overhead_bytes: the training process before any tensor of its own (bytes):
            framework libraries, CUDA context.
        bandwidth_gbs: peak DRAM bandwidth (GB/s, 1e9 bytes per second).
        cores: CPU cores.
        compute_capability: CUDA compute capability (``"8.7"``) or ``None`` without a CUDA GPU.
        accelerator: ``"cuda"`` or ``"cpu"``.
        description, kind, cpu, software: free text. sources: where each figure comes from.
        unified_memory: whether CPU and GPU share ``memory_bytes`` (Jetson, Raspberry Pi).
        os: OS / JetPack release the profile assumes, e.g. ``"JetPack 6.1/6.2 (L4T R36.4, ...)"``.
        python: that OS's default Python (``"3.10"``). cuda: its CUDA version (``"12.6"``) or ``None``.
        runs: what of edgesnn runs there with that Python (keys :data:`RUNS_KEYS`; see the module doc).

    Constructing one checks ``name``, the integer fields (ranges of ``_INT_RANGES``; reserved +
    runtime overhead below memory, so ``usable_bytes > 0``) and ``accelerator`` in one-line
    ``ValueError`` s naming the field; :meth:`from_dict` (profile files) checks every field.
    """

    name: str
    memory_bytes: int
    reserved_bytes: int
    runtime_overhead_bytes: int
    bandwidth_gbs: float
    cores: int
    compute_capability: Optional[str] = None
    accelerator: str = "cpu"
    description: str = ""
    kind: str = "custom"
    cpu: str = ""
    software: str = ""
    unified_memory: bool = True
    sources: Dict[str, str] = field(default_factory=dict)
    os: str = ""
    python: str = ""
    cuda: Optional[str] = None
    runs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_core(dict(name=self.name, memory_bytes=self.memory_bytes, reserved_bytes=self.reserved_bytes,
                         runtime_overhead_bytes=self.runtime_overhead_bytes, cores=self.cores,
                         accelerator=self.accelerator),
                    f"DeviceProfile {self.name!r}")

    @property
    def usable_bytes(self) -> int:
        """Bytes left for the model's static and activation memory."""
        return self.memory_bytes - self.reserved_bytes - self.runtime_overhead_bytes

    def to_dict(self) -> Dict[str, Any]:
        """The profile's fields as a plain dict (field name -> value; sizes in bytes, bandwidth in GB/s)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], origin: str = "<dict>") -> "DeviceProfile":
        """Build and validate a profile; errors name the file and the field."""
        if not isinstance(data, dict):
            raise ValueError(f"device: {origin} must hold a JSON object")

        def unknown(path: str, detail: str) -> ValueError:  # a misspelt optional field would be its default
            return ValueError(f"device: {origin}: {path}: {detail}")

        check_keys(data, cls.__dataclass_fields__, "", unknown)  # no field was ever renamed or dropped
        check_keys(data.get("runs"), RUNS_KEYS, "runs", unknown)  # ``sources`` keys are free text
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"device: {origin} lacks field(s) {missing}; required: {list(_REQUIRED)}")
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in known}
        _check_core(kwargs, origin)
        bw = kwargs["bandwidth_gbs"]
        low, high = _BANDWIDTH_RANGE
        if not isinstance(bw, (int, float)) or isinstance(bw, bool) or not (math.isfinite(bw) and low <= bw <= high):
            raise ValueError(f"device: {origin}: bandwidth_gbs must be a number of GB/s from {low} to {high}, got {bw!r}")
        kwargs["bandwidth_gbs"] = float(bw)
        for k in ("description", "kind", "cpu", "software"):
            if not isinstance(kwargs.get(k, ""), str):
                raise ValueError(f"device: {origin}: {k} must be a string, got {kwargs[k]!r}")
        if kwargs.get("compute_capability") is not None and not isinstance(kwargs["compute_capability"], str):
            raise ValueError(f"device: {origin}: compute_capability must be a string (\"8.7\") or null, "
                             f"got {kwargs['compute_capability']!r}")
        if not isinstance(kwargs.get("unified_memory", True), bool):
            raise ValueError(f"device: {origin}: unified_memory must be true or false, got {kwargs['unified_memory']!r}")
        sources = kwargs.get("sources", {})
        if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
            raise ValueError(f"device: {origin}: sources must be a JSON object of strings, got {sources!r}")
        for k in ("os", "python"):
            if not isinstance(kwargs.get(k, ""), str):
                raise ValueError(f"device: {origin}: {k} must be a string, got {kwargs[k]!r}")
        if kwargs.get("cuda") is not None and not isinstance(kwargs["cuda"], str):
            raise ValueError(f"device: {origin}: cuda must be a version string (\"12.6\") or null, got {kwargs['cuda']!r}")
        runs = kwargs.get("runs", {})
        if not isinstance(runs, dict):
            raise ValueError(f"device: {origin}: runs must be a JSON object, got {runs!r}")
        for k in RUNS_FLAGS:
            if k in runs and runs[k] is not None and not isinstance(runs[k], bool):
                raise ValueError(f"device: {origin}: runs.{k} must be true, false or null, got {runs[k]!r}")
        for k in RUNS_TEXT:
            if k in runs and not isinstance(runs[k], str):
                raise ValueError(f"device: {origin}: runs.{k} must be a string, got {runs[k]!r}")
        if "runs" in kwargs:
            kwargs["runs"] = {k: v for k, v in runs.items() if k in RUNS_KEYS}  # without "_..." comments
        return cls(**kwargs)


def _check_core(kwargs: Dict[str, Any], origin: str) -> None:
    """``name``, the integer fields and ``accelerator`` (what ``usable_bytes`` and the planner rely on)."""
    name = kwargs["name"]
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"device: {origin}: name must be a non-empty string, got {name!r}")
    if not name.isprintable():  # a newline split the errors and the plan header that show it
        raise ValueError(f"device: {origin}: name must be printable (no newline, tab or control character), got {name!r}")
    for k, (low, high) in _INT_RANGES.items():
        v = kwargs.get(k, 1)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise ValueError(f"device: {origin}: {k} must be an integer from {low} to {high}, got {v!r}")
    if kwargs["reserved_bytes"] >= kwargs["memory_bytes"]:
        verb = "exceeds" if kwargs["reserved_bytes"] > kwargs["memory_bytes"] else "equals"
        raise ValueError(f"device: {origin}: reserved_bytes ({kwargs['reserved_bytes']}) {verb} memory_bytes "
                         f"({kwargs['memory_bytes']}); it must be smaller")
    if kwargs["reserved_bytes"] + kwargs["runtime_overhead_bytes"] >= kwargs["memory_bytes"]:
        raise ValueError(f"device: {origin}: reserved_bytes + runtime_overhead_bytes "
                         f"({kwargs['reserved_bytes'] + kwargs['runtime_overhead_bytes']}) leave nothing of "
                         f"memory_bytes ({kwargs['memory_bytes']}); they must be smaller")
    acc = kwargs.get("accelerator", "cpu")
    if not isinstance(acc, str):
        raise ValueError(f"device: {origin}: accelerator must be a string (\"cuda\" or \"cpu\"), got {acc!r}")
    if acc not in ("cuda", "cpu"):
        raise ValueError(f"device: {origin}: accelerator must be \"cuda\" or \"cpu\", got {acc!r}")


def _search_dirs() -> List[Path]:
    extra = [Path(p) for p in os.environ.get("EDGESNN_DEVICE_PATH", "").split(os.pathsep) if p]
    return [_HERE] + extra


def _catalogue() -> Dict[str, Path]:
    """Catalogue key (the file stem, lower-cased) -> profile file.

    A later directory overrides an earlier one (``EDGESNN_DEVICE_PATH`` overrides the built-in
    profiles); two files of one directory whose names differ only in case are refused, and so are
    ``auto.json`` and a name with a space at its start or end (no ``--device`` value reaches them).
    """
    found: Dict[str, Path] = {}
    for d in _search_dirs():
        if not d.is_dir():
            continue
        here: Dict[str, Path] = {}
        for f in sorted(d.glob("*.json")):
            if not f.is_file():
                continue
            key = f.stem.lower()
            if key == "auto" or key != key.strip():  # unreachable by name: --device strips and takes auto first
                why = ("'auto' is reserved (--device auto measures this machine)" if key == "auto" else
                       "its name starts or ends with a space")
                raise ValueError(f"device: {f}: {why}; rename or remove it")
            if key in here:
                raise ValueError(f"device: {here[key]} and {f} name the same device {key!r} (names are not "
                                 "case-sensitive); rename or remove one")
            here[key] = f
        found.update(here)
    return found


def list_devices() -> List[str]:
    """Names of all catalogued profiles (built-in and ``EDGESNN_DEVICE_PATH``, lower-cased), plus ``"auto"``."""
    return sorted(_catalogue()) + ["auto"]


def _read_meminfo() -> Dict[str, int]:
    out: Dict[str, int] = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * 1024
    return out


def _host_bandwidth_gbs() -> float:
    """A nominal 32 GB/s (the 2-core x86 host, docs/design.md §5); only scales time."""
    return 32.0


def _host_os() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def torch_runtime_overhead() -> Tuple[int, str]:
    """``(bytes, source)``: the runtime overhead of a training process with the PyTorch build this
    process has loaded: :data:`DEFAULT_CUDA_BUILD_RUNTIME_OVERHEAD` for a CUDA build (381 MiB, about
    0.37 GiB, more RSS than a CPU build, a GPU or not), else :data:`DEFAULT_CPU_RUNTIME_OVERHEAD` (also when
    torch is not imported: this module never imports it)."""
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    if cuda:
        return (DEFAULT_CUDA_BUILD_RUNTIME_OVERHEAD,
                f"measured baseline of a CUDA build of torch (CUDA {cuda}; its libraries load with torch, a GPU or not; "
                "DEFAULT_CUDA_BUILD_RUNTIME_OVERHEAD)")
    return DEFAULT_CPU_RUNTIME_OVERHEAD, "measured torch CPU process baseline (DEFAULT_CPU_RUNTIME_OVERHEAD)"


def host_profile(runtime_overhead_bytes: Optional[int] = None) -> DeviceProfile:
    """Measure this machine: ``memory_bytes = MemTotal``, reserved = ``MemTotal - MemAvailable``.

    ``runtime_overhead_bytes``: the training process's own bytes (an int >= 0; a bad value is a
    one-line ``ValueError`` naming it); ``None``: :func:`torch_runtime_overhead`, by the loaded
    PyTorch build (a CUDA build's libraries cost 381 MiB more).

    The planner then budgets against memory that is free right now (``MemAvailable``), which on
    Jetson (unified memory) is also the right figure for the GPU (docs/design.md §5).
    """
    source = "given by the caller"
    if runtime_overhead_bytes is None:
        runtime_overhead_bytes, source = torch_runtime_overhead()
    v = runtime_overhead_bytes
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"runtime_overhead_bytes: expected an integer number of bytes >= 0, got {v!r}")
    info = _read_meminfo()
    total, avail = info.get("MemTotal"), info.get("MemAvailable")
    if not total or avail is None:
        raise RuntimeError("device 'auto': /proc/meminfo lacks MemTotal/MemAvailable (Linux only)")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return DeviceProfile(
        name="auto", memory_bytes=total, reserved_bytes=total - avail, runtime_overhead_bytes=runtime_overhead_bytes,
        bandwidth_gbs=_host_bandwidth_gbs(), cores=cores, accelerator="cpu", kind="host",
        os=_host_os(), python=platform.python_version(),
        description=f"this host: MemAvailable {avail / GiB:.2f} GiB of {total / GiB:.2f} GiB, {cores} cores",
        sources={"memory_bytes": "/proc/meminfo MemTotal", "reserved_bytes": "MemTotal - MemAvailable (measured now)",
                 "runtime_overhead_bytes": source},
    )


def profile_path(name: Union[str, os.PathLike]) -> Optional[Path]:
    """The JSON file that :func:`load_device` reads for ``name`` (a catalogue name or a path), or
    ``None`` for ``"auto"`` (the host, measured). Raises as :func:`load_device` does for a name
    that is not a string or path, an unknown name, a missing file or a directory."""
    return _resolve(name)[0]


def _resolve(name: Union[str, os.PathLike]) -> Tuple[Optional[Path], Optional[str]]:
    """``(profile file, catalogue key)`` for a ``--device`` value: ``(None, None)`` for ``"auto"``,
    the key ``None`` for a path (a profile loaded by path may name itself anything)."""
    if isinstance(name, bytes) or not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"device: expected a catalogue name (e.g. 'raspberry-pi-4-4gb'), 'auto' or a path to a JSON "
                         f"profile, got {name!r}")
    text = os.fspath(name)
    if not isinstance(text, str):
        raise ValueError(f"device: expected a str path to a JSON profile, got {name!r}")
    if text.strip().lower() == "auto":
        _catalogue()  # (refuses a user's auto.json, which would otherwise be ignored without a word)
        return None, None
    cat = None  # the catalogue, listed once (a path with a separator or .json needs none)
    looks_like_path = text.endswith(".json") or os.sep in text or bool(os.altsep and os.altsep in text)
    if not looks_like_path:
        cat = _catalogue()
        looks_like_path = text.strip().lower() not in cat and os.path.lexists(text)  # `--device .`, a file
    if looks_like_path:
        path = Path(text)
        if path.is_dir():
            raise IsADirectoryError(f"device: {path} is a directory; expected a JSON profile file or a catalogue name")
        if not path.is_file():
            stem = path.name[:-5].strip().lower() if path.name.lower().endswith(".json") else ""
            hint = (f"; for the catalogued profile give its name without .json: {stem!r}"
                    if stem and path.parent == Path(".") and stem in _catalogue() else "")
            raise FileNotFoundError(f"device: no such profile file: {path}{hint}")
        return path, None
    key = text.strip().lower()  # (not a path: ``cat`` was listed above)
    if key not in cat:
        raise ValueError(f"device: unknown device {text!r}; available: {', '.join(list_devices())} "
                         "(or a path to a JSON profile)")
    return cat[key], key


def load_device(name: Union[str, os.PathLike]) -> DeviceProfile:
    """A profile by catalogue name, ``"auto"`` (measure the host), or a path to a JSON profile.

    A catalogued profile's ``name`` must be its catalogue key (its file name without ``.json``,
    case aside); a profile loaded by path may name itself anything.

    Raises:
        ValueError: ``name`` neither a string nor a path; unknown name (the message lists the
            available ones; names are not case-sensitive); an unreadable or invalid profile; a
            catalogued profile whose ``name`` differs from its file name.
        FileNotFoundError: a path that does not exist (a catalogue name written with ``.json``
            is told to drop it). IsADirectoryError: a path to a directory.
    """
    path, key = _resolve(name)
    if path is None:
        return host_profile()
    try:
        data = loads_unique(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as exc:
        raise ValueError(f"device: {path}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"device: {path} is not valid UTF-8 JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; arrays nested thousands deep
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:80]
        raise ValueError(f"device: {path} is not a device profile edgesnn can read ({first})") from None
    except OSError as exc:
        raise ValueError(f"device: cannot read {path} ({exc.strerror or exc})") from None
    profile = DeviceProfile.from_dict(data, origin=str(path))
    if key is not None and profile.name.strip().lower() != key:
        raise ValueError(f"device: {path}: name {profile.name!r} differs from the file name {path.stem!r} (the "
                         "catalogue key); make them the same")
    return profile
