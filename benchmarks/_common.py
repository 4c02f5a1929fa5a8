"""Shared by the benchmark scripts: run metadata, timing and the JSON files they write."""
import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

import stn_ext

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# train/ holds the command-line checks every script shares (and bench_train.py's model).
sys.path.insert(0, str(REPO_ROOT / "train"))
from _cli import (HelpFormatter, check_device, non_negative_int,  # noqa: E402,F401
                  positive_float, positive_int)

try:
    import triton
    import triton.testing
except ImportError:  # CPU-only installs; GPU timing then falls back to the CPU's rounds
    triton = None

# Large enough to stream from DRAM rather than any cache, on CPUs and GPUs alike.
COPY_BENCH_BYTES = 256 * 2**20


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model as /proc/cpuinfo gives it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    """HEAD of the checkout (with '-dirty' if it has uncommitted changes); copies of the tree
    without .git (e.g. a GPU machine) can pass it in STN_EXT_COMMIT."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("STN_EXT_COMMIT", "unknown")


def extension_build() -> str:
    """The first 12 hex digits of the sha256 of the loaded stn_ext._C library: which build was
    timed, which a '-dirty' commit cannot tell."""
    with open(stn_ext._C.__file__, "rb") as library:
        return hashlib.sha256(library.read()).hexdigest()[:12]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def run_metadata(benchmark: str, device: torch.device, note: Optional[str]) -> dict:
    """The header every results file starts with."""
    return {
        "benchmark": benchmark,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton.__version__ if triton is not None else None,
        "commit": git_commit(),
        "extension_build": extension_build(),
        "date": utc_now().isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "cpu_rounds": CPU_ROUNDS if device.type == "cpu" else None,
        "cpu_count": os.cpu_count(),
        "other_processes_cores_start": other_processes_cores(),
        "note": note,
    }


def finish_metadata(payload: dict) -> None:
    payload["other_processes_cores_end"] = other_processes_cores()


def other_processes_cores(sample_s: float = 1.0) -> Optional[float]:
    """How many CPU cores other processes kept busy while this one slept for ``sample_s``:
    tells a reader whether the machine was shared (Linux's /proc/stat; None elsewhere)."""
    def all_processes_busy_s() -> float:
        with open("/proc/stat") as stat:  # first line: cumulative jiffies of all CPUs
            user, nice, system, _idle, _iowait, irq, softirq = map(
                int, stat.readline().split()[1:8])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    try:
        busy_start, own_start = all_processes_busy_s(), time.process_time()
        time.sleep(sample_s)
        others = (all_processes_busy_s() - busy_start) - (time.process_time() - own_start)
    except (OSError, ValueError):
        return None
    return max(0.0, others / sample_s)


def default_json_path(device: torch.device, suffix: str = "",
                      results_dir: Path = RESULTS_DIR) -> Path:
    """results_dir/<device>-<date><suffix>.json, e.g. cpu-amd-epyc-2026-11-22.json; a second run
    on the same day gets -run2 (then -run3, ...) before the suffix instead of overwriting the
    first run's record."""
    name = device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if device.type == "cpu" and not slug.startswith("cpu"):
        slug = f"cpu-{slug}"
    stem = f"{slug}-{utc_now().date().isoformat()}"
    path = results_dir / f"{stem}{suffix}.json"
    run = 2
    while path.exists():
        path = results_dir / f"{stem}-run{run}{suffix}.json"
        run += 1
    return path


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def add_common_arguments(parser: argparse.ArgumentParser, json_suffix: str = "") -> None:
    """The flags every benchmark takes; ``parser`` should use ``HelpFormatter`` (it states the
    numeric flags' ranges) and be parsed with ``parse_checked``."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to run (default: %(default)s)")
    parser.add_argument("--json", nargs="?", const="default", metavar="PATH",
                        help="write the results as JSON to PATH; without PATH, to "
                             f"benchmarks/results/<device>-<date>{json_suffix}.json")
    parser.add_argument("--note", help="free text stored in the JSON and shown in RESULTS.md")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch.set_num_threads(N) first (default: torch's default, "
                             f"{torch.get_num_threads()} here)")
    parser.add_argument("--min-run-time", type=positive_float, default=0.5, metavar="SECONDS",
                        help="measuring time per backend and row, after warm-up "
                             "(default: %(default)s)")


def parse_checked(parser: argparse.ArgumentParser,
                  argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """parser.parse_args, then the checks that need this machine (--device), so that a bad
    command line fails in argparse's format (exit code 2) before any work starts."""
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    return args


def resolve_json_path(args: argparse.Namespace, device: torch.device,
                      json_suffix: str = "") -> Optional[Path]:
    if args.json is None:
        return None
    return default_json_path(device, json_suffix) if args.json == "default" else Path(args.json)


def describe_error(error: Exception) -> str:
    """One line for a backend that failed, for the console and the JSON's "skipped" list."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall time of the block in ms (device work included), for first calls that compile."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ms = None

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        synchronize(self.device)
        self.ms = (time.perf_counter() - self.start) * 1e3


@contextlib.contextmanager
def fresh_compile_caches() -> Iterator[None]:
    """Run the block with torch.compile's in-process state reset and inductor's and Triton's
    on-disk caches in a new empty folder, so that a first call there is a cold compile that does
    not depend on earlier rows or runs. (Triton kernels already in memory stay compiled.) What
    the block compiles stays loaded after it, to be timed; the next such block resets it."""
    saved = {name: os.environ.get(name)
             for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory(prefix="stn-bench-cache-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


# Rounds of side-by-side timing on a CPU: every call is timed in every round, in alternating
# order, so that the machine's drift between seconds falls on all of them alike.
CPU_ROUNDS = 15


def side_by_side_ms(calls: Dict[str, Callable[[], object]], device: torch.device,
                    min_run_time: float) -> Dict[str, List[float]]:
    """Times of one call (ms) of each of ``calls``, each warmed up first, on all of torch's
    threads. On a GPU, whose timing is steady: one median each from triton's do_bench (CUDA
    events, L2 flushed between calls). On a CPU: one time per round of CPU_ROUNDS rounds, in
    which each call runs for about min_run_time / CPU_ROUNDS seconds; compare two calls with
    paired_speedup."""
    if device.type == "cuda" and triton is not None:
        return {name: [float(triton.testing.do_bench(fn, rep=min_run_time * 1e3,
                                                      return_mode="median"))]
                for name, fn in calls.items()}
    calls_per_block = {}
    for name, fn in calls.items():
        fn()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        once_s = time.perf_counter() - start
        calls_per_block[name] = max(1, round(min_run_time / CPU_ROUNDS / once_s))
    times = {name: [] for name in calls}
    for round_index in range(CPU_ROUNDS):
        for name in (calls if round_index % 2 == 0 else reversed(list(calls))):
            fn, count = calls[name], calls_per_block[name]
            start = time.perf_counter()
            for _ in range(count):
                fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / count * 1e3)
    return times


def paired_speedup(baseline_ms: Sequence[float], candidate_ms: Sequence[float]) -> float:
    """How many times faster the candidate ran than the baseline: the median of the ratios of
    times taken in the same round (drift between rounds cancels out of each ratio)."""
    return statistics.median(b / c for b, c in zip(baseline_ms, candidate_ms))


def copy_gbps(device: torch.device, min_run_time: float) -> float:
    """Bandwidth of a large same-device tensor copy (read + write), timed like the kernels."""
    source = torch.empty(COPY_BENCH_BYTES // 4, dtype=torch.float32, device=device).uniform_()
    destination = torch.empty_like(source)
    ms = statistics.median(side_by_side_ms({"copy": lambda: destination.copy_(source)}, device,
                                           min_run_time)["copy"])
    return 2 * COPY_BENCH_BYTES / (ms * 1e-3) / 1e9
