"""`edgeclip bench` as a library: throughput, latency, preprocessing, load time and peak memory of a bundle's graphs,
with PyTorch eager fp32 of the same model measured in the same run where a checkpoint is known.

Machines that run benchmarks are shared and noisy, so every case of one measurement (each precision, and eager) runs in
turn, round after round, and medians are reported: load on the machine hits all cases alike, and the same-run ratios are
what to quote. Each timed call starts after a short pause (`SETTLE_S`), so that no case is slowed by the idle threads of
the one before it. Model time is the graph call alone (`Runner.infer` on preprocessed pixels or token ids);
preprocessing is timed on its own, in both modes of the bundle's `Preprocessor` ("exact", "fast"), from a 1920x1080 JPEG
(decode, resize, crop, normalize) and from the same picture already decoded (a camera frame: resize onwards). Peak
memory is the runtime's own: a fresh child process that imports edgeclip, opens the bundle, starts the graphs and
encodes images and texts, and reports its `ru_maxrss`.

On a backend that preprocesses on its own device (torch-cuda), the "pipeline" rows time what `Model.encode_image`
does with decoded 1080p frames both ways: edgeclip's CPU preprocessor then the graph, and the device pipeline (frames
uploaded as uint8, resized on the GPU). Eager runs on the backend's device (the GPU for torch-cuda), each call
uploading its input and fetching its output as the runners do.

torch is imported only when the eager comparison (or a torch backend) runs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeclip.bundle import PRECISIONS, TOWERS, Bundle
from edgeclip.errors import BackendError, BundleError, InputError

__all__ = [
    "BenchConfig",
    "BenchResult",
    "MemoryRow",
    "PreprocessRow",
    "SpeedRow",
    "bench",
    "machine_info",
    "markdown",
    "parse_list",
    "table",
]

EAGER = "eager"  # the precision column of PyTorch eager fp32 rows
LATENCY_ROUNDS = 30  # at least this many batch-1 calls per case, so that p99 means something
WARMUP = 2  # calls per case before timing: session arenas, thread pools, caches
# Pause before every timed call: ONNX Runtime's idle intra-op threads spin for tens of milliseconds after a run, and
# on a 2-core CPU the spinning threads of the case before slowed the next case's session by 15-40% (ViT-B/32 int8
# after another session: 40-47 img/s; 55-59 with a 0.1 s pause, as when its session is the only one).
SETTLE_S = 0.1
FRAME = (1920, 1080)  # the camera frame preprocessing is timed on
X86_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16")  # fmt: skip
ARM_FLAGS = ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve")
_PROMPTS = ("a photo of a {}.", "a blurry photo of the {}.", "a close-up picture of a small {} on a table.")
_THINGS = ("cat", "dog", "robot", "car", "red bicycle", "traffic cone", "forklift in a warehouse", "person")


class Progress(Protocol):
    """What `bench` needs of a progress bar (tqdm has it)."""

    total: float | None

    def update(self, n: float = 1) -> bool | None: ...
    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None: ...
    def refresh(self) -> None: ...


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. None means: everything the bundle has (precisions), or the default."""

    bundle: Path | None = None  # None: the built-in model
    backend: str = "auto"
    precisions: tuple[str, ...] | None = None  # None: every precision the bundle has for the backend
    batches: tuple[int, ...] = (1, 8, 32)
    towers: tuple[str, ...] = TOWERS
    repeats: int = 10
    threads: int | None = None  # per graph; None: the backend's default
    torch_checkpoint: Path | None = None  # None: the built-in model's weights when the bundle is the built-in one
    eager: bool | None = None  # None: when torch is installed and a checkpoint is known
    memory: bool = True  # the fresh-process peak RSS per precision (seconds per precision)
    preprocess: bool = True

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions or () if p not in PRECISIONS]
        if unknown:
            raise InputError(f"unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS)}")
        bad_towers = [t for t in self.towers if t not in TOWERS]
        if bad_towers or not self.towers:
            raise InputError(f"unknown tower {bad_towers[0] if bad_towers else ''!r}; the towers are: image, text")
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise InputError(f"batch sizes must be whole numbers >= 1, got {','.join(map(str, self.batches))!r}")
        for name in ("repeats", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{name} must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True)
