"""A small driver of the CUDA kernels for compute-sanitizer (benchmarks/gpu_check.sh): the
forward kernel, the backward kernel with atomics and the deterministic backward (tap records,
sort, gather), for each mode and padding, in float32 and float16, on shapes with several blocks
per image and a partial last block.

    compute-sanitizer --tool memcheck python benchmarks/sanitizer_driver.py
"""
import argparse
import itertools

import torch

import stn_ext


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def main() -> None:
    parser = build_parser()
    parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA device is available")
    generator = torch.Generator(device="cuda").manual_seed(0)
    for (mode, padding_mode, align_corners), dtype, deterministic in itertools.product(
            itertools.product(("bilinear", "nearest"), ("zeros", "border", "reflection"),
                              (False, True)),
            (torch.float32, torch.float16), (False, True)):
        x = torch.randn(3, 5, 19, 23, device="cuda", dtype=dtype, generator=generator)
        theta = (torch.eye(2, 3, device="cuda")
                 + 0.3 * torch.randn(3, 2, 3, device="cuda", generator=generator)).to(dtype)
        torch.use_deterministic_algorithms(deterministic)
        out = stn_ext.affine_grid_sample(x.requires_grad_(), theta.requires_grad_(), (17, 29),
                                         mode=mode, padding_mode=padding_mode,
                                         align_corners=align_corners, backend="cuda")
        out.backward(torch.randn_like(out))
    torch.use_deterministic_algorithms(False)
    torch.cuda.synchronize()
    print("sanitizer_driver.py: done")


if __name__ == "__main__":
    main()
