"""Device catalogue: every board loads, custom profiles, host measurement, clear errors."""

import json

import pytest

from edgesnn import devices


BOARDS = [
    "jetson-nano-4gb", "jetson-tx2-8gb", "jetson-xavier-nx-8gb", "jetson-agx-xavier-32gb",
    "jetson-orin-nano-4gb", "jetson-orin-nano-8gb", "jetson-orin-nx-8gb", "jetson-orin-nx-16gb",
    "jetson-agx-orin-32gb", "jetson-agx-orin-64gb",
    "raspberry-pi-4-4gb", "raspberry-pi-4-8gb", "raspberry-pi-5-4gb", "raspberry-pi-5-8gb",
]


@pytest.mark.parametrize("name", BOARDS)
def test_catalogue_profiles_load_and_are_consistent(name):
    d = devices.load_device(name)
    assert d.name == name
    assert d.memory_bytes >= 4 * 1024**3
    assert 0 < d.reserved_bytes < d.memory_bytes
    assert 0 < d.usable_bytes < d.memory_bytes
    assert d.bandwidth_gbs > 0 and d.cores >= 4
    assert d.sources, "every profile says where its figures come from"
    if name.startswith("jetson"):
        assert d.accelerator == "cuda" and d.compute_capability in {"5.3", "6.2", "7.2", "8.7"}
        # every torch for a Jetson is a CUDA build: its process baseline (600-698 MiB measured on the
        # CPU host) plus a CUDA context (~0.3 GB lazily loaded) at least; 0.6 GiB was the CPU build's
        assert d.runtime_overhead_bytes >= 600 * 2**20 + 0.3e9, d.runtime_overhead_bytes
    else:
        assert d.accelerator == "cpu" and d.compute_capability is None


def test_spec_figures():
    assert devices.load_device("jetson-nano-4gb").bandwidth_gbs == 25.6
    assert devices.load_device("jetson-orin-nano-8gb").compute_capability == "8.7"
    assert devices.load_device("jetson-agx-orin-64gb").bandwidth_gbs == 204.8
    assert devices.load_device("raspberry-pi-5-8gb").bandwidth_gbs == 17.0


def test_unknown_device_lists_available():
    with pytest.raises(ValueError) as err:
        devices.load_device("jetson-nano-2gb")
    msg = str(err.value)
    assert "jetson-nano-2gb" in msg and "jetson-orin-nano-8gb" in msg and "auto" in msg


def test_custom_profile_file_and_search_path(tmp_path, monkeypatch):
    prof = dict(name="myboard", memory_bytes=2 * 1024**3, reserved_bytes=300 * 1024**2,
                runtime_overhead_bytes=200 * 1024**2, bandwidth_gbs=10, cores=2)
    f = tmp_path / "myboard.json"
    f.write_text(json.dumps(prof))
    d = devices.load_device(str(f))
    assert d.usable_bytes == 2 * 1024**3 - 500 * 1024**2
    monkeypatch.setenv("EDGESNN_DEVICE_PATH", str(tmp_path))
    assert "myboard" in devices.list_devices()
    assert devices.load_device("myboard").memory_bytes == prof["memory_bytes"]


def test_invalid_profile_names_the_field(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(dict(name="bad", memory_bytes=1, reserved_bytes=0, runtime_overhead_bytes=0, cores=1)))
    with pytest.raises(ValueError, match="bandwidth_gbs"):
        devices.load_device(str(f))
    f.write_text(json.dumps(dict(name="bad", memory_bytes=-5, reserved_bytes=0, runtime_overhead_bytes=0,
                                 bandwidth_gbs=1, cores=1)))
    with pytest.raises(ValueError, match="memory_bytes"):
        devices.load_device(str(f))
    with pytest.raises(FileNotFoundError):
        devices.load_device(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("stem, needle", [("auto", "'auto' is reserved"), (" lead", "starts or ends with a space")])
def test_user_profiles_no_device_name_reaches_are_refused(tmp_path, monkeypatch, stem, needle):
    """auto.json was listed (auto twice) but --device auto measured the host without a word;
    ' lead.json' was listed as ' lead' while --device ' lead' and 'lead' were both unknown."""
    prof = dict(name=stem.strip(), memory_bytes=2 * 1024**3, reserved_bytes=300 * 1024**2,
                runtime_overhead_bytes=200 * 1024**2, bandwidth_gbs=10, cores=2)
    (tmp_path / f"{stem}.json").write_text(json.dumps(prof))
    monkeypatch.setenv("EDGESNN_DEVICE_PATH", str(tmp_path))
    for call in (devices.list_devices, lambda: devices.load_device("auto"), lambda: devices.load_device(stem)):
        with pytest.raises(ValueError, match=needle) as e:
            call()
        assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["my\nboard", "my\x1b[2Jboard", "tab\tboard"])
