"""`edgeclip bench` on the built-in bundle (tiny: seconds): the JSON schema, the table and Markdown outputs, that
--precision picks the intended graphs, that torch stays unimported without the eager comparison, and error text."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgeclip.runtime
from edgeclip import bench as lib
from edgeclip.bundle import MANIFEST_NAME, Bundle
from edgeclip.cli import main
from edgeclip.errors import BundleError, InputError
from edgeclip.preprocess import default_threads

QUICK = ["--repeats", "2", "--batch", "1,2"]


@pytest.fixture(scope="module", autouse=True)
def _fp32_builtin(tmp_path_factory):
    """The built-in bundle as these tests know it: its fp32 graphs only (the shipped one also carries fp16 and int8,
    which would multiply every case). Its graphs and weights are the shipped ones, so eager still compares."""
    shipped = edgeclip.runtime.builtin_bundle_path()
    folder = tmp_path_factory.mktemp("builtin") / "bundle"
    folder.mkdir()
    manifest = json.loads((shipped / MANIFEST_NAME).read_text())
    manifest["graphs"] = [g for g in manifest["graphs"] if g["precision"] == "fp32"]
    for graph in manifest["graphs"]:
        for name in filter(None, (graph["file"], graph.get("data"))):
            shutil.copy(shipped / name, folder / name)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(edgeclip.runtime, "builtin_bundle_path", lambda: folder)
        patch.setattr(lib, "SETTLE_S", 0.0)  # the pause between timed calls is for real measurements
        yield folder


def test_every_timed_call_starts_after_the_settle_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(lib, "SETTLE_S", 0.25)
    monkeypatch.setattr(lib.time, "sleep", lambda s: events.append(f"sleep {s}"))
    cases = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    times = lib._alternate(cases, 3, lambda: None)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    timed = events[2 * lib.WARMUP :]  # warm-up calls need no pause
    assert timed == ["sleep 0.25", "a", "sleep 0.25", "b"] * 3


def run(*args: object):
    result = CliRunner().invoke(main, ["bench", *(str(a) for a in args)])
    assert "Traceback" not in result.output + result.stderr
    return result


@pytest.fixture(scope="module")
def full_json() -> dict:
    result = run(*QUICK, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def two_precisions(tmp_path_factory) -> Path:
    """The built-in bundle with a second precision: its fp32 graphs listed again as int8 for ONNX Runtime CPU (the
    bench only needs two graphs told apart by precision; what is inside does not matter here)."""
    folder = tmp_path_factory.mktemp("bundle") / "two"
    shutil.copytree(edgeclip.runtime.builtin_bundle_path(), folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    extra = []
    for graph in manifest["graphs"]:
        copy = dict(graph, precision="int8", file=f"{graph['tower']}-int8.onnx", backends=["onnxruntime"])
        copy |= {"scheme": "test-copy", "gate": {"passed": True}}
        shutil.copy(folder / graph["file"], folder / copy["file"])
        extra.append(copy)
    manifest["graphs"] += extra
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    Bundle.open(folder)
    return folder


def test_json_schema(full_json):
    r = full_json
    assert r["backend"] == "onnxruntime" and r["model"] == "tiny" and r["repeats"] == 2
    machine = r["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["python"] and machine["os"]
    assert "onnxruntime" in machine["versions"] and "numpy" in machine["versions"]
    assert all(isinstance(v, bool) for v in machine["isa"].values()) and machine["isa"]
    assert r["eager"]["checkpoint"].endswith("tiny.safetensors") and r["eager"]["torch"]
    cases = {(s["tower"], s["batch"], s["precision"]) for s in r["speed"]}
    assert cases == {(t, b, p) for t in ("image", "text") for b in (1, 2) for p in ("fp32", "eager")}
    for s in r["speed"]:
        assert s["items_per_s"] > 0 and s["p99_ms"] >= s["p50_ms"] > 0
        assert s["calls"] == (lib.LATENCY_ROUNDS if s["batch"] == 1 else 2)
        assert (s["vs_eager"] is None) == (s["precision"] == "eager")
        if s["vs_eager"] is not None:
            eager = next(e for e in r["speed"] if e["precision"] == "eager" and e["tower"] == s["tower"]
                         and e["batch"] == s["batch"])  # fmt: skip
            assert s["vs_eager"] == pytest.approx(s["items_per_s"] / eager["items_per_s"], rel=0.01)
    pre = {(p["batch"], p["mode"], p["source"], p["threads"]) for p in r["preprocess"]}
    threads = {1: [1], 2: sorted({1, default_threads()})}  # a batch also on the threads `Model` gives it
    modes, sources = ("exact", "fast"), ("jpeg", "frame")
    assert pre == {(b, m, s, n) for b in (1, 2) for m in modes for s in sources for n in threads[b]}
    assert len(r["preprocess"]) == len(pre)
    assert all(p["median_ms"] > 0 and set(p["share_of_model"]) == {"fp32", "eager"} for p in r["preprocess"])
    (mem,) = r["memory"]
    assert mem["precision"] == "fp32" and mem["graphs"] == {"image": "fp32", "text": "fp32"}
    graphs = edgeclip.runtime.builtin_bundle_path().glob("*.onnx*")  # the graphs and their weights
    size = sum(f.stat().st_size for f in graphs) / 2**20
    assert mem["graph_mib"] == pytest.approx(size, abs=0.1)
    assert mem["peak_rss_mib"] > mem["baseline_rss_mib"] > 0 and mem["load_s"] > 0 and mem["batch"] == 2
    assert mem["rss_over_graphs"] == pytest.approx(mem["peak_rss_mib"] / mem["graph_mib"], rel=0.01)
    assert set(r["load_s"]) == {"fp32"}


def test_table_and_markdown(two_precisions):
    base = ["--bundle", two_precisions, "--repeats", "1", "--batch", "1", "--no-memory"]
    table = run(*base, "--tower", "image")
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "on onnxruntime" in lines[0] and "not measured" in lines[1]  # a copied bundle: no checkpoint known
    head = next(i for i, line in enumerate(lines) if line.startswith("tower"))
    assert [line.split()[2] for line in lines[head + 1 : head + 3]] == ["fp32", "int8"]
    assert "preprocessing, 1920x1080 JPEG" in table.stdout and "text" not in lines[head + 1]
    pre = next(i for i, line in enumerate(lines) if line.startswith("batch  mode"))
    assert [line.split()[1:3] for line in lines[pre + 1 : pre + 5]] == [
        ["exact", "jpeg"], ["exact", "frame"], ["fast", "jpeg"], ["fast", "frame"],
    ]  # fmt: skip
    md = run(*base, "--markdown", "--precision", "fp32", "--tower", "text")
    assert md.exit_code == 0, md.stderr
    assert "| tower | batch | precision |" in md.stdout and "|---|" in md.stdout
    # No int8 row ("int8" alone would match the machine line on a CPU with the amx_int8 flag).
    assert "| text | 1 | fp32 |" in md.stdout and "| int8 |" not in md.stdout and "Preprocessing" not in md.stdout


def test_precision_picks_the_graph(two_precisions):
    config = lib.BenchConfig(bundle=two_precisions, batches=(1,), repeats=1, eager=False, preprocess=False)
    only = lib.bench(replace(config, precisions=("int8",)))
    assert {s.precision for s in only.speed} == {"int8"} and set(only.load_s) == {"int8"}
    assert [m.graphs for m in only.memory] == [{"image": "int8", "text": "int8"}]
    both = lib.bench(replace(config, memory=False))
    assert {s.precision for s in both.speed} == {"fp32", "int8"}


def test_no_torch_without_eager():
    code = (
        "import sys; import edgeclip.bench; from edgeclip.bench import BenchConfig, bench\n"
        "edgeclip.bench.SETTLE_S = 0.0\n"
        "r = bench(BenchConfig(batches=(1,), repeats=1, eager=False, memory=False))\n"
        "assert r.eager == {'skipped': 'not asked for (--no-eager)'}, r.eager\n"
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, 'torch or onnx was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_peak_rss_is_the_childs_own():
    # A child of a big process must not report the parent's memory (Linux carries ru_maxrss across exec).
    ballast = np.ones(64 * 2**20 // 8)  # 64 MiB held by this process
    code = "from edgeclip.bench import peak_rss_kib; print(peak_rss_kib())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) < lib.peak_rss_kib() - 60 * 1024, (out, ballast.size)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "0"], "batch sizes must be whole numbers >= 1, got '0' in --batch 0"),
        (["--batch", "1,,8"], "--batch takes a comma-separated list, got '1,,8'"),
        (["--precision", "fp8"], "unknown precision 'fp8' in --precision fp8; choose from fp32, fp16, int8"),
        (["--tower", "audio"], "unknown tower 'audio' in --tower audio; choose from image, text"),
        (
            ["--precision", "fp32,int8"],
            "has no int8 graph for backend onnxruntime (it has fp32); add one with 'edgeclip quantize",
        ),
        (["--bundle", "/nonexistent/bundle"], "no bundle at /nonexistent/bundle"),
        (["--torch-checkpoint", "/nonexistent/x.pt"], "no checkpoint at /nonexistent/x.pt"),
    ],
)
def test_errors(args, message):
    result = run(*args, "--repeats", "1", "--batch", "1", "--no-memory") if "--batch" not in args else run(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_eager_needs_a_checkpoint(two_precisions):
    result = run("--bundle", two_precisions, "--eager", "--repeats", "1", "--batch", "1", "--no-memory")
    assert result.exit_code == 1
    assert "the eager comparison needs the checkpoint bundle" in result.stderr and "--torch-checkpoint" in result.stderr


def test_checkpoint_of_another_model(tmp_path):
    from edgeclip import builtin
    from edgeclip.checkpoint import save_checkpoint
    from edgeclip.models import CLIP

    save_checkpoint(CLIP(replace(builtin.config(), embed_dim=64)), tmp_path / "other.safetensors")
    result = run("--torch-checkpoint", tmp_path / "other.safetensors", "--repeats", "1", "--batch", "1", "--no-memory")
    assert result.exit_code == 1
    assert (
        "is not the model of bundle" in result.stderr and "embedding size 64 against the bundle's 128" in result.stderr
    )


def test_config_errors():
    with pytest.raises(InputError, match="repeats must be a whole number >= 1, got 0"):
        lib.BenchConfig(repeats=0)
    with pytest.raises(InputError, match="batch sizes must be whole numbers >= 1"):
        lib.BenchConfig(batches=())
    with pytest.raises(BundleError, match="has no fp16 graph"):
        lib.bench(lib.BenchConfig(precisions=("fp16",), eager=False, memory=False))


def test_fuse_transformer(tmp_path):
    from edgeclip.optimize import fuse_transformer, fused_parity

    plain, fused = edgeclip.runtime.builtin_bundle_path() / "text.onnx", tmp_path / "text-fused.onnx"
    report = fuse_transformer(plain, fused)
    assert fused.is_file() and report["nodes_after"] < report["nodes_before"]
    assert report["fused"].get("BiasGelu") == 2 and report["ops_after"]["BiasGelu"] == 2, report  # 2 layers' MLPs
    ids = np.random.default_rng(0).integers(1, 49406, (3, 32), dtype=np.int64)
    ids[:, [5, 9, 31]] = 49407  # end of text at three positions
    parity = fused_parity(plain, fused, [{"input_ids": ids}, {"input_ids": ids[:1, :10]}])
    assert parity["min_cosine"] >= 0.99999 and parity["max_abs_diff"] < 1e-4, parity
    with pytest.raises(InputError, match="is the input graph"):
        fuse_transformer(plain, plain)
    with pytest.raises(InputError, match="no ONNX graph at"):
        fuse_transformer(tmp_path / "missing.onnx", tmp_path / "out.onnx")


def test_ort_default_settings_keep_the_outputs():
    """Spinning on (the default) and off give the same embeddings."""
    from edgeclip.runtime.backends.onnxruntime import OrtOptions, OrtRunner

    key = "session.intra_op.allow_spinning"
    assert OrtOptions().session_options().get_session_config_entry(key) == "1"
    assert OrtOptions(allow_spinning=False).session_options().get_session_config_entry(key) == "0"
    with pytest.raises(InputError, match="allow_spinning must be True or False, got 'no'"):
        OrtOptions(allow_spinning="no")  # type: ignore[arg-type]
    bundle = Bundle.open(edgeclip.runtime.builtin_bundle_path())
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 49406, (4, 32), dtype=np.int64)
    ids[:, 7] = 49407
    feeds = {"image": {"pixels": rng.standard_normal((4, 3, 64, 64)).astype(np.float32)}, "text": {"input_ids": ids}}
    for tower, feed in feeds.items():
        entry = bundle.graph(tower)
        outs = []
        for spin in (False, True):
            options = OrtOptions(allow_spinning=spin, intra_op_threads=2)
            with OrtRunner(bundle.file(entry), entry.inputs, entry.outputs, options=options) as runner:
                outs.append(runner.infer(feed)[entry.outputs[0].name])
        np.testing.assert_array_equal(outs[0], outs[1])


def test_result_round_trip(full_json):
    result = lib.BenchResult.from_dict(full_json)
    assert json.loads(json.dumps(result.to_dict())) == full_json
    assert lib.markdown(result).startswith("**tiny (") and "| image | 1 | fp32 |" in lib.markdown(result)
    assert "fp32" in lib.table(result).splitlines()[4]
