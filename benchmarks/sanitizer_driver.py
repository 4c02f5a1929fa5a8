"""A small driver of the CUDA kernels for compute-sanitizer (benchmarks/gpu_check.sh): the
forward kernel, the backward kernel with atomics and the deterministic backward (tap records,
sort, gather), for each mode and padding, in float32 and float16, on shapes with several blocks
per image and a partial last block; for the fused op (a small input, which takes the backward
that stages grad_input in shared memory, a larger one, and a larger one of 3 channels with zeros
padding, whose grad_input is gathered per input pixel, with and without an image left to the
fallback) and for the general ops (dense 2-D and 3-D grids, 3-D affine maps, bicubic, fill
values); and channels_last inputs whose pixels' channels are whole 16-byte vectors (float32 and
bfloat16, 16 channels), which take the kernels with lanes across channels (16-byte accesses,
warp shuffles in the general backward).

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
    for (mode, padding_mode, align_corners), dtype, deterministic, in_size in itertools.product(
            itertools.product(("bilinear", "nearest"), ("zeros", "border", "reflection"),
                              (False, True)),
            (torch.float32, torch.float16), (False, True), ((19, 23), (64, 64))):
        x = torch.randn(3, 5, *in_size, device="cuda", dtype=dtype, generator=generator)
        theta = (torch.eye(2, 3, device="cuda")
                 + 0.3 * torch.randn(3, 2, 3, device="cuda", generator=generator)).to(dtype)
        torch.use_deterministic_algorithms(deterministic)
        out = stn_ext.affine_grid_sample(x.requires_grad_(), theta.requires_grad_(), (17, 29),
                                         mode=mode, padding_mode=padding_mode,
                                         align_corners=align_corners, backend="cuda")
        out.backward(torch.randn_like(out))
    for mode, align_corners, deterministic, singular in itertools.product(
            ("bilinear", "nearest"), (False, True), (False, True), (False, True)):
        x = torch.randn(3, 3, 64, 64, device="cuda", generator=generator)
        theta = (torch.eye(2, 3, device="cuda")
                 + 0.3 * torch.randn(3, 2, 3, device="cuda", generator=generator))
        if singular:  # that image takes the scattering fallback (deterministic: the records)
            theta[2] = 0.0
        torch.use_deterministic_algorithms(deterministic)
        out = stn_ext.affine_grid_sample(x.requires_grad_(), theta.requires_grad_(), (61, 67),
                                         mode=mode, align_corners=align_corners, backend="cuda")
        out.backward(torch.randn_like(out))
    for (mode, dims, fill), padding_mode, deterministic in itertools.product(
            (("bilinear", 2, None), ("nearest", 2, None), ("bicubic", 2, [0.5, -1.0, 2.0]),
             ("bilinear", 3, [1.0, 0.0, -1.0]), ("nearest", 3, None)),
            ("zeros", "reflection"), (False, True)):
        fill = fill if padding_mode == "zeros" else None
        x = torch.randn(3, 3, *([9] * dims), device="cuda", generator=generator)
        grid = 1.2 * (2 * torch.rand(3, *([7] * dims), dims, device="cuda", generator=generator)
                      - 1)
        theta = (torch.eye(dims, dims + 1, device="cuda")
                 + 0.3 * torch.randn(3, dims, dims + 1, device="cuda", generator=generator))
        torch.use_deterministic_algorithms(deterministic)
        for coords in (grid, theta):
            args = dict(mode=mode, padding_mode=padding_mode, fill_value=fill, backend="cuda")
            out = (stn_ext.grid_sample(x.requires_grad_(), coords.requires_grad_(), **args)
                   if coords is grid else
                   stn_ext.affine_grid_sample(x.requires_grad_(), coords.requires_grad_(),
                                              (5,) * dims, **args))
            out.backward(torch.randn_like(out))
    for dtype, (mode, fill), deterministic in itertools.product(
            (torch.float32, torch.bfloat16), (("bilinear", None), ("bicubic", 0.5)),
            (False, True)):
        x = torch.randn(3, 16, 40, 40, device="cuda", generator=generator).to(
            dtype=dtype, memory_format=torch.channels_last)
        grid = 1.2 * (2 * torch.rand(3, 21, 27, 2, device="cuda", generator=generator) - 1)
        theta = (torch.eye(2, 3, device="cuda")
                 + 0.3 * torch.randn(3, 2, 3, device="cuda", generator=generator))
        torch.use_deterministic_algorithms(deterministic)
        fused = stn_ext.affine_grid_sample(x.requires_grad_(), theta.to(dtype).requires_grad_(),
                                           (21, 27), mode="bilinear", backend="cuda")
        general = stn_ext.grid_sample(x, grid.to(dtype).requires_grad_(), mode=mode,
                                      fill_value=fill, backend="cuda")
        for out in (fused, general):
            out.backward(torch.randn_like(out))
    torch.use_deterministic_algorithms(False)
    torch.cuda.synchronize()
    print("sanitizer_driver.py: done")


if __name__ == "__main__":
    main()
