"""Grid-sampling microbenchmark: every backend that runs on the device, side by side, for the
forward pass, the backward pass alone and both, with milliseconds, effective bandwidth and
speedup over PyTorch's own ops. Workloads: stn_ext.affine_grid_sample (2-D, and a 3-D volume) and
stn_ext.grid_sample with a smooth dense grid (bilinear and bicubic). On a CPU the backends are timed in alternating rounds
and a speedup is the median of the per-round ratios, so the machine's drift cancels out.

    python benchmarks/bench_sampling.py --device cpu --json          # full run, recorded under
                                                                     # benchmarks/results/
    python benchmarks/bench_sampling.py --device cuda --json $OUT/sampling.json
    python benchmarks/bench_sampling.py --quick                      # under 2 min on 2 CPU cores

Backends: torch (F.affine_grid + F.grid_sample, or F.grid_sample, eager), torch-compile (the same
under torch.compile), and ours: cpu on CPU, cuda and triton on GPU (triton on CPU would only run
interpreted, far too slowly to time), and on GPU cuda-deterministic and triton-deterministic: the
same backends called under torch.use_deterministic_algorithms(True), side by side with the
others (our CPU kernels are deterministic in any case). On CPU, where OpenCV is installed (the
`bench` extra: opencv-python-headless), also opencv: cv2.warpAffine, bilinear, one call per
image on float32 HWC images (channels_last input), forward of 2-D affine workloads only, with as
many threads as torch.
"""
import argparse
import contextlib
import functools
import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import stn_ext
from _common import (COPY_BENCH_BYTES, HelpFormatter, Stopwatch, add_common_arguments, copy_gbps,
                     describe_error, finish_metadata, fresh_compile_caches, paired_speedup,
                     parse_checked, resolve_json_path, run_metadata, side_by_side_ms,
                     write_json)

AFFINE, GRID = "affine_grid_sample", "grid_sample"


@dataclass(frozen=True)
class Workload:
    op: str  # AFFINE (theta) or GRID (a smooth random dense grid)
    shape: tuple  # the input's shape, then the output's spatial size
    mode: Optional[str] = None  # None: --mode
    channels_last: bool = False  # input (and grad_output) in channels_last: HWC images


SHAPES = {
    "stn": Workload(AFFINE, (64, 3, 32, 32, 32, 32)),  # the CIFAR-10 STN's training step
    "batch256": Workload(AFFINE, (256, 3, 32, 32, 32, 32)),
    "features": Workload(AFFINE, (32, 64, 64, 64, 64, 64)),  # a feature map deep in a network
    "large": Workload(AFFINE, (8, 3, 1024, 1024, 1024, 1024)),
    "upsample": Workload(AFFINE, (16, 3, 256, 256, 512, 512)),
    "grid": Workload(GRID, (64, 3, 32, 32, 32, 32)),  # flow warping at the STN's size
    "grid-bicubic": Workload(GRID, (64, 3, 32, 32, 32, 32), "bicubic"),
    "volume": Workload(AFFINE, (4, 8, 32, 32, 32, 32, 32, 32)),  # 3-D registration
    # Image warps as OpenCV users hold them (HWC): the STN's size, photos, large grayscale.
    "stn-hwc": Workload(AFFINE, (64, 3, 32, 32, 32, 32), channels_last=True),
    "photo512-hwc": Workload(AFFINE, (8, 3, 512, 512, 512, 512), channels_last=True),
    "gray1024-hwc": Workload(AFFINE, (8, 1, 1024, 1024, 1024, 1024), channels_last=True),
}
# These also run in bfloat16 and in channels_last (the other shapes in float32 only).
VARIANT_SHAPES = ("batch256", "features")
QUICK_SHAPES = ("stn", "features")
PASSES = ("fwd", "bwd", "fwd+bwd")
QUICK_PASSES = ("fwd", "fwd+bwd")
BACKENDS = ("torch", "torch-compile", "cpu", "cuda", "triton", "cpu-deterministic",
            "cuda-deterministic", "triton-deterministic", "opencv")
# A backend's name with this suffix: the backend under torch.use_deterministic_algorithms(True).
DETERMINISTIC = "-deterministic"
ALIGN_CORNERS = False


