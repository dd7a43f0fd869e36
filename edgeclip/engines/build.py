"""Building TensorRT engines from a bundle's verified ONNX graphs, and finding (or building) the engine a runner needs.

One code path for TensorRT 10.3 (JetPack 6) through 11.x: every network is strongly typed (precision lives in the
graph, DESIGN.md "Precision"), so no precision builder flag is set; the STRONGLY_TYPED creation flag is passed on
10.x and ignored by 11. TensorRT is imported inside these functions only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeclip import device
from edgeclip.engines import cache
from edgeclip.engines.keys import EngineKey, device_key_fields, make_key
from edgeclip.engines.profiles import Profile, by_tower, parse_profiles
from edgeclip.errors import BackendError, InputError, MissingExtraError

if TYPE_CHECKING:
    from edgeclip.bundle import Bundle, TensorSpec

__all__ = [
    "BuildOptions",
    "BuiltEngine",
    "build_engines",
    "default_workspace",
    "engine_for_graph",
    "engine_from_onnx",
    "engines_after_export",
    "require_tensorrt",
]

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_WORKSPACE = 1 * GiB  # fits an 8 GB Orin Nano beside the OS, a camera pipeline and the engine's weights
MIN_WORKSPACE = 128 * MiB
MIN_TENSORRT = 10  # the tensor API (set_tensor_address, execute_async_v3) and strongly typed networks
BUILD_PRECISIONS = ("fp16", "int8", "fp32")  # what `edgeclip build` picks without --precision, first present
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BuildOptions:
    """How engines are built. None means the default."""

    profiles: Mapping[str, Sequence[Profile]] = field(default_factory=dict)  # by tower; absent: default_profiles
    workspace_bytes: int | None = None  # None: default_workspace(free GPU memory)
    optimization_level: int | None = None  # builder_optimization_level 0..5; None: TensorRT's default (3)
    version_compatible: bool = False  # engines that later TensorRT versions can run (with the lean runtime inside)
    hardware_compatible: bool = False  # engines for every Ampere-or-newer GPU (AMPERE_PLUS), a little slower
    dla_core: int | None = None  # Jetson: build for this DLA core, layers it cannot run fall back to the GPU
    timing_cache: bool = True  # keep and reuse tactic timings beside the engines

    def __post_init__(self) -> None:
        if self.workspace_bytes is not None and self.workspace_bytes < MiB:
            raise InputError(f"the workspace must be at least 1 MiB, got {self.workspace_bytes} bytes")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise InputError(f"the builder optimization level is 0..5, got {self.optimization_level}")
        if self.version_compatible and self.hardware_compatible:
            raise InputError("choose version-compatible or hardware-compatible engines, not both")


@dataclass(frozen=True)
class BuiltEngine:
    """One engine of the cache, and whether this call built it (with the reason) or found it."""

    tower: str
    precision: str
    path: Path  # its cache directory
    key: EngineKey
    built: bool
    reason: str  # why it was built ("" when found)
    seconds: float
    bytes: int
    profiles: tuple[Profile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tower": self.tower,
            "precision": self.precision,
            "path": str(self.path),
            "key": self.key.to_dict(),
            "built": self.built,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
        }


def default_workspace(free_bytes: int | None) -> int:
    """1 GiB, or a quarter of the free GPU memory where that is less (never under 128 MiB): the builder's scratch
    must leave room for the weights, the runtime's activations and, on Jetson, everything else in shared memory."""
    if free_bytes is None:
        return DEFAULT_WORKSPACE
    quarter = (free_bytes // 4) // MiB * MiB
    return max(MIN_WORKSPACE, min(DEFAULT_WORKSPACE, quarter))


def build_memory_estimate(graph_bytes: int, workspace_bytes: int) -> int:
    """A rough upper bound of the GPU memory one engine build takes: the weights twice (the builder holds the
    network's and the engine's) and the workspace. An estimate for `edgeclip doctor`, not a measurement."""
    return 2 * graph_bytes + workspace_bytes


def tensorrt_ready() -> tuple[bool, str]:
    """Whether engines can be built here (TensorRT 10 or newer and a CUDA GPU), and why not: what the `tensorrt`
    backend's probe and `edgeclip export` ask before they build."""
    version = device.tensorrt_version()
    if version is None:
        return False, (
            "TensorRT is not importable: pip install 'edgeclip[tensorrt]' on a desktop GPU; on Jetson make the "
            "virtual environment with 'python3 -m venv --system-site-packages' to see JetPack's TensorRT"
        )
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < MIN_TENSORRT:
        return False, f"TensorRT {version} is older than {MIN_TENSORRT}, the first with the tensor API edgeclip uses"
    gpus, why = device.cuda_devices()
    if not gpus:
        return False, f"TensorRT {version} is here, but {why}"
    return True, f"TensorRT {version}, {why}"


def require_tensorrt() -> Any:
    """The `tensorrt` module, version 10 or newer; MissingExtraError or BackendError saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingExtraError(
            f"TensorRT is not importable here ({exc}): on a desktop GPU, pip install 'edgeclip[tensorrt]'; on "
            "Jetson, JetPack ships TensorRT for the system Python: make the virtual environment with "
            "'python3 -m venv --system-site-packages' to see it"
        ) from None
    version = str(getattr(trt, "__version__", "0"))
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < MIN_TENSORRT:
        raise BackendError(
            f"TensorRT {version} is too old: edgeclip needs TensorRT {MIN_TENSORRT} or newer (the tensor API, strongly "
            "typed networks); JetPack 6 ships 10.3, on a desktop pip install -U 'tensorrt>=10'"
        )
    return trt


def _logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors for the message and lets warnings through to stderr."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            elif level <= int(trt.ILogger.Severity.WARNING):
                _stderr(f"TensorRT warning: {msg}")

    return Logger()


def network_flags(trt: Any) -> int:
    """The create_network flags: STRONGLY_TYPED, which 10.x needs and 11.x accepts and ignores (strong typing is
    always on there); 0 should a later TensorRT drop the member."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def engine_from_onnx(
    onnx_path: Path,
    inputs: Sequence[TensorSpec],
    profiles: Sequence[Profile],
    options: BuildOptions,
    *,
    workspace_bytes: int,
    timing_cache: Path | None = None,
) -> bytes:
    """Build a serialized engine from the ONNX graph at `onnx_path` (its external weights beside it), one optimization
    profile per entry of `profiles`; reuse and update the timing cache at `timing_cache` where given."""
    trt = require_tensorrt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendError(
            f"TensorRT could not make a builder: {'; '.join(logger.errors) or 'no error was logged'} (is the GPU "
            "visible to this process? 'edgeclip doctor' checks)"
        )
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)  # parse_from_file: the graph's external weights lie beside it
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(
            f"TensorRT's ONNX parser refused {onnx_path.name} with {len(errors)} error(s): "
            + "; ".join(f"[{i + 1}] {e}" for i, e in enumerate(errors or ["(no error recorded)"]))
            + ". The graph passed ONNX Runtime at export; this TensorRT cannot take one of its nodes"
        )
    found = sorted(network.get_input(i).name for i in range(network.num_inputs))
    wanted = sorted(s.name for s in inputs)
    if found != wanted:
        raise BackendError(
            f"{onnx_path.name} has inputs {found} but the bundle manifest says {wanted}: export the bundle again"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if options.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    for profile in profiles:
        p = builder.create_optimization_profile()
        for spec in inputs:
            low, opt, high = profile.shapes(spec.shape)
            p.set_shape(spec.name, low, opt, high)
        config.add_optimization_profile(p)
    if timing_cache is not None:
        _use_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        shown = ", ".join(p.text() for p in profiles)
        raise BackendError(
            f"TensorRT could not build an engine from {onnx_path.name} (profiles {shown}, "
            f"workspace {workspace_bytes // MiB} MiB): {'; '.join(logger.errors) or 'no error was logged'}. If it ran "
            "out of memory, give smaller profiles (--profiles) or free GPU memory"
        )
    used = config.get_timing_cache() if timing_cache is not None else None
    if timing_cache is not None and used is not None:
        cache.save_timing_cache(timing_cache, bytes(memoryview(used.serialize())))
    return bytes(memoryview(plan))


def _use_timing_cache(config: Any, path: Path) -> None:
    """Start the build from the tactic timings kept at `path` (a fresh cache where there are none, or where TensorRT
    refuses them: made by another TensorRT or GPU, or damaged; the file is replaced after the build)."""
    data = path.read_bytes() if path.is_file() else b""
    kept = config.create_timing_cache(data)
    if kept is not None and config.set_timing_cache(kept, False):
        return
    if data:
        _stderr(f"TensorRT refused the timing cache {path} (made by another TensorRT or GPU?): starting a new one")
        kept = config.create_timing_cache(b"")
        if kept is not None and config.set_timing_cache(kept, False):
            return
    _stderr("TensorRT could not make a timing cache: building without one (tactics are timed afresh)")


def _parser_error(error: Any) -> str:
    desc = error.desc() if hasattr(error, "desc") else str(error)
    node = error.node() if hasattr(error, "node") else -1
    name = error.node_name() if hasattr(error, "node_name") else ""
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    parts = [f"node {node}"] if node is not None and node >= 0 else []
    parts += [p for p in (str(name or ""), f"op {op}" if op else "") if p]
    return f"{desc} ({', '.join(parts)})" if parts else str(desc)


def engine_for_graph(
    bundle: Bundle,
    tower: str,
    precision: str,
    *,
    root: Path | None = None,
    options: BuildOptions | None = None,
    force: bool = False,
    log: Log | None = None,
) -> tuple[BuiltEngine, bytes]:
    """The engine of `tower` at `precision`: from the cache where it is whole and made for this GPU and TensorRT,
    otherwise built (saying why) and stored. BundleError where the bundle has no such graph for TensorRT.

    Where `options` gives no profiles for the tower, an engine `edgeclip build --profiles` made for this graph, GPU
    and TensorRT is used as it is (its profiles read from its key) before the default profiles are built."""
    options = options if options is not None else BuildOptions()
    log = log if log is not None else _stderr
    root = root if root is not None else cache.default_engines_root()
    entry = bundle.graph(tower, precision, backend="tensorrt")  # names what the bundle has and 'edgeclip quantize'
    trt = require_tensorrt()
    context = bundle.manifest.contract.text.context_length
    profiles = by_tower(options.profiles, tower, context)
    fields = device_key_fields(tensorrt_version=str(trt.__version__))
    if options.hardware_compatible and int(str(fields["compute_capability"]).split(".")[0]) < 8:
        raise InputError(
            f"hardware-compatible engines run on Ampere or newer GPUs (compute capability 8.0+); this "
            f"{fields['gpu']} is {fields['compute_capability']}: build without --hardware-compatible"
        )
    key = make_key(
        tower,
        precision,
        entry.sha256,
        profiles,
        fields,
        dla_core=options.dla_core,
        version_compatible=options.version_compatible,
        hardware_compatible=options.hardware_compatible,
    )
    name = bundle.manifest.name
    decision = cache.lookup(root, name, key)
    if not decision.hit and not force and not options.profiles.get(tower):
        other = cache.lookup_other_profiles(root, name, key)
        if other is not None:
            key, decision = other
            profiles = parse_profiles([f"{tower}={key.profiles}"], context_length=context)[tower]
    if decision.hit and not force and decision.engine is not None:
        found = BuiltEngine(tower, precision, decision.path, key, False, "", 0.0, len(decision.engine), profiles)
        return found, decision.engine
    reason = "rebuilding as asked (--force)" if decision.hit else decision.reason
    log(f"{tower} ({precision}): {reason}")
    workspace = options.workspace_bytes
    if workspace is None:
        free = next((g.free_bytes for g in device.gpus()), None)
        workspace = default_workspace(free)
    start = time.perf_counter()
    timing = cache.timing_cache_path(root, name, key) if options.timing_cache else None
    engine = engine_from_onnx(
        bundle.file(entry), entry.inputs, profiles, options, workspace_bytes=workspace, timing_cache=timing
    )
    seconds = time.perf_counter() - start
    meta = {"seconds": round(seconds, 3), "workspace_bytes": workspace, "graph": entry.file}
    path = cache.store(root, name, key, engine, meta)
    return BuiltEngine(tower, precision, path, key, True, reason, seconds, len(engine), profiles), engine


def build_precision(bundle: Bundle, tower: str, precision: str | None) -> str:
    """`precision`, or the fastest the bundle has for TensorRT that passed its gate (fp16, then int8, then fp32)."""
    if precision is not None:
        return precision
    for candidate in BUILD_PRECISIONS:
        for g in bundle.graphs_for("tensorrt"):
            if g.tower == tower and g.precision == candidate and (candidate == "fp32" or g.gate.get("passed")):
                return candidate
    return "fp32"


def build_engines(
    bundle: Bundle,
    *,
    precision: str | None = None,
    towers: Sequence[str] = ("image", "text"),
    root: Path | None = None,
    options: BuildOptions | None = None,
    force: bool = False,
    log: Log | None = None,
) -> list[BuiltEngine]:
    """Engines for both towers of `bundle` (see engine_for_graph): what `edgeclip build` and `export` call."""
    present = {g.tower for g in bundle.manifest.graphs}
    out = []
    for tower in towers:
        if tower in present:
            built, _ = engine_for_graph(
                bundle,
                tower,
                build_precision(bundle, tower, precision),
                root=root,
                options=options,
                force=force,
                log=log,
            )
            out.append(built)
    return out


def engines_after_export(
    bundle_path: Path, precisions: Sequence[str], *, root: Path | None = None, log: Log | None = None
) -> tuple[list[BuiltEngine], str]:
    """What `edgeclip export --fp16/--int8` adds where TensorRT 10+ and a GPU are here: engines of both towers at the
    precisions just exported. Elsewhere no engines, and a line saying plainly that only ONNX was written and why.

    A failed build does not undo the export: the bundle is whole, the line says what failed and what to run."""
    from edgeclip.bundle import Bundle
    from edgeclip.errors import EdgeClipError

    ok, why = tensorrt_ready()
    if not ok:
        return [], (
            f"ONNX graphs only, no TensorRT engines ({why}); engines are built on the target device: "
            f"'edgeclip build {bundle_path}'"
        )
    bundle = Bundle.open(bundle_path)
    out: list[BuiltEngine] = []
    try:
        for precision in precisions:
            towers = dict.fromkeys(g.tower for g in bundle.graphs_for("tensorrt") if g.precision == precision)
            for tower in towers:
                built, _ = engine_for_graph(bundle, tower, precision, root=root, log=log)
                out.append(built)
    except EdgeClipError as exc:
        return out, f"the bundle is written, but a TensorRT engine build failed: {exc}"
    where = cache.bundle_dir(root if root is not None else cache.default_engines_root(), bundle.manifest.name)
    return out, f"TensorRT engines ({', '.join(precisions)}) in {where}"
