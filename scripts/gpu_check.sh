#!/usr/bin/env bash
# The GPU checks of the PyTorch backend, in one run of about 5 minutes on a machine with an NVIDIA GPU, a CUDA
# build of PyTorch and edgeclip installed (TensorRT and onnxruntime-gpu are not needed).
#
#   scripts/gpu_check.sh [OUT_DIR]      (default: gpu-check/ in the working directory)
#
# 1. the `gpu` tests of the torch backend (parity with ONNX Runtime CPU, GPU preprocessing against the CPU path,
#    CUDA graphs and torch.compile against eager);
# 2. `edgeclip bench --backend torch-cuda`, fp32 and fp16, batch 1/8/64, against PyTorch eager fp32 on the same GPU,
#    with the pipeline rows (decoded 1080p frames preprocessed on the CPU vs on the GPU);
# 3. the runner with CUDA graphs on and off (fp16 and fp32, batch 1/8/64).
# Every step writes its output to OUT_DIR and the script goes on after a failed step; it exits non-zero if any failed.
set -u -o pipefail

out="${1:-gpu-check}"
mkdir -p "$out"
python="${PYTHON:-python}"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output and status
  local name="$1" limit="$2"
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$out/$name.txt" 2>"$out/$name.err"
  local rc=$?
  echo "$rc" >"$out/$name.rc"
  if [ "$rc" -ne 0 ]; then
    failed=1
    echo "   failed (exit $rc); the last lines of its output:"
    tail -n 15 "$out/$name.txt" "$out/$name.err"
  fi
}

step environment 60 bash -c "nvidia-smi; $python -c 'import torch, edgeclip; print(\"torch\", torch.__version__, \
\"cuda\", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0)); \
print(edgeclip.available_backends())'"

step gpu-tests 150 "$python" -m pytest -m "gpu and not tensorrt" tests/test_gpu_torch.py tests/test_torch_backend.py \
  -q -p no:cacheprovider -ra

edgeclip=("$python" -c 'from edgeclip.cli import main; main()')
step bench-torch-cuda 150 "${edgeclip[@]}" bench --backend torch-cuda --precision fp32,fp16 --batch 1,8,64 --no-memory \
  --json
if [ -s "$out/bench-torch-cuda.txt" ]; then
  "$python" - "$out/bench-torch-cuda.txt" >"$out/bench-torch-cuda.md" 2>&1 <<'EOF' || true
import json, sys
from edgeclip.bench import BenchResult, markdown
print(markdown(BenchResult.from_dict(json.load(open(sys.argv[1])))))
EOF
fi

step cuda-graphs 90 "$python" - <<'EOF'
import statistics, time
import numpy as np
from edgeclip.bundle import Bundle
from edgeclip.runtime import builtin_bundle_path, runner_request
from edgeclip.runtime.backends import torch as tb

bundle = Bundle.open(builtin_bundle_path())
size = bundle.manifest.contract.image.size
for precision in ("fp16", "fp32"):
    request = runner_request(bundle, bundle.graph("image", precision, backend="torch-cuda"))
    eager = tb.create("torch-cuda", request)
    graphs = tb.create("torch-cuda", request, tb.TorchOptions(device="cuda", cuda_graphs=True))
    for batch in (1, 8, 64):
        feed = {"pixels": np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)}
        want = eager.infer(feed)["image_embeds"]
        got = graphs.infer(feed)["image_embeds"]
        times = {}
        for name, runner in (("eager", eager), ("cuda_graphs", graphs)):
            for _ in range(3):
                runner.infer(feed)
            samples = []
            for _ in range(30):
                t0 = time.perf_counter()
                runner.infer(feed)
                samples.append((time.perf_counter() - t0) * 1e3)
            times[name] = statistics.median(samples)
        print(f"image {precision} batch {batch}: eager {times['eager']:.3f} ms, cuda graphs {times['cuda_graphs']:.3f} ms "
              f"({times['eager'] / times['cuda_graphs']:.2f}x), max |diff| {np.abs(got - want).max():.2e}")
EOF

echo "results in $out/ (failed steps: $failed)"
exit "$failed"