@dataclass(frozen=True)
class Case:
    shape_name: str
    op: str
    shape: tuple  # input shape, then output spatial size
    mode: str
    dtype: torch.dtype
    channels_last: bool

    @property
    def dims(self) -> int:
        return (len(self.shape) - 2) // 2

    @property
    def input_shape(self) -> tuple:
        return self.shape[:2 + self.dims]

    @property
    def out_size(self) -> tuple:
        return self.shape[2 + self.dims:]

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def layout(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"


def cases(shape_names: Sequence[str], with_variants: bool, mode: str) -> Iterator[Case]:
    for name in shape_names:
        w = SHAPES[name]
        case = functools.partial(Case, name, w.op, w.shape, w.mode or mode)
        yield case(torch.float32, w.channels_last)
        if with_variants and name in VARIANT_SHAPES:
            yield case(torch.bfloat16, False)
            yield case(torch.float32, True)


def bytes_moved(case: Case, pass_name: str) -> int:
    """The bytes a pass must move at least: the forward reads input and theta (or the grid) and
    writes the output; the backward reads grad_output, input and theta (grid) and writes
    grad_input and grad_theta (grad_grid); fwd+bwd is both (two kernels, so input and theta are
    read twice)."""
    n, c = case.shape[:2]
    element_size = torch.empty((), dtype=case.dtype).element_size()
    input_bytes = math.prod(case.input_shape) * element_size
    output_bytes = n * c * math.prod(case.out_size) * element_size
    coords = (n * case.dims * (case.dims + 1) if case.op == AFFINE
              else n * math.prod(case.out_size) * case.dims)
    theta_bytes = coords * element_size
    forward = input_bytes + theta_bytes + output_bytes
    backward = output_bytes + input_bytes + theta_bytes + input_bytes + theta_bytes
    return {"fwd": forward, "bwd": backward, "fwd+bwd": forward + backward}[pass_name]


def backends_for(device: torch.device, quick: bool) -> List[str]:
    backends = ["torch"]
    if not (quick and device.type == "cpu"):  # inductor takes minutes on a small CPU
        backends.append("torch-compile")
    if device.type == "cpu":
        backends.append("cpu")
        if _opencv() is not None:
            backends.append("opencv")
    else:
        ours = [b for b in stn_ext.available_backends() if b in ("cuda", "triton")]
        backends += ours + [b + DETERMINISTIC for b in ours]
    return backends


def torch_composition(input, theta, out_size, mode, padding_mode):
    grid = F.affine_grid(theta, [input.shape[0], input.shape[1], *out_size],
                         align_corners=ALIGN_CORNERS)
    return F.grid_sample(input, grid, mode=mode, padding_mode=padding_mode,
                         align_corners=ALIGN_CORNERS)


def _opencv():
    """The cv2 module, or None where OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


# OpenCV border modes that equal a padding mode of ours (reflection differs: OpenCV reflects
# about pixel centres or edges without PyTorch's align_corners rule).
OPENCV_BORDERS = {"zeros": "BORDER_CONSTANT", "border": "BORDER_REPLICATE"}


def runs(backend: str, case: Case, pass_name: str, padding_mode: str) -> bool:
    """Whether a backend takes this case and pass (opencv: the forward of 2-D bilinear affine
    warps of float32 HWC images; a deterministic variant: the passes with a backward)."""
    if backend.endswith(DETERMINISTIC):
        return pass_name != "fwd"
    if backend != "opencv":
        return True
    return (case.op == AFFINE and case.dims == 2 and pass_name == "fwd"
            and case.mode == "bilinear" and case.dtype == torch.float32 and case.channels_last
            and padding_mode in OPENCV_BORDERS)


def opencv_matrices(theta: torch.Tensor, in_hw: tuple, out_hw: tuple) -> np.ndarray:
    """cv2.warpAffine's inverse maps (N, 2, 3), output pixel -> input pixel, equal to theta's
    map between normalised coordinates (align_corners=False: pixel centres at (2 i + 1) / size -
    1)."""
    (h, w), (ho, wo) = in_hw, out_hw
    output_to_normalised = np.array([[2 / wo, 0, 1 / wo - 1], [0, 2 / ho, 1 / ho - 1], [0, 0, 1]])
    normalised = theta.detach().double().cpu().numpy() @ output_to_normalised  # (N, 2, 3)
    scale, offset = np.array([[w / 2, 0], [0, h / 2]]), np.array([(w - 1) / 2, (h - 1) / 2])
    matrices = scale @ normalised
    matrices[:, :, 2] += offset
    return matrices


def opencv_warp(case: Case, padding_mode: str) -> Callable:
    """(input, theta) -> output by cv2.warpAffine, one call per image; input channels_last float32,
    read in place as HWC, written into one channels_last output."""
    cv2 = _opencv()
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    border = getattr(cv2, OPENCV_BORDERS[padding_mode])
    ho, wo = case.out_size

    def warp(input, theta):
        n, c, h, w = input.shape
        images = input.detach().permute(0, 2, 3, 1).numpy()  # a view: channels_last is NHWC
        output = np.empty((n, ho, wo, c), dtype=np.float32)
        for image, matrix, out in zip(images, opencv_matrices(theta, (h, w), (ho, wo)), output):
            # one channel: OpenCV writes (Ho, Wo), the same memory as (Ho, Wo, 1)
            cv2.warpAffine(image, matrix, (wo, ho), dst=out if c > 1 else out[..., 0],
                           flags=flags, borderMode=border, borderValue=0)
        return torch.from_numpy(output).permute(0, 3, 1, 2)
    return warp


def make_sampler(backend: str, case: Case, padding_mode: str) -> Callable:
    """(input, theta or grid) -> output for a backend (a deterministic variant's: that of the
    backend it varies; prepare_backend sets the mode around its calls)."""
    backend = backend.removesuffix(DETERMINISTIC)
    if backend == "opencv":
        return opencv_warp(case, padding_mode)
    options = dict(mode=case.mode, padding_mode=padding_mode, align_corners=ALIGN_CORNERS)
    if backend in ("torch", "torch-compile"):
        if case.op == AFFINE:
            sampler = functools.partial(torch_composition, out_size=case.out_size,
                                        mode=case.mode, padding_mode=padding_mode)
        else:
            sampler = functools.partial(F.grid_sample, **options)
        return sampler if backend == "torch" else torch.compile(sampler)
    if case.op == AFFINE:
        return functools.partial(stn_ext.affine_grid_sample, size=case.out_size, **options,
                                 backend=backend)
    return functools.partial(stn_ext.grid_sample, **options, backend=backend)


def random_affine(n: int, generator: torch.Generator) -> torch.Tensor:
    """Rotations of up to 30 degrees, scales 0.8-1.2 and shifts up to 0.2: what an STN learns,
    sampling mostly inside the image and partly in the padding."""
    angle = (torch.rand(n, generator=generator) - 0.5) * math.radians(60)
    scale = 0.8 + 0.4 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.4
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def random_affine_3d(n: int, generator: torch.Generator) -> torch.Tensor:
    """Near-identity 3-D maps: the identity plus up to ~0.1 of rotation, shear and shift."""
    return torch.eye(3, 4) + 0.1 * (torch.rand(n, 3, 4, generator=generator) - 0.5) * 2


def smooth_grid(n: int, out_size: tuple, generator: torch.Generator) -> torch.Tensor:
    """The identity grid plus a smooth random displacement of up to ~5% of the image (a 4x4
    field of offsets, upsampled bilinearly): what optical flow or a deformation looks like."""
    dims = len(out_size)
    identity = F.affine_grid(torch.eye(dims, dims + 1).expand(n, dims, dims + 1),
                             [n, 1, *out_size], align_corners=ALIGN_CORNERS)
    coarse = torch.randn(n, dims, *([4] * dims), generator=generator)
    upsample = "bilinear" if dims == 2 else "trilinear"
    field = F.interpolate(coarse, size=out_size, mode=upsample, align_corners=True)
    return identity + 0.05 * field.movedim(1, -1)


@dataclass
class Tensors:
    input: torch.Tensor
    coords: torch.Tensor  # theta or grid
    grad_output: torch.Tensor


def make_tensors(case: Case, device: torch.device) -> Tensors:
    """Random inputs that require grad, and a grad_output in the input's layout (the same for
    every backend, so that the backward passes read the same memory)."""
    n, c = case.shape[:2]
    generator = torch.Generator().manual_seed(0)
    channels_last = torch.channels_last if case.dims == 2 else torch.channels_last_3d
    memory_format = channels_last if case.channels_last else torch.contiguous_format

    def tensor(*size):
        values = torch.randn(*size, generator=generator)
        return values.to(device, case.dtype).contiguous(memory_format=memory_format)

    if case.op == GRID:
        coords = smooth_grid(n, case.out_size, generator)
    else:
        coords = random_affine(n, generator) if case.dims == 2 else random_affine_3d(n, generator)
    return Tensors(tensor(*case.input_shape).requires_grad_(),
                   coords.to(device, case.dtype).requires_grad_(),
                   tensor(n, c, *case.out_size))


def prepare_pass(sampler: Callable, tensors: Tensors, pass_name: str) -> Callable[[], object]:
    """The call to time for a pass. For 'bwd' this runs the forward whose graph it reuses."""
    inputs = (tensors.input, tensors.coords)
    if pass_name == "fwd":
        def forward():
            with torch.no_grad():
                return sampler(*inputs)
        return forward
    if pass_name == "bwd":
        output = sampler(*inputs)
        return lambda: torch.autograd.grad(output, inputs, tensors.grad_output,
                                           retain_graph=True)
    return lambda: torch.autograd.grad(sampler(*inputs), inputs, tensors.grad_output)


def prepare_backend(case: Case, backend: str, pass_name: str, tensors: Tensors, args,
                    device: torch.device) -> Tuple[Callable[[], object], float]:
    """The backend's call for the pass, and the time of its first call in ms (a cold compile
    for torch-compile)."""
    with fresh_compile_caches():
        with Stopwatch(device) as first_call:
            run_pass = prepare_pass(make_sampler(backend, case, args.padding_mode), tensors,
                                    pass_name)
            if backend.endswith(DETERMINISTIC):
                run_pass = deterministically(run_pass)
            run_pass()
    return run_pass, first_call.ms


@contextlib.contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) within the block, as it was after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def deterministically(call: Callable[[], object]) -> Callable[[], object]:
    """call, run under torch.use_deterministic_algorithms(True)."""
    def run():
        with deterministic_algorithms():
            return call()
    return run


def result_row(case: Case, backend: str, pass_name: str, times_ms: List[float],
               torch_times_ms: Optional[List[float]], first_call_ms: float, args,
               copy_bandwidth: float) -> dict:
    ms = statistics.median(times_ms)
    gbps = bytes_moved(case, pass_name) / (ms * 1e-3) / 1e9
    return {
        "backend": backend, "pass": pass_name, "op": case.op, "shape": list(case.shape),
        "shape_name": case.shape_name, "dtype": case.dtype_name, "mode": case.mode,
        "padding_mode": args.padding_mode, "align_corners": ALIGN_CORNERS,
        "channels_last": case.channels_last, "ms": ms, "gbps": gbps,
        "pct_of_copy": 100 * gbps / copy_bandwidth, "first_call_ms": first_call_ms,
        "speedup_vs_torch": (paired_speedup(torch_times_ms, times_ms) if torch_times_ms
                             else None),
    }


TABLE_COLUMNS = (("shape", 40), ("dtype", 8), ("layout", 13), ("pass", 7), ("backend", 13),
                 ("ms", 9), ("GB/s", 7), ("%copy", 6), ("1st ms", 9), ("vs torch", 8))


def print_table_row(values: Sequence[str]) -> None:
    print("  ".join(str(value).rjust(width) for value, (_, width) in zip(values, TABLE_COLUMNS)),
          flush=True)


def shape_label(shape, op: str = AFFINE, mode: str = "bilinear") -> str:
    """e.g. 64x3x32x32->32x32, or grid_sample 64x3x32x32->32x32 bicubic."""
    dims = (len(shape) - 2) // 2
    label = "x".join(map(str, shape[:2 + dims])) + "->" + "x".join(map(str, shape[2 + dims:]))
    return (f"{op} " if op != AFFINE else "") + label + (f" {mode}" if mode != "bilinear" else "")


def case_label(case: Case) -> str:
    return shape_label(case.shape, case.op, case.mode)


def print_result(case: Case, row: dict) -> None:
    speedup = row["speedup_vs_torch"]
    print_table_row((case_label(case), case.dtype_name, case.layout, row["pass"],
                     row["backend"], f"{row['ms']:.3f}", f"{row['gbps']:.1f}",
                     f"{row['pct_of_copy']:.1f}", f"{row['first_call_ms']:.1f}",
                     "" if speedup is None else f"{speedup:.2f}x"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--quick", action="store_true",
                        help=f"shapes {', '.join(QUICK_SHAPES)} in float32, passes "
                             f"{', '.join(QUICK_PASSES)}, no torch-compile on CPU")
    parser.add_argument("--shapes", type=lambda s: s.split(","),
                        help=f"comma-separated subset of {', '.join(SHAPES)}")
    parser.add_argument("--passes", type=lambda s: s.split(","),
                        help=f"comma-separated subset of {', '.join(PASSES)}")
    parser.add_argument("--backends", type=lambda s: s.split(","),
                        help=f"comma-separated subset of {', '.join(BACKENDS)} "
                             "(default: all that run on the device)")
    parser.add_argument("--mode", choices=stn_ext.functional.MODES, default="bilinear",
                        help="sampling mode of the workloads that do not fix one (default: "
                             "%(default)s)")
    parser.add_argument("--padding-mode", choices=stn_ext.functional.PADDING_MODES,
                        default="zeros", help="padding mode (default: %(default)s)")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_checked(parser, argv)
    for option, known in (("shapes", SHAPES), ("passes", PASSES), ("backends", BACKENDS)):
        unknown = set(getattr(args, option) or ()) - set(known)
        if unknown:
            parser.error(f"--{option}: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if _opencv() is not None:
        _opencv().setNumThreads(torch.get_num_threads())  # side by side on equal terms
    device = torch.device(args.device)
    shape_names = args.shapes or (QUICK_SHAPES if args.quick else tuple(SHAPES))
    passes = args.passes or (QUICK_PASSES if args.quick else PASSES)
    # torch first: the others' speedups are relative to it.
    backends = ([b for b in BACKENDS if b in args.backends] if args.backends
                else backends_for(device, args.quick))
    json_path = resolve_json_path(args, device)

    payload = run_metadata("sampling", device, args.note)
    payload.update(quick=args.quick, min_run_time_s=args.min_run_time,
                   copy_bytes=COPY_BENCH_BYTES, copy_gbps=copy_gbps(device, args.min_run_time),
                   results=[], skipped=[])
    print(f"{payload['device']}, torch {payload['torch']}, triton {payload['triton']}, "
          f"{payload['threads']} threads; copy bandwidth {payload['copy_gbps']:.1f} GB/s")
    print_table_row([name for name, _ in TABLE_COLUMNS])

    for case in cases(shape_names, not args.quick, args.mode):
        tensors = make_tensors(case, device)
        for pass_name in passes:
            calls, first_call_ms = {}, {}
            for backend in backends:
                if not runs(backend, case, pass_name, args.padding_mode):
                    continue
                try:
                    calls[backend], first_call_ms[backend] = prepare_backend(
                        case, backend, pass_name, tensors, args, device)
                # One backend failing (a dtype it lacks, say) must not lose the rest of a long
                # run; the failure is kept in the results instead.
                except Exception as error:  # noqa: BLE001
                    reason = describe_error(error)
                    print(f"  skipped {backend} {pass_name} {case_label(case)} "
                          f"{case.dtype_name} {case.layout}: {reason}", flush=True)
                    payload["skipped"].append({
                        "backend": backend, "pass": pass_name, "op": case.op,
                        "mode": case.mode, "shape": list(case.shape),
                        "dtype": case.dtype_name, "channels_last": case.channels_last,
                        "reason": reason})
            times_ms = side_by_side_ms(calls, device, args.min_run_time)
            for backend in calls:
                row = result_row(case, backend, pass_name, times_ms[backend],
                                 times_ms.get("torch"), first_call_ms[backend], args,
                                 payload["copy_gbps"])
                payload["results"].append(row)
                print_result(case, row)
        del tensors

    finish_metadata(payload)
    if json_path is not None:
        write_json(json_path, payload)
    return payload


if __name__ == "__main__":
    main()
