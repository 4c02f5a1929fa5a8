"""Builds stn_ext._C: the CPU kernels always, the CUDA kernels whenever a CUDA toolkit is found
(no GPU is needed to compile them)."""
import glob
import os
import platform

from setuptools import setup

# torch guesses CUDA_HOME from the nvcc on PATH; where that is a wrapper script (as in
# /usr/local/bin here) the guess holds no CUDA libraries. Prefer the standard toolkit location.
DEFAULT_CUDA_HOME = "/usr/local/cuda"
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and \
        os.path.exists(os.path.join(DEFAULT_CUDA_HOME, "bin", "nvcc")):
    os.environ["CUDA_HOME"] = DEFAULT_CUDA_HOME

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# Ampere and Hopper SASS, plus PTX so newer GPUs can JIT-compile the kernels.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"

sources = (["csrc/affine_grid_sample.cpp", "csrc/grid_sample.cpp", "csrc/library.cpp"]
           + sorted(glob.glob("csrc/autograd/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp")))


def cpu_arch_flags():
    """-march for the C++ kernels: $STN_EXT_CPU_ARCH if set ("native", or "x86-64" for a build
    that runs on any x86-64 CPU), else x86-64-v3 (AVX2 + FMA: ~25% faster kernels) when the
    building CPU has it. The extension is built on the machine that runs it (pip install -e .)."""
    arch = os.environ.get("STN_EXT_CPU_ARCH")
    if arch is None and platform.machine() == "x86_64":
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                flags = next((line.split(":", 1)[1].split() for line in cpuinfo
                              if line.startswith("flags")), [])
        except OSError:
            flags = []
        if {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"} <= set(flags):
            arch = "x86-64-v3"
    return [f"-march={arch}"] if arch else []


# The C++ standard the kernels are written in (the CPU kernels take class-type non-type template
# parameters: C++20), passed to the host compiler and to nvcc alike. torch's BuildExtension adds
# its own -std only where none is given (nvcc refuses two), and its default differs by release
# (c++17 in torch 2.11, c++20 in 2.14).
CXX_STANDARD = "-std=c++20"

# OpenMP: at::parallel_for runs serially without it. No trapping math: lets the compiler
# vectorise the kernels' select-heavy coordinate loops (we never read floating-point traps).
extra_compile_args = {"cxx": [CXX_STANDARD, "-O3", "-fopenmp", "-fno-trapping-math"]
                      + cpu_arch_flags()}
print(f"stn_ext: C++ flags {' '.join(extra_compile_args['cxx'])}")

if CUDA_HOME is not None and os.environ.get("STN_EXT_NO_CUDA") != "1":
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    extra_compile_args["nvcc"] = [CXX_STANDARD, "-O3", "-lineinfo"]
    extension = CUDAExtension
    print(f"stn_ext: building CPU and CUDA kernels (CUDA_HOME={CUDA_HOME}, "
          f"archs {os.environ['TORCH_CUDA_ARCH_LIST']})")
else:
    extension = CppExtension
    print("stn_ext: no CUDA toolkit found (set CUDA_HOME to build the CUDA kernels); "
          "building the CPU kernels only")

setup(
    ext_modules=[
        extension("stn_ext._C", sources, extra_compile_args=extra_compile_args,
                  extra_link_args=["-fopenmp"], include_dirs=[os.path.abspath("csrc")]),
    ],
    cmdclass={"build_ext": BuildExtension},
)