class SpeedRow:
    """One tower at one batch size in one precision (or PyTorch eager fp32: precision "eager")."""

    tower: str
    precision: str
    batch: int
    items_per_s: float  # images/s or texts/s, from the median call
    median_ms: float
    p50_ms: float
    p99_ms: float
    calls: int  # timed calls (warm-up excluded)
    vs_eager: float | None = None  # items/s over eager's at the same tower and batch, same run


@dataclass(frozen=True)
class PreprocessRow:
    """Preprocessing of `batch` 1080p images on `threads` threads, in one mode of `Preprocessor` from one kind of
    source, and its share of each precision's image-model time at that batch. A batch is timed on one thread and on
    the threads `Model` gives it (`edgeclip.preprocess.default_threads`, or the bench's `threads`)."""

    batch: int
    median_ms: float
    per_image_ms: float
    share_of_model: dict[str, float] = field(default_factory=dict)  # precision -> preprocess ms / model ms
    mode: str = "exact"  # edgeclip.preprocess.MODES
    source: str = "jpeg"  # "jpeg" (decode + resize) or "frame" (the same picture as a decoded BGR frame: resize on)
    threads: int = 1


@dataclass(frozen=True)
class PipelineRow:
    """`batch` decoded 1080p frames to embeddings in one precision: CPU preprocessing + the graph, against
    preprocessing on the runner's device (backends that have it: torch-cuda)."""

    batch: int
    precision: str
    cpu_preprocess_ms: float  # edgeclip.preprocess + Runner.infer, median
    device_preprocess_ms: float  # Runner.image_pipeline, median
    speedup: float  # cpu_preprocess_ms / device_preprocess_ms


@dataclass(frozen=True)
class MemoryRow:
    """A fresh process that opens the bundle, starts the graphs of one precision and encodes both towers."""

    precision: str
    graphs: dict[str, str]  # tower -> precision of the graph it ran (a tower without this precision: its default)
    graph_mib: float  # size of the graph files it ran
    peak_rss_mib: float  # ru_maxrss of the whole process
    baseline_rss_mib: float  # after the imports, before the bundle: the interpreter and libraries
    rss_over_graphs: float  # peak_rss_mib / graph_mib (the bar: <= 1.5)
    load_s: float  # Bundle.open (sha256 verified) + starting the graphs
    batch: int


@dataclass(frozen=True)
class BenchResult:
    bundle: str
    model: str
    backend: str
    threads: int | None
    repeats: int
    machine: dict[str, Any]
    load_s: dict[str, float]  # precision -> seconds to start its graphs, in this process
    speed: tuple[SpeedRow, ...]
    preprocess: tuple[PreprocessRow, ...]
    memory: tuple[MemoryRow, ...]
    eager: dict[str, Any] | None  # checkpoint and torch version, or None: not measured (and why, under "skipped")
    wall_s: float
    pipeline: tuple[PipelineRow, ...] = ()  # backends that preprocess on their device (older results: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        """The result `to_dict` (and `edgeclip bench --json`) wrote, e.g. to print its Markdown later."""
        rows = {"speed": SpeedRow, "preprocess": PreprocessRow, "memory": MemoryRow, "pipeline": PipelineRow}
        fields: dict[str, Any] = {k: tuple(rows[k](**r) for r in v) if k in rows else v for k, v in data.items()}
        return cls(**fields)


def parse_list(text: str, what: str, choices: Sequence[str] | None = None) -> tuple[str, ...]:
    """ "fp32,int8" -> ("fp32", "int8"); empty items or values outside `choices` are an InputError naming `what`."""
    items = tuple(item.strip() for item in text.split(","))
    if not items or any(not item for item in items):
        raise InputError(f"--{what} takes a comma-separated list, got {text!r}")
    if choices is not None:
        for item in items:
            if item not in choices:
                raise InputError(f"unknown {what} {item!r} in --{what} {text}; choose from {', '.join(choices)}")
    return tuple(dict.fromkeys(items))


