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
    r"backward_staged_kernel<\(Interpolation\)\d, \w+, long>":
        "staged backward, 64-bit indices: 16 bytes of spills at 64 registers",
    r"gather_input_grad_kernel<\w+, 2>": "2-D record gather (16 bytes)",
    r"sample_(forward|backward)_kernel<\w+, 3, LinearPolicy": "trilinear: 8 taps' arrays",
    r"sample_backward_kernel<\w+, 2, NearestPolicy, AffineMapSource": "theta reduction (8 bytes)",
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


def _cuobjdump():
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("stn_ext::grid_sample", "CUDA")
    cuobjdump = kernel_resources.find_cuobjdump()
    if not has_cuda or cuobjdump is None:
        pytest.skip("needs the extension built with its CUDA kernels, and cuobjdump")
    return cuobjdump


def _built_kernels():
    return kernel_resources.read_resources(kernel_resources.extension_path(), _cuobjdump())


def test_no_new_stack_or_local_memory():
    rows = [r for r in _built_kernels()
            if "double" not in re.split(r"[<>,\s]+", r["kernel"].split("<", 1)[1])]
    assert rows, "no float32/float16/bfloat16 kernels found"
    with_stack = [r for r in rows if r["stack_bytes"] or r["local_bytes"]]
    unexpected = [f"{r['arch']} {r['kernel']}: {r['stack_bytes']} B stack, {r['local_bytes']} B "
                  f"local" for r in with_stack
                  if not any(re.match(pattern, r["kernel"]) for pattern in KNOWN_STACK_USE)]
    assert not unexpected, "\n".join(unexpected)
    stale = [pattern for pattern in KNOWN_STACK_USE
             if not any(re.match(pattern, r["kernel"]) for r in with_stack)]
    assert not stale, f"no longer use a stack (remove from KNOWN_STACK_USE): {stale}"


# Channels in one 16-byte vector (sampling_common.cuh's kChannelVector), by dtype as kernel
# labels spell it.
CHANNEL_VECTOR_KERNELS = {"double": 2, "float": 4, "Half": 8, "BFloat16": 8}


def test_lanes_across_channels_use_16_byte_accesses():
    """The kernels with lanes across channels (kVec > 1: sampling_common.cuh's ChannelSplit) load
    16 bytes per instruction (LDG.E.128 in SASS) and the forward kernels store so too (STG.E.128),
    in the fused op and in the general ops, for every mode, rank and coordinate source; the
    kernels of a thread per pixel do neither."""
    sass = kernel_resources.read_sass(kernel_resources.extension_path(), _cuobjdump())
    # (the fused op's kernels take the mode first, as "(Interpolation)0")
    kernel_args = r"_kernel<(?:\(Interpolation\)\d, )?(\w+), .*\b(\d+)>$"
    vector_kernels = [label for label in sass
                      if re.search(kernel_args, label)
                      and label.startswith(("forward_kernel<", "backward_kernel<",
                                            "sample_forward_kernel<", "sample_backward_kernel<"))]
    checked = 0
    for label in vector_kernels:
        dtype, vec = re.search(kernel_args, label).groups()
        code = sass[label]
        if int(vec) == 1:
            assert not re.search(r"[LS]TG\.E\.128", code), label
            continue
        assert int(vec) == CHANNEL_VECTOR_KERNELS[dtype], label
        assert re.search(r"LDG\.E\.128", code), label
        if "forward" in label:
            assert re.search(r"STG\.E\.128", code), label
        checked += 1
    # fused: 4 dtypes x 2 index types x 2 modes x forward/backward; general: 4 dtypes x 2
    # sources x (nearest, bilinear, bicubic in 2-D; nearest, trilinear in 3-D) x
    # forward/backward
    assert checked == 32 + 80
