"""The training process keeps freed memory for reuse (edgeclip.train.heap): fewer page faults, the same arithmetic.

Each case runs in a fresh interpreter: the malloc settings are process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# Allocate, touch and free 128 MB in 16 MB buffers three times, as training steps do with their activations; count
# the page faults of the last round.
REUSE = """
import json, resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from edgeclip.train.heap import keep_freed_memory
    assert keep_freed_memory()
def touch():
    buffers = [np.empty(16 << 20, dtype=np.uint8) for _ in range(8)]
    for b in buffers:
        b.fill(1)
    del buffers
touch()
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""

# A few steps of the micro model on the world, through `run` (which keeps freed memory) or with the setting off.
TRAIN = """
import json, sys, tempfile
from pathlib import Path
import edgeclip.train.heap as heap
from edgeclip.train.run import RunSpec, run
if sys.argv[1] == "default":
    heap.keep_freed_memory = lambda: False
with tempfile.TemporaryDirectory() as tmp:
    spec = RunSpec(out=Path(tmp), arch="micro", train={"steps": 4, "batch_size": 16, "ckpt_every": 100},
                   world={"chunk_size": 32, "pool_chunks": 2}, eval=False, progress=False)
    result = run(spec)
print(json.dumps(result.losses))
"""


def _child(code: str, case: str) -> object:
    done = subprocess.run([sys.executable, "-c", code, case], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_a_freed_block_is_reused_without_page_faults():
    pages = (128 << 20) // 4096
    default, keep = _child(REUSE, "default"), _child(REUSE, "keep")
    assert isinstance(default, int) and isinstance(keep, int)
    # glibc's own thresholds: part of it went back to the system (4,120 of the 32,768 pages on glibc 2.36)
    assert default > pages // 16, default
    assert keep < pages // 100, keep  # kept: reused in place


@glibc
def test_keeping_freed_memory_changes_no_training_step():
    default, keep = _child(TRAIN, "default"), _child(TRAIN, "keep")
    assert isinstance(keep, list) and len(keep) == 4
    assert keep == default  # bit for bit: where the tensors live, not what is computed


def test_keep_freed_memory_answers_where_it_cannot():
    from edgeclip.train.heap import keep_freed_memory

    applies = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is applies