def parse_batches(text: str) -> tuple[int, ...]:
    """ "1,8,32" -> (1, 8, 32)."""
    out = []
    for item in parse_list(text, "batch"):
        if not item.isdigit() or int(item) < 1:
            raise InputError(f"batch sizes must be whole numbers >= 1, got {item!r} in --batch {text}")
        out.append(int(item))
    return tuple(out)


# ---------------------------------------------------------------- the run


def bench(config: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Measure what `config` asks for; see the module docstring for how."""
    from edgeclip.runtime import builtin_bundle_path
    from edgeclip.runtime.backends import resolve_backend

    started = time.perf_counter()
    bundle_dir = config.bundle if config.bundle is not None else builtin_bundle_path()
    bundle = Bundle.open(bundle_dir)
    backend = resolve_backend(config.backend)
    plan = _plan(bundle, backend, config)
    checkpoint, skipped = _eager_checkpoint(bundle, config)
    rounds = {b: max(config.repeats, LATENCY_ROUNDS) if b == 1 else config.repeats for b in config.batches}
    if progress is not None:
        progress.total = (
            sum(rounds[b] + WARMUP for b in config.batches) * len(config.towers)
            + (sum(config.repeats + 1 for _ in config.batches) if config.preprocess and "image" in config.towers else 0)
            + (len(plan) if config.memory else 0)
        )
        progress.refresh()

    def step(desc: str) -> Callable[[], None]:
        if progress is None:
            return lambda: None
        bar = progress
        bar.set_description_str(desc)

        def tick() -> None:
            bar.update(1)

        return tick

    runners: dict[tuple[str, str], Any] = {}
    load_s: dict[str, float] = {}
    try:
        for precision, towers in plan.items():
            t0 = time.perf_counter()
            for tower in towers:
                runners[tower, precision] = _start(bundle, tower, precision, backend, config.threads)
            load_s[precision] = round(time.perf_counter() - t0, 3)
        eager_info: dict[str, Any] | None = None
        eager_towers: dict[str, Any] = {}
        if checkpoint is not None:
            eager_info, eager_towers = _eager_towers(checkpoint, bundle, config, _eager_device(backend))
        inputs = _Inputs(bundle, config.threads)
        speed: list[SpeedRow] = []
        for tower in config.towers:
            for batch in config.batches:
                feed = inputs.feed(tower, batch)
                cases: dict[str, Callable[[], object]] = {
                    p: _graph_call(runners[tower, p], feed) for p in plan if (tower, p) in runners
                }
                if tower in eager_towers:
                    cases[EAGER] = _eager_call(eager_towers[tower], feed)
                times = _alternate(cases, rounds[batch], step(f"{tower} batch {batch}"))
                speed += _speed_rows(tower, batch, times)
        preprocess = (
            _preprocess_rows(inputs, config, speed, step) if config.preprocess and "image" in config.towers else []
        )
        pipeline = (
            _pipeline_rows(bundle, runners, inputs, config, step)
            if config.preprocess and "image" in config.towers
            else []
        )
        memory = [_memory(bundle, backend, p, plan, config, step) for p in plan] if config.memory else []
    finally:
        for runner in runners.values():
            runner.close()
    return BenchResult(
        bundle=str(bundle.path),
        model=bundle.manifest.name,
        backend=backend,
        threads=config.threads,
        repeats=config.repeats,
        machine=machine_info(backend) | {"session": _session_settings(backend, config.threads)},
        load_s=load_s,
        speed=tuple(speed),
        preprocess=tuple(preprocess),
        memory=tuple(memory),
        eager=eager_info if eager_info is not None else {"skipped": skipped},
        wall_s=round(time.perf_counter() - started, 1),
        pipeline=tuple(pipeline),
    )


def _plan(bundle: Bundle, backend: str, config: BenchConfig) -> dict[str, list[str]]:
    """precision -> the asked towers that have a graph of it for `backend`, fastest-first order of PRECISIONS."""
    have: dict[str, list[str]] = {}
    for entry in bundle.graphs_for(backend):
        if entry.tower in config.towers and entry.tower not in have.setdefault(entry.precision, []):
            have[entry.precision].append(entry.tower)
    wanted = config.precisions if config.precisions is not None else tuple(p for p in PRECISIONS if p in have)
    for precision in wanted:
        if precision not in have:
            graphs = sorted(have, key=PRECISIONS.index)
            raise BundleError(
                f"bundle {bundle.path} has no {precision} graph for backend {backend} "
                f"(it has {', '.join(graphs) or 'none'}); add one with 'edgeclip quantize {bundle.path} --{precision}',"
                f" or bench --precision {','.join(graphs)}"
            )
    return {p: have[p] for p in wanted}


def _start(bundle: Bundle, tower: str, precision: str, backend: str, threads: int | None) -> Any:
    from edgeclip.runtime import runner_request
    from edgeclip.runtime.backends import create_runner

    entry = bundle.graph(tower, precision, backend=backend)
    return create_runner(backend, runner_request(bundle, entry, threads=threads))


def _graph_call(runner: Any, feed: np.ndarray) -> Callable[[], object]:
    spec = runner.inputs[0]
    array = np.ascontiguousarray(feed, dtype=np.dtype(spec.dtype))
    feeds = {spec.name: array}
    return lambda: runner.infer(feeds)


def _alternate(cases: dict[str, Callable[[], object]], rounds: int, tick: Callable[[], None]) -> dict[str, list[float]]:
    """Milliseconds of each call, the cases in turn within each round so that noise hits them alike."""
    for _ in range(WARMUP):
        for fn in cases.values():
            fn()
        tick()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            time.sleep(SETTLE_S)  # the case before leaves no spinning threads behind
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
        tick()
    return times


def _speed_rows(tower: str, batch: int, times: dict[str, list[float]]) -> list[SpeedRow]:
    medians = {name: statistics.median(values) for name, values in times.items()}
    eager = medians.get(EAGER)
    rows = []
    for name, values in times.items():
        ms = medians[name]
        rows.append(
            SpeedRow(
                tower=tower,
                precision=name,
                batch=batch,
                items_per_s=round(batch * 1e3 / ms, 2),
                median_ms=round(ms, 3),
                p50_ms=round(float(np.percentile(values, 50)), 3),
                p99_ms=round(float(np.percentile(values, 99)), 3),
                calls=len(values),
                vs_eager=round(eager / ms, 3) if eager is not None and name != EAGER else None,
            )
        )
    return rows


class _Inputs:
    """The same inputs for every case: pixels of a preprocessed 1080p JPEG, token ids of varied prompts."""

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        from edgeclip.images import load_image
        from edgeclip.preprocess import MODES, Preprocessor, default_threads
        from edgeclip.tokenizer import Tokenizer

        contract = bundle.manifest.contract
        self.threads = sorted({1, threads or default_threads()})  # one thread, and what `Model` gives a batch
        self.preprocessors = {
            (mode, n): Preprocessor(contract.image, mode=mode, threads=n) for mode in MODES for n in self.threads
        }
        self.preprocessor = self.preprocessors["exact", 1]
        folder = bundle.tokenizer_dir()
        self.tokenizer = (
            Tokenizer(contract.text) if folder is None else Tokenizer.from_pretrained_dir(folder, contract.text)
        )
        self.jpeg = synthetic_jpeg(*FRAME)
        self.frame = load_image(self.jpeg, color_order="BGR")  # (1080, 1920, 3) uint8, as OpenCV captures it
        self._pixels = self.preprocessor(self.jpeg)  # (1, 3, S, S)

    def feed(self, tower: str, batch: int) -> np.ndarray:
        if tower == "image":
            return np.ascontiguousarray(np.repeat(self._pixels, batch, axis=0))
        prompts = [_PROMPTS[i % len(_PROMPTS)].format(_THINGS[i % len(_THINGS)]) for i in range(batch)]
        return np.asarray(self.tokenizer(prompts), dtype=np.int64)  # full context length, as eager runs it


def synthetic_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A camera-like JPEG (gradients, shapes, sensor noise; quality 90): decode time depends on content."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width * 200, y / height * 180, (x + y) / (width + height) * 255], axis=-1)
    for _ in range(40):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(20, 200)
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        image = cv2.circle(image, (int(cx), int(cy)), int(r), color, -1)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    ok, data = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise BackendError("OpenCV could not encode the benchmark's JPEG frame")
    return bytes(data.tobytes())


def _preprocess_rows(
    inputs: _Inputs, config: BenchConfig, speed: list[SpeedRow], step: Callable[[str], Callable[[], None]]
) -> list[PreprocessRow]:
    rows = []
    for batch in config.batches:
        sources: dict[str, tuple[list[Any], str]] = {
            "jpeg": ([inputs.jpeg] * batch, "RGB"),
            "frame": ([inputs.frame] * batch, "BGR"),
        }
        cases: dict[str, Callable[[], object]] = {}
        for (mode, threads), preprocessor in inputs.preprocessors.items():
            if threads > 1 and batch == 1:
                continue  # one image is one thread's work
            for source, (images, order) in sources.items():

                def run(pre: Any = preprocessor, images: list[Any] = images, order: str = order) -> object:
                    return pre(images, color_order=order)

                cases[f"{mode} {source} {threads}"] = run
        times = _alternate(cases, config.repeats, step(f"preprocess {batch}"))
        model = {r.precision: r.median_ms for r in speed if r.tower == "image" and r.batch == batch}
        for name, values in times.items():
            mode, source, threads_text = name.split()
            ms = statistics.median(values)
            rows.append(
                PreprocessRow(
                    batch=batch,
                    median_ms=round(ms, 3),
                    per_image_ms=round(ms / batch, 3),
                    share_of_model={p: round(ms / m, 4) for p, m in model.items()},
                    mode=mode,
                    source=source,
                    threads=int(threads_text),
                )
            )
    return rows


def _pipeline_rows(
    bundle: Bundle, runners: dict[tuple[str, str], Any], inputs: _Inputs, config: BenchConfig,
    step: Callable[[str], Callable[[], None]],
) -> list[PipelineRow]:  # fmt: skip
    from edgeclip.images import decode

    pipelines = {
        p: (r, r.image_pipeline(bundle.manifest.contract.image)) for (t, p), r in runners.items() if t == "image"
    }
    pipelines = {p: rp for p, rp in pipelines.items() if rp[1] is not None}
    if not pipelines:
        return []
    pixels = decode(inputs.jpeg)
    assert pixels.image is not None
    frame = np.array(pixels.image.convert("RGB"))  # a decoded camera frame, HWC uint8 RGB
    rows = []
    for batch in config.batches:
        frames = [frame] * batch
        cases: dict[str, Callable[[], object]] = {}
        for precision, (runner, pipeline) in pipelines.items():
            spec = runner.inputs[0]

            def on_cpu(runner: Any = runner, spec: Any = spec, frames: list[np.ndarray] = frames) -> object:
                feed = np.ascontiguousarray(inputs.preprocessor(frames), dtype=np.dtype(spec.dtype))
                return runner.infer({spec.name: feed})

            cases[f"{precision}/cpu"] = on_cpu

            def on_device(pipeline: Any = pipeline, frames: list[np.ndarray] = frames) -> object:
                return pipeline(frames, "RGB")

            cases[f"{precision}/device"] = on_device
        times = _alternate(cases, config.repeats, step(f"pipeline {batch}"))
        for precision in pipelines:
            cpu_ms = statistics.median(times[f"{precision}/cpu"])
            device_ms = statistics.median(times[f"{precision}/device"])
            rows.append(
                PipelineRow(batch, precision, round(cpu_ms, 3), round(device_ms, 3), round(cpu_ms / device_ms, 3))
            )
    return rows


# ---------------------------------------------------------------- PyTorch eager


def _eager_device(backend: str) -> str:
    """Where eager runs: the backend's GPU for torch-cuda (the same device as the runners), else the CPU."""
    return "cuda" if backend == "torch-cuda" else "cpu"


def _eager_checkpoint(bundle: Bundle, config: BenchConfig) -> tuple[Path | None, str]:
    """The checkpoint to run eager from, or None and why not."""
    if config.eager is False:
        return None, "not asked for (--no-eager)"
    if importlib.util.find_spec("torch") is None:
        if config.eager:
            raise InputError("the eager comparison needs PyTorch: pip install 'edgeclip[export]'")
        return None, "torch is not installed"
    if config.torch_checkpoint is not None:
        return Path(config.torch_checkpoint), ""
    from edgeclip.runtime import builtin_bundle_path

    if bundle.path.resolve() == builtin_bundle_path().resolve():
        from edgeclip.builtin import checkpoint_path

        return checkpoint_path(), ""
    if config.eager:
        raise InputError(
            f"the eager comparison needs the checkpoint bundle {bundle.path} was exported from: --torch-checkpoint PATH"
        )
    return None, "no checkpoint known for this bundle (--torch-checkpoint PATH)"


def _eager_towers(
    path: Path, bundle: Bundle, config: BenchConfig, device: str = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The exported tower modules of the checkpoint, in eval mode, after checking it is the bundle's model."""
    import torch

    from edgeclip.checkpoint import load_checkpoint
    from edgeclip.export import tower_module

    ckpt = load_checkpoint(path)
    mine, theirs = bundle.manifest.contract, ckpt.contract
    for what, a, b in (
        ("image size", mine.image.size, theirs.image.size),
        ("context length", mine.text.context_length, theirs.text.context_length),
        ("embedding size", mine.head.embed_dim, theirs.head.embed_dim),
    ):
        if a != b:
            raise InputError(
                f"checkpoint {path} is not the model of bundle {bundle.path}: {what} {b} against the bundle's {a}; "
                "give the checkpoint it was exported from with --torch-checkpoint"
            )
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    model = ckpt.model.float().eval().to(device)
    towers = {t: tower_module(model, t) for t in config.towers}
    info = {"checkpoint": str(path), "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}
    return info, towers


def _eager_call(module: Any, feed: np.ndarray) -> Callable[[], object]:
    import torch

    tensor = torch.from_numpy(feed)
    device = next(module.parameters()).device

    def call() -> object:
        with torch.inference_mode():
            if device.type == "cpu":
                return module(tensor)
            return module(tensor.to(device)).cpu()  # the runners' work too: upload, compute, fetch (synchronizes)

    return call


# ---------------------------------------------------------------- memory, in a fresh process


def _memory(
    bundle: Bundle,
    backend: str,
    precision: str,
    plan: dict[str, list[str]],
    config: BenchConfig,
    step: Callable[[str], Callable[[], None]],
) -> MemoryRow:
    from edgeclip.runtime import best_precision

    tick = step(f"memory {precision}")
    towers = sorted({g.tower for g in bundle.manifest.graphs})
    graphs = {t: precision if t in plan[precision] else best_precision(bundle, t, backend) for t in towers}
    batch = max(config.batches)
    request = {
        "bundle": str(bundle.path),
        "backend": backend,
        "graphs": graphs,
        "threads": config.threads,
        "batch": batch,
    }
    code = "import sys; from edgeclip.bench import memory_child; memory_child(sys.argv[1])"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(request)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BackendError(
            f"the memory measurement of {precision} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
        )
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    size = sum(bundle.graph_bytes(bundle.graph(t, p, backend=backend)) for t, p in graphs.items()) / 2**20
    tick()
    return MemoryRow(
        precision=precision,
        graphs=graphs,
        graph_mib=round(size, 1),
        peak_rss_mib=round(found["peak_kib"] / 1024, 1),
        baseline_rss_mib=round(found["baseline_kib"] / 1024, 1),
        rss_over_graphs=round(found["peak_kib"] / 1024 / size, 3),
        load_s=round(found["load_s"], 3),
        batch=batch,
    )


def memory_child(request_json: str) -> None:
    """The child of the memory measurement: open, start, encode both towers, print peak RSS as JSON on stdout."""
    from edgeclip.runtime import Model

    request = json.loads(request_json)
    baseline = peak_rss_kib()
    t0 = time.perf_counter()
    bundle = Bundle.open(request["bundle"])
    runners = {t: _start(bundle, t, p, request["backend"], request["threads"]) for t, p in request["graphs"].items()}
    load_s = time.perf_counter() - t0
    model = Model(bundle, request["backend"], runners, request["graphs"])
    batch = int(request["batch"])
    size = bundle.manifest.contract.image.size
    frames = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    if "image" in runners:
        model.encode_image(frames, batch_size=batch)
    if "text" in runners:
        model.encode_text([_PROMPTS[0].format(_THINGS[i % len(_THINGS)]) for i in range(batch)], batch_size=batch)
    peak = peak_rss_kib()
    model.close()
    print(json.dumps({"peak_kib": peak, "baseline_kib": baseline, "load_s": load_s}))


def peak_rss_kib() -> float:
    """The peak resident memory of this process so far, KiB.

    Linux: VmHWM of /proc/self/status. Not `ru_maxrss`: Linux carries the parent's peak into a child across fork and
    exec, so a child of a big benchmark process would report at least its parent's memory.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    import resource

    scale = 1 / 1024 if sys.platform == "darwin" else 1.0  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ---------------------------------------------------------------- the machine


def machine_info(backend: str) -> dict[str, Any]:
    """CPU model, cores, ISA flags, OS, Python and library versions (torch's from its metadata: no import)."""
    flags: set[str] = set()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and name in (
                    "",
                    platform.machine(),
                    platform.processor(),
                ):
                    name = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    versions = {}
    for package in ("edgeclip", "onnxruntime", "onnxruntime-gpu", "numpy", "opencv-python-headless", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "isa": {
            flag: flag in flags for flag in (ARM_FLAGS if platform.machine() in ("aarch64", "arm64") else X86_FLAGS)
        },
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "backend": backend,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _session_settings(backend: str, threads: int | None) -> dict[str, Any] | None:
    """The backend's session options as the runners got them (ONNX Runtime: OrtOptions; PyTorch: TorchOptions)."""
    if backend in ("torch", "torch-cuda"):
        from edgeclip.runtime.backends.torch import TorchOptions

        return asdict(TorchOptions(device="cuda" if backend == "torch-cuda" else "cpu", threads=threads))
    if not backend.startswith("onnxruntime"):
        return None
    from edgeclip.runtime.backends.onnxruntime import CPU_SLICE, PROVIDERS, OrtOptions

    settings = asdict(OrtOptions(providers=PROVIDERS[backend], intra_op_threads=threads))
    if backend == "onnxruntime":  # what `options_for` sets on the CPU provider, for fp16 graphs and the others
        settings["max_rows"] = CPU_SLICE
        settings["fp16_graphs"] = {"keep_fp16_weights": True, "shared_arena": True}
        settings["other_graphs"] = {"shrink_arena": True}
    return settings


# ---------------------------------------------------------------- output


def _isa_text(machine: dict[str, Any]) -> str:
    return ", ".join(k for k, v in machine["isa"].items() if v) or "no listed ISA extensions"


def _speed_lines(result: BenchResult) -> list[list[str]]:
    rows = []
    for r in result.speed:
        unit = "img/s" if r.tower == "image" else "txt/s"
        rows.append([
            r.tower, str(r.batch), r.precision, f"{r.items_per_s:.1f} {unit}", f"{r.median_ms:.2f}",
            f"{r.p50_ms:.2f}" if r.batch == 1 else "", f"{r.p99_ms:.2f}" if r.batch == 1 else "",
            f"{r.vs_eager:.2f}x" if r.vs_eager is not None else "",
        ])  # fmt: skip
    return rows


_SPEED_HEAD = ["tower", "batch", "precision", "throughput", "ms/call", "p50 ms", "p99 ms", "vs eager"]
_PRE_TITLE = f"{FRAME[0]}x{FRAME[1]} JPEG (decode + resize/crop/normalize) or decoded frame (resize onwards)"
_PRE_HEAD = ["batch", "mode", "source", "threads", "ms", "ms/image", "share of model time"]
_MEM_HEAD = ["precision", "graphs", "graph MiB", "peak RSS MiB", "baseline MiB", "RSS/graphs", "load s"]
_PIPE_HEAD = ["batch", "precision", "CPU preprocess + graph ms", "device preprocess + graph ms", "speedup"]


def _pipe_lines(result: BenchResult) -> list[list[str]]:
    return [
        [str(r.batch), r.precision, f"{r.cpu_preprocess_ms:.2f}", f"{r.device_preprocess_ms:.2f}", f"{r.speedup:.2f}x"]
        for r in result.pipeline
    ]


def _pre_lines(result: BenchResult) -> list[list[str]]:
    return [
        [str(r.batch), r.mode, r.source, str(r.threads), f"{r.median_ms:.1f}", f"{r.per_image_ms:.2f}",
         ", ".join(f"{p} {share:.1%}" for p, share in r.share_of_model.items() if p != EAGER)]
        for r in result.preprocess
    ]  # fmt: skip


def _mem_lines(result: BenchResult) -> list[list[str]]:
    return [
        [r.precision, " ".join(f"{t}:{p}" for t, p in r.graphs.items()), f"{r.graph_mib:.1f}", f"{r.peak_rss_mib:.1f}",
         f"{r.baseline_rss_mib:.1f}", f"{r.rss_over_graphs:.2f}x", f"{r.load_s:.2f}"]
        for r in result.memory
    ]  # fmt: skip


def _header(result: BenchResult) -> str:
    m = result.machine
    threads = result.threads if result.threads is not None else "default"
    return (
        f"{result.model} ({result.bundle}) on {result.backend}, threads {threads}, {result.repeats} repeats; "
        f"{m['cpu']}, {m['cores']} cores ({_isa_text(m)}); onnxruntime {m['versions'].get('onnxruntime', '?')}"
    )


def _eager_text(result: BenchResult) -> str:
    e = result.eager or {}
    if "skipped" in e:
        return f"PyTorch eager: not measured ({e['skipped']})"
    where = f"on {e['device']}, " if e.get("device", "cpu") != "cpu" else ""
    return f"PyTorch eager fp32 (torch {e['torch']}, {where}{e['threads']} threads) from {e['checkpoint']}"


def table(result: BenchResult) -> str:
    """The plain-text report `edgeclip bench` prints."""
    out = [_header(result), _eager_text(result), ""]
    out += _aligned(_SPEED_HEAD, _speed_lines(result))
    if result.preprocess:
        out += ["", f"preprocessing, {_PRE_TITLE}:"]
        out += _aligned(_PRE_HEAD, _pre_lines(result))
    if result.pipeline:
        out += ["", f"decoded {FRAME[0]}x{FRAME[1]} frames to embeddings, preprocessing on the CPU or the device:"]
        out += _aligned(_PIPE_HEAD, _pipe_lines(result))
    if result.memory:
        out += ["", "memory, a fresh process (open + start + encode both towers):"]
        out += _aligned(_MEM_HEAD, _mem_lines(result))
    out += [
        "",
        "load s (start the graphs, in this process): " + ", ".join(f"{p} {s:.2f}" for p, s in result.load_s.items()),
    ]
    return "\n".join(out)


def markdown(result: BenchResult) -> str:
    """The report as Markdown tables, for benchmarks/RESULTS.md."""
    out = [f"**{_header(result)}**", "", _eager_text(result), ""]
    out += _md(_SPEED_HEAD, _speed_lines(result))
    if result.preprocess:
        out += ["", f"Preprocessing, {_PRE_TITLE}:", ""]
        out += _md(_PRE_HEAD, _pre_lines(result))
    if result.pipeline:
        out += ["", f"Decoded {FRAME[0]}x{FRAME[1]} frames to embeddings, preprocessing on the CPU or the device:", ""]
        out += _md(_PIPE_HEAD, _pipe_lines(result))
    if result.memory:
        out += ["", "Memory, a fresh process (open + start + encode both towers):", ""]
        out += _md(_MEM_HEAD, _mem_lines(result))
    return "\n".join(out)


def _aligned(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (head, *rows)]


def _md(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
