"""Training-step throughput of the CIFAR-10 STN (train/cifar.py's Net) at batch 64, with PyTorch's
sampler (backend torch) against ours, eager and, where it can help, compiled or captured in a CUDA
graph.

    python benchmarks/bench_train.py --device cpu --json     # recorded under benchmarks/results/
    python benchmarks/bench_train.py --device cuda --json $OUT/train.json

A step is train/cifar.py's per batch: zero_grad, forward, NLL loss, backward and a step of the
optimizer of its default recipe, channels_last model and input (no LR schedule, no logging), on
one synthetic batch kept on the device: this measures compute, not data loading. Time per epoch
is derived: 50,000 CIFAR-10 training images / (images per second). Speedups compare each backend
with backend torch in the same variant, timed side by side (on a CPU in alternating rounds; a
speedup is the median of the per-round ratios).
"""
import argparse
import statistics
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import stn_ext
from _common import (REPO_ROOT, HelpFormatter, Stopwatch, add_common_arguments, describe_error,
                     finish_metadata, fresh_compile_caches, paired_speedup, parse_checked,
                     resolve_json_path, run_metadata, side_by_side_ms, write_json)

sys.path.insert(0, str(REPO_ROOT / "train"))
from cifar import (RECIPES, CudaGraphs, Net, TrainSteps,  # noqa: E402
                   make_optimizer)

BATCH_SIZE = 64
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
CIFAR10_TRAIN_IMAGES = 50_000
RECIPE = "default"  # train/cifar.py's unless told otherwise
JSON_SUFFIX = "-train"
DEFAULT_MIN_RUN_TIME_S = 2.0


def backends_for(device: torch.device) -> List[str]:
    """torch first (the others' speedups are relative to it), then ours for the device."""
    if device.type == "cpu":
        return ["torch", "cpu"]
    return ["torch"] + [b for b in stn_ext.available_backends() if b in ("cuda", "triton")]


def variants_for(device: torch.device, quick: bool) -> List[str]:
    if quick:
        return ["eager"]
    return ["eager", "compile"] + (["cuda-graph"] if device.type == "cuda" else [])


def make_train_step(model: Net, forward: Callable, images: torch.Tensor, labels: torch.Tensor,
                    capturable: bool) -> Callable[[], torch.Tensor]:
    """One step of train/cifar.py's loop; ``forward`` is ``model``, compiled or not."""
    recipe = RECIPES[RECIPE]
    optimizer = make_optimizer(model, recipe, recipe.lr, capturable=capturable)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.nll_loss(forward(images), labels)
        loss.backward()
        optimizer.step()
        return loss
    return train_step


def capture_in_cuda_graph(train_step: Callable, device: torch.device) -> Callable[[], None]:
    """Record the whole step in one CUDA graph, as train/cifar.py does (CudaGraphs), so that
    replaying it skips Python and the per-kernel launch cost that dominate a batch this small."""
    graphs = CudaGraphs(device)
    with graphs.warm_up():
        for _ in range(TrainSteps.WARM_UP):
            train_step()
    return graphs.capture(train_step)


def prepare_step(backend: str, variant: str, device: torch.device) -> Callable[[], object]:
    """A fresh model and optimizer (same seed for every backend) and the call that trains it
    one step in the given variant."""
    torch.manual_seed(0)
    model = Net(backend=backend).to(device, memory_format=torch.channels_last).train()
    images = torch.randn(BATCH_SIZE, *IMAGE_SHAPE, device=device).contiguous(
        memory_format=torch.channels_last)
    labels = torch.randint(NUM_CLASSES, (BATCH_SIZE,), device=device)
    forward = torch.compile(model) if variant == "compile" else model
    train_step = make_train_step(model, forward, images, labels,
                                 capturable=variant == "cuda-graph")
    if variant == "cuda-graph":
        return capture_in_cuda_graph(train_step, device)
    return train_step


def prepare(backend: str, variant: str, device: torch.device) -> Tuple[Callable[[], object], float]:
    """The backend's training step in the variant, and the time of its first call in ms (a cold
    compile for the compile variant)."""
    with fresh_compile_caches():
        with Stopwatch(device) as first_step:
            step = prepare_step(backend, variant, device)
            step()
    return step, first_step.ms


def result_row(backend: str, variant: str, times_ms: List[float],
               torch_times_ms: Optional[List[float]], first_call_ms: float) -> dict:
    ms = statistics.median(times_ms)
    images_per_s = BATCH_SIZE / (ms * 1e-3)
    return {"backend": backend, "variant": variant, "batch": BATCH_SIZE, "ms_per_step": ms,
            "images_per_s": images_per_s, "epoch_s": CIFAR10_TRAIN_IMAGES / images_per_s,
            "first_call_ms": first_call_ms,
            "speedup_vs_torch": (paired_speedup(torch_times_ms, times_ms) if torch_times_ms
                                 else None)}


TABLE_COLUMNS = (("variant", 10), ("backend", 8), ("ms/step", 9), ("images/s", 9),
                 ("epoch s", 8), ("1st ms", 9), ("vs torch", 8))


def print_table_row(values: Sequence[str]) -> None:
    print("  ".join(str(value).rjust(width) for value, (_, width) in zip(values, TABLE_COLUMNS)),
          flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_arguments(parser, JSON_SUFFIX)
    parser.set_defaults(min_run_time=DEFAULT_MIN_RUN_TIME_S)
    parser.add_argument("--quick", action="store_true", help="eager only")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return parse_checked(build_parser(), argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    json_path = resolve_json_path(args, device, JSON_SUFFIX)

    payload = run_metadata("train", device, args.note)
    payload.update(quick=args.quick, min_run_time_s=args.min_run_time, batch=BATCH_SIZE,
                   epoch_images=CIFAR10_TRAIN_IMAGES, recipe=RECIPE,
                   data="synthetic: one random batch kept on the device",
                   results=[], skipped=[])
    print(f"{payload['device']}, torch {payload['torch']}, triton {payload['triton']}, "
          f"{payload['threads']} threads; CIFAR-10 STN, batch {BATCH_SIZE}, synthetic data")
    print_table_row([name for name, _ in TABLE_COLUMNS])

    for variant in variants_for(device, args.quick):
        steps, first_call_ms = {}, {}
        for backend in backends_for(device):
            try:
                steps[backend], first_call_ms[backend] = prepare(backend, variant, device)
            # One backend or variant failing must not lose the others; the failure is kept.
            except Exception as error:  # noqa: BLE001
                reason = describe_error(error)
                print(f"  skipped {variant} {backend}: {reason}", flush=True)
                payload["skipped"].append({"backend": backend, "variant": variant,
                                           "reason": reason})
        times_ms = side_by_side_ms(steps, device, args.min_run_time)
        for backend in steps:
            row = result_row(backend, variant, times_ms[backend], times_ms.get("torch"),
                             first_call_ms[backend])
            payload["results"].append(row)
            speedup = row["speedup_vs_torch"]
            print_table_row((variant, backend, f"{row['ms_per_step']:.2f}",
                             f"{row['images_per_s']:.0f}", f"{row['epoch_s']:.1f}",
                             f"{row['first_call_ms']:.0f}",
                             "" if speedup is None else f"{speedup:.2f}x"))

    finish_metadata(payload)
    if json_path is not None:
        write_json(json_path, payload)
    return payload


if __name__ == "__main__":
    main()
