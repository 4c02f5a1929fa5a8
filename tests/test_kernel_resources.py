"""Structural checks of the built CUDA kernels, read statically (benchmarks/kernel_resources.py:
cuobjdump, no GPU): a float32/float16/bfloat16 kernel keeps its per-thread state in registers,
with no stack frame or local memory (both live in slow device memory). KNOWN_STACK_USE lists
the kernels that still have a stack frame, what to redesign (issue "GPU speed by design"); a new
kernel with one fails, and so does an entry that no longer matches (the list only shrinks)."""
import re
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import kernel_resources  # noqa: E402

# Kernels (by label, kernel_resources.kernel_label) with a stack frame today, and why.
KNOWN_STACK_USE = {
    r"forward_kernel<(BFloat16|Half), ": "fused forward, half/bfloat16: spills (ptxas keeps "
                                        "it at 32-40 registers)",
    r"backward_staged_kernel<\w+, long>": "staged backward, 64-bit indices: 16 bytes of spills "
                                          "at 64 registers",
    r"gather_input_grad_kernel<\w+, 2>": "2-D record gather (16 bytes)",
    r"sample_(forward|backward)_kernel<\w+, 3, LinearPolicy": "trilinear: 8 taps' arrays",
    r"sample_backward_kernel<\w+, 2, NearestPolicy, AffineMapSource": "theta reduction (8 bytes)",
    r"sample_forward_kernel<float, 3, NearestPolicy, DenseGridSource": "8 bytes",
}

CUOBJDUMP_SAMPLE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]
host = linux
compile_size = 64bit

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN7stn_ext12_GLOBAL__N_114forward_kernelIfiEEvPKT_:
  REG:40 STACK:120 SHARED:0 LOCAL:0 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN7stn_ext12_GLOBAL__N_124gather_input_grad_kernelIdLi3EEEvPKT_:
  REG:48 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:520 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parses_cuobjdump_output():
    rows = kernel_resources.resource_rows(CUOBJDUMP_SAMPLE)
    assert [(r["arch"], r["registers"], r["stack_bytes"], r["local_bytes"]) for r in rows] == [
        ("sm_90", 40, 120, 0), ("sm_90", 48, 0, 0)]
    if kernel_resources.shutil.which("c++filt"):
        assert [r["kernel"] for r in rows] == ["forward_kernel<float, int>",
                                              "gather_input_grad_kernel<double, 3>"]


def _built_kernels():
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("stn_ext::grid_sample", "CUDA")
    cuobjdump = kernel_resources.find_cuobjdump()
    if not has_cuda or cuobjdump is None:
        pytest.skip("needs the extension built with its CUDA kernels, and cuobjdump")
    return kernel_resources.read_resources(kernel_resources.extension_path(), cuobjdump)


def test_no_new_stack_or_local_memory():
    rows = [r for r in _built_kernels() if not r["kernel"].split("<", 1)[1].startswith("double")]
    assert rows, "no float32/float16/bfloat16 kernels found"
    with_stack = [r for r in rows if r["stack_bytes"] or r["local_bytes"]]
    unexpected = [f"{r['arch']} {r['kernel']}: {r['stack_bytes']} B stack, {r['local_bytes']} B "
                  f"local" for r in with_stack
                  if not any(re.match(pattern, r["kernel"]) for pattern in KNOWN_STACK_USE)]
    assert not unexpected, "\n".join(unexpected)
    stale = [pattern for pattern in KNOWN_STACK_USE
             if not any(re.match(pattern, r["kernel"]) for r in with_stack)]
    assert not stale, f"no longer use a stack (remove from KNOWN_STACK_USE): {stale}"