def test_a_profile_name_must_be_printable(tmp_path, name):
    """A newline in the name split the planner's one-line errors and its plan header; an escape
    sequence reached the terminal."""
    f = tmp_path / "p.json"
    f.write_text(json.dumps(dict(name=name, memory_bytes=2 * 1024**3, reserved_bytes=300 * 1024**2,
                                 runtime_overhead_bytes=200 * 1024**2, bandwidth_gbs=10, cores=2)))
    with pytest.raises(ValueError, match=r"name must be printable") as e:
        devices.load_device(str(f))
    assert "\n" not in str(e.value)


def test_auto_measures_host():
    d = devices.load_device("auto")
    info = {}
    for line in open("/proc/meminfo"):
        k, _, v = line.partition(":")
        info[k] = int(v.split()[0]) * 1024
    assert d.memory_bytes == info["MemTotal"]
    # MemAvailable moves between reads; the budget is what is free now
    assert abs((d.memory_bytes - d.reserved_bytes) - info["MemAvailable"]) < 512 * 1024**2
    assert d.cores >= 1


@pytest.mark.parametrize("name", BOARDS)
def test_catalogue_profiles_say_what_runs_there(name):
    d = devices.load_device(name)
    assert d.os and d.python and d.python.count(".") == 1
    assert set(d.runs) == set(devices.RUNS_KEYS)
    assert all(d.runs[k] in (True, False, None) for k in ("planner", "training", "training_gpu", "cuda_kernels"))
    assert d.runs["notes"] and d.runs["device_runner"]
    # edgesnn needs Python >= 3.10 (torch 2.13): nothing of it runs on an older default Python
    if tuple(int(p) for p in d.python.split(".")) < (3, 10):
        assert not any(d.runs[k] for k in ("planner", "training", "training_gpu", "cuda_kernels"))
    if name.startswith("jetson"):
        assert d.cuda is not None
        if not d.cuda.startswith("12."):  # the numba-cuda 0.30 kernels are built for CUDA 12
            assert d.runs["cuda_kernels"] is False
    else:
        assert d.cuda is None and d.runs["cuda_kernels"] is False and d.runs["training_gpu"] is False


def test_runs_field_is_validated(tmp_path):
    base = dict(name="b", memory_bytes=2 * 1024**3, reserved_bytes=0, runtime_overhead_bytes=0, bandwidth_gbs=1, cores=1)
    f = tmp_path / "b.json"
    f.write_text(json.dumps(dict(base, runs={"planner": "yes"})))
    with pytest.raises(ValueError, match="runs.planner"):
        devices.load_device(str(f))
    f.write_text(json.dumps(dict(base, runs={"plan": True})))
    with pytest.raises(ValueError, match="unknown key"):
        devices.load_device(str(f))
    f.write_text(json.dumps(dict(base, cuda=12.6)))
    with pytest.raises(ValueError, match="cuda"):
        devices.load_device(str(f))
    f.write_text(json.dumps(base))  # all four fields are optional for user profiles
    d = devices.load_device(str(f))
    assert d.os == "" and d.cuda is None and d.runs == {}


def test_auto_counts_a_cuda_builds_libraries(monkeypatch):
    """A CUDA build of torch loads its CUDA libraries with ``import torch``, GPU or not: on the
    2-core host 0.28-0.38 GiB more RSS than the CPU build (the 317 MiB the planner assumed for every
    host), so plans on such an install under-predicted every peak by that much (validate_planner
    on torch 2.15.0+cu132: 35-48% low; with the build's overhead within 4.4%)."""
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)
    assert devices.torch_runtime_overhead()[0] == devices.DEFAULT_CPU_RUNTIME_OVERHEAD
    assert devices.load_device("auto").runtime_overhead_bytes == devices.DEFAULT_CPU_RUNTIME_OVERHEAD
    monkeypatch.setattr(torch.version, "cuda", "13.2")
    ovh, source = devices.torch_runtime_overhead()
    assert ovh == devices.DEFAULT_CUDA_BUILD_RUNTIME_OVERHEAD > devices.DEFAULT_CPU_RUNTIME_OVERHEAD + 256 * 1024**2
    assert "CUDA 13.2" in source
    d = devices.load_device("auto")
    assert d.runtime_overhead_bytes == ovh and d.sources["runtime_overhead_bytes"] == source
    assert devices.host_profile(123).runtime_overhead_bytes == 123  # an explicit value still wins
