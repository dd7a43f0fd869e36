"""Engine profiles, cache keys and the engine cache, without TensorRT or a GPU (these need neither).

Tests named test_fake_trt_* run the build code against a stand-in `tensorrt` module that records calls: they check
edgeclip's call order and messages and prove nothing about TensorRT itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeclip.engines import cache
from edgeclip.engines.build import BuildOptions, GiB, MiB, default_workspace
from edgeclip.engines.keys import EngineKey, key_differences, make_key
from edgeclip.engines.profiles import (
    Profile,
    Range,
    default_profiles,
    largest_batch,
    parse_profiles,
    profile_for,
    profiles_text,
)
from edgeclip.errors import InputError

SHA = "ab" * 32


def _key(**changes: object) -> EngineKey:
    fields: dict[str, object] = dict(
        tower="image", precision="fp16", graph_sha256=SHA, profiles="1:1:1,1:8:32", tensorrt="10.3.0",
        gpu="Orin", compute_capability="8.7", jetson_module="NVIDIA Jetson Orin Nano Developer Kit",
    )  # fmt: skip
    fields.update(changes)
    return EngineKey(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ profiles


def test_default_profiles_are_a_latency_and_a_throughput_profile() -> None:
    image = default_profiles("image")
    assert profiles_text(image) == "1:1:1,1:8:32"
    text = default_profiles("text", 77)
    assert profiles_text(text) == "1:1:1x1:77:77,1:8:32x1:77:77"
    assert text[1].shapes(("batch", "length")) == ((1, 1), (8, 77), (32, 77))
    assert image[1].shapes(("batch", 3, 224, 224)) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))


def test_profiles_from_cli_strings() -> None:
    got = parse_profiles(["image=1:1:1,2:16:64", "text=1:1:1x1:16:32,4"], context_length=32)
    assert got["image"] == (Profile(Range(1, 1, 1)), Profile(Range(2, 16, 64)))
    assert got["text"] == (Profile(Range(1, 1, 1), Range(1, 16, 32)), Profile(Range(4, 4, 4), Range(1, 32, 32)))
    assert parse_profiles([], context_length=32) == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("image", "is not TOWER=RANGES"),
        ("audio=1:1:1", "is not TOWER=RANGES"),
        ("image=1:2", "is not min:opt:max"),
        ("image=8:4:16", "must have 1 <= min <= opt <= max"),
        ("image=0:1:1", "must have 1 <= min <= opt <= max"),
        ("image=1:1:1x1:2:3", "only text profiles do"),
        ("text=1:1:1x1:77:77", "goes past the bundle's context length 32"),
    ],
)
def test_bad_profile_strings_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_profiles([spec], context_length=32)


def test_a_tower_named_twice_is_refused() -> None:
    with pytest.raises(InputError, match="names the image tower twice"):
        parse_profiles(["image=1", "image=8"], context_length=32)


def test_profile_choice_by_batch_size() -> None:
    profiles = default_profiles("text", 32)
    assert profile_for(profiles, 1, 10) == 0  # the latency profile for one row
    assert profile_for(profiles, 8, 32) == 1
    assert profile_for(profiles, 33, 5) is None
    assert largest_batch(profiles, 5) == 32
    only_big = (Profile(Range(8, 8, 32)),)
    assert profile_for(only_big, 3) is None


# ------------------------------------------------------------------ keys


def test_key_digest_is_stable_and_covers_every_field() -> None:
    base = _key()
    assert base.digest() == _key().digest()
    assert base.dirname().startswith("image-fp16-") and len(base.dirname()) == len("image-fp16-") + 16
    changes: dict[str, object] = {
        "graph_sha256": "cd" * 32, "precision": "int8", "profiles": "1:1:1", "tensorrt": "11.4.1",
        "gpu": "NVIDIA H200", "compute_capability": "9.0", "jetson_module": "", "dla_core": 0,
        "version_compatible": True, "hardware_compatible": True,
    }  # fmt: skip
    digests = {_key(**{name: value}).digest() for name, value in changes.items()}
    assert len(digests) == len(changes) and base.digest() not in digests
    assert EngineKey.from_dict(json.loads(json.dumps(base.to_dict()))) == base


def test_key_differences_say_what_changed() -> None:
    found = _key()
    wanted = _key(tensorrt="11.4.1", gpu="NVIDIA H200", compute_capability="9.0", jetson_module="")
    diffs = key_differences(found, wanted)
    assert "the TensorRT version: built for 10.3.0, this is 11.4.1" in diffs
    assert "the GPU: built for Orin, this is NVIDIA H200" in diffs
    assert "the compute capability: built for 8.7, this is 9.0" in diffs
    assert "the Jetson module: built for NVIDIA Jetson Orin Nano Developer Kit, this is none" in diffs
    assert key_differences(found, found) == []


def test_make_key_from_profiles_and_device_fields() -> None:
    device = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "jetson_module": "Jetson AGX Orin"}
    key = make_key("text", "int8", SHA, default_profiles("text", 32), device, dla_core=1)
    assert key.profiles == "1:1:1x1:32:32,1:8:32x1:32:32"
    assert key.where() == "TensorRT 10.3.0 on Orin (sm 8.7, Jetson AGX Orin, DLA 1)"


# ------------------------------------------------------------------ workspace


def test_workspace_default_fits_small_devices() -> None:
    assert default_workspace(None) == 1 * GiB
    assert default_workspace(80 * GiB) == 1 * GiB  # a desktop GPU: the same 1 GiB
    assert default_workspace(2 * GiB) == 512 * MiB  # a loaded Orin Nano: a quarter of what is free
    assert default_workspace(100 * MiB) == 128 * MiB  # never below the floor


def test_build_options_are_checked() -> None:
    with pytest.raises(InputError, match="at least 1 MiB"):
        BuildOptions(workspace_bytes=10)
    with pytest.raises(InputError, match=r"0\.\.5"):
        BuildOptions(optimization_level=7)
    with pytest.raises(InputError, match="not both"):
        BuildOptions(version_compatible=True, hardware_compatible=True)


# ------------------------------------------------------------------ cache


def test_missing_engine_is_built_then_found(tmp_path: Path) -> None:
    key = _key()
    decision = cache.lookup(tmp_path, "tiny", key)
    assert decision.status == "missing" and "building it" in decision.reason
    path = cache.store(tmp_path, "tiny", key, b"plan-bytes", {"seconds": 1.0})
    assert path == tmp_path / "tiny" / key.dirname()
    found = cache.lookup(tmp_path, "tiny", key)
    assert found.hit and found.engine == b"plan-bytes"
    assert [p for p, _ in cache.entries(tmp_path, "tiny")] == [path]


def test_engine_from_another_gpu_or_tensorrt_is_never_loaded(tmp_path: Path) -> None:
    old = _key()
    old_path = cache.store(tmp_path, "tiny", old, b"orin-plan")
    new = _key(tensorrt="11.4.1", gpu="NVIDIA H200", compute_capability="9.0", jetson_module="")
    decision = cache.lookup(tmp_path, "tiny", new)
    assert decision.status == "mismatch" and decision.engine is None
    assert "built for another setup" in decision.reason
    assert "the GPU: built for Orin, this is NVIDIA H200" in decision.reason
    assert "the TensorRT version: built for 10.3.0, this is 11.4.1" in decision.reason
    assert "the old one is kept" in decision.reason
    assert decision.path != old_path and (old_path / cache.ENGINE_FILE).read_bytes() == b"orin-plan"


def test_key_file_that_disagrees_is_a_mismatch(tmp_path: Path) -> None:
    key = _key()
    path = cache.store(tmp_path, "tiny", key, b"plan")
    record = json.loads((path / cache.KEY_FILE).read_text())
    record["key"]["tensorrt"] = "10.0.1"  # edited by hand, or a digest collision: the key inside decides
    (path / cache.KEY_FILE).write_text(json.dumps(record))
    decision = cache.lookup(tmp_path, "tiny", key)
    assert decision.status == "mismatch" and "built for 10.0.1, this is 10.3.0" in decision.reason


def test_corrupt_engine_is_detected_by_hash(tmp_path: Path) -> None:
    key = _key()
    path = cache.store(tmp_path, "tiny", key, b"good-plan")
    (path / cache.ENGINE_FILE).write_bytes(b"good-plaN")  # one flipped byte, same size
    decision = cache.lookup(tmp_path, "tiny", key)
    assert decision.status == "corrupt" and decision.engine is None
    assert "is corrupt" in decision.reason and "never loaded" in decision.reason
    (path / cache.KEY_FILE).write_text("{not json")
    assert cache.lookup(tmp_path, "tiny", key).status == "corrupt"
    (path / cache.ENGINE_FILE).unlink()
    assert cache.lookup(tmp_path, "tiny", key).status == "corrupt"


def test_failed_store_keeps_the_old_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = _key()
    cache.store(tmp_path, "tiny", key, b"old-plan")

    def fail(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.json, "dumps", fail)  # dies after engine.plan is written, before key.json
    with pytest.raises(OSError, match="No space left"):
        cache.store(tmp_path, "tiny", key, b"new-plan")
    monkeypatch.undo()
    found = cache.lookup(tmp_path, "tiny", key)
    assert found.hit and found.engine == b"old-plan"
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [key.dirname()]  # no partial left behind


def test_replaced_engine_is_whole(tmp_path: Path) -> None:
    key = _key()
    cache.store(tmp_path, "tiny", key, b"old-plan")
    cache.store(tmp_path, "tiny", key, b"new-plan")
    found = cache.lookup(tmp_path, "tiny", key)
    assert found.hit and found.engine == b"new-plan"


def test_timing_cache_path_is_per_tensorrt_and_gpu(tmp_path: Path) -> None:
    a = cache.timing_cache_path(tmp_path, "tiny", _key())
    b = cache.timing_cache_path(tmp_path, "tiny", _key(tower="text", precision="int8"))
    c = cache.timing_cache_path(tmp_path, "tiny", _key(gpu="NVIDIA H200"))
    assert a == b and a != c and a.parent == tmp_path / "tiny" / "timing"
    cache.save_timing_cache(a, b"tactics")
    assert a.read_bytes() == b"tactics"


def test_default_engines_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGECLIP_ENGINES", raising=False)
    assert cache.default_engines_root() == Path("engines")
    monkeypatch.setenv("EDGECLIP_ENGINES", str(tmp_path))
    assert cache.default_engines_root() == tmp_path


def test_engines_package_imports_no_tensorrt_torch_or_onnx() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edgeclip.engines, edgeclip.engines.build, edgeclip.engines.cuda, "
        "edgeclip.runtime.backends.tensorrt; "
        "print(sorted(m for m in ('tensorrt', 'torch', 'onnx', 'cuda') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_engine_built_with_other_profiles_is_found(tmp_path: Path) -> None:
    wanted = _key()
    built = _key(profiles="1:1:1,1:4:8")
    cache.store(tmp_path, "tiny", built, b"custom")
    found = cache.lookup_other_profiles(tmp_path, "tiny", wanted)
    assert found is not None and found[0] == built and found[1].engine == b"custom"
    other_gpu = _key(gpu="NVIDIA H200")
    assert cache.lookup_other_profiles(tmp_path, "tiny", other_gpu) is None  # profiles only, never another GPU


# ------------------------------------------------------------------ without TensorRT (this machine)


def _no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip import device

    monkeypatch.setattr(device, "tensorrt_version", lambda: None)


def test_build_without_tensorrt_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    from click.testing import CliRunner

    from edgeclip.cli import main

    real_import = builtins.__import__

    def no_trt(name: str, *args: object, **kwargs: object) -> object:
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_trt)
    result = CliRunner().invoke(main, ["build", "--out", str(tmp_path / "engines")])
    assert result.exit_code == 1
    assert "TensorRT is not importable" in result.output and "--system-site-packages" in result.output
    assert not (tmp_path / "engines").exists()


def test_export_hook_says_onnx_only_without_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeclip.engines.build import engines_after_export, tensorrt_ready

    _no_tensorrt(monkeypatch)
    ok, why = tensorrt_ready()
    assert not ok and "--system-site-packages" in why
    engines, line = engines_after_export(tmp_path / "bundle", ["fp16"])
    assert engines == [] and line.startswith("ONNX graphs only, no TensorRT engines")
    assert f"'edgeclip build {tmp_path / 'bundle'}'" in line


def test_old_tensorrt_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip import device
    from edgeclip.engines.build import tensorrt_ready

    monkeypatch.setattr(device, "tensorrt_version", lambda: "8.6.1")
    ok, why = tensorrt_ready()
    assert not ok and "TensorRT 8.6.1 is older than 10" in why


def test_tensorrt_backend_probe_without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip.runtime.backends import tensorrt

    _no_tensorrt(monkeypatch)
    ok, why = tensorrt.probe("tensorrt")
    assert not ok and "TensorRT is not importable" in why


def test_no_gpu_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip import device
    from edgeclip.engines.keys import device_key_fields
    from edgeclip.errors import BackendError

    monkeypatch.setattr(device, "gpus", lambda: ())
    with pytest.raises(BackendError, match="no CUDA GPU to build or load an engine for"):
        device_key_fields(tensorrt_version="10.3.0")


# ------------------------------------------------------------------ a stand-in tensorrt (proves nothing about TensorRT)


class _FakeTrt:
    """Records the build calls edgeclip makes; its 'engine' is the bytes of the call log."""

    __version__ = "10.3.0"

    def __init__(self) -> None:
        self.calls: list[str] = []
        fake = self

        class Flag:
            STRONGLY_TYPED = 0

        class Pool:
            WORKSPACE = "workspace"

        class Severity:
            ERROR, WARNING = 1, 2

        class ILogger:
            pass

        ILogger.Severity = Severity  # type: ignore[attr-defined]

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls.append(f"pool {pool} {size}")

            def add_optimization_profile(self, profile: object) -> None:
                fake.calls.append("profile")

            def create_timing_cache(self, data: bytes) -> bytes:
                return data or b"new"

            def set_timing_cache(self, data: bytes, ignore: bool) -> bool:
                fake.calls.append(f"timing {data!r}")
                return True

            def get_timing_cache(self) -> object:
                class Cache:
                    def serialize(self) -> bytes:
                        return b"tactics"

                return Cache()

        class Profile:
            def set_shape(self, name: str, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...]) -> None:
                fake.calls.append(f"shape {name} {low} {opt} {high}")

        class Network:
            def __init__(self, inputs: list[str]) -> None:
                self.num_inputs = len(inputs)
                self._inputs = inputs

            def get_input(self, i: int) -> object:
                return type("T", (), {"name": self._inputs[i]})()

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                fake.calls.append(f"network {flags}")
                return Network(fake.inputs)

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: object, config: object) -> bytes:
                fake.calls.append("build")
                return "\n".join(fake.calls).encode()

        class OnnxParser:
            def __init__(self, network: object, logger: object) -> None:
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(f"parse {Path(path).name}")
                return True

        self.inputs: list[str] = []
        self.NetworkDefinitionCreationFlag = Flag
        self.MemoryPoolType = Pool
        self.ILogger = ILogger
        self.Builder = Builder
        self.OnnxParser = OnnxParser


def test_fake_trt_engine_for_graph_builds_stores_and_reuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from edgeclip import device
    from edgeclip.bundle import Bundle
    from edgeclip.engines import build
    from edgeclip.runtime import builtin_bundle_path

    fake = _FakeTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(device, "gpus", lambda: ())
    fields = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "jetson_module": ""}
    monkeypatch.setattr(build, "device_key_fields", lambda **kw: fields)
    bundle = Bundle.open(builtin_bundle_path(), verify=False)
    entry = bundle.graph("image", "fp16", backend="tensorrt")
    fake.inputs = [s.name for s in entry.inputs]
    logs: list[str] = []
    built, plan = build.engine_for_graph(bundle, "image", "fp16", root=tmp_path, log=logs.append)
    assert built.built and "building it" in logs[0]
    calls = plan.decode().splitlines()
    assert calls[0] == "network 1" and calls[1] == f"parse {Path(entry.file).name}"
    assert calls.count("profile") == 2 and f"pool workspace {build.DEFAULT_WORKSPACE}" in calls
    again, same = build.engine_for_graph(bundle, "image", "fp16", root=tmp_path, log=logs.append)
    assert not again.built and same == plan and len(logs) == 1
    (built.path / cache.ENGINE_FILE).write_bytes(b"damaged")
    rebuilt, _ = build.engine_for_graph(bundle, "image", "fp16", root=tmp_path, log=logs.append)
    assert rebuilt.built and "is corrupt" in logs[-1]
    assert cache.timing_cache_path(tmp_path, bundle.manifest.name, built.key).read_bytes() == b"tactics"
