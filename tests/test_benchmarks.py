"""The benchmark scripts run end to end and write the JSON schema of issue 4; summarize.py turns
their files into RESULTS.md and a plot. No timing thresholds: only that every time is positive."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"
# Shorter than --quick's defaults, to keep CI fast; the script paths are the same.
FAST_OPTIONS = ["--min-run-time", "0.02", "--shapes", "stn"]

RUN_KEYS = {"device", "torch", "triton", "commit", "date", "results"}
SAMPLING_ROW_KEYS = {"backend", "pass", "shape", "dtype", "mode", "padding_mode",
                     "channels_last", "ms", "gbps", "pct_of_copy"}
TRAIN_ROW_KEYS = {"backend", "variant", "batch", "ms_per_step", "images_per_s", "epoch_s"}


def run_script(name: str, *args: str) -> None:
    subprocess.run([sys.executable, str(BENCHMARKS / name), *args], cwd=REPO_ROOT, check=True,
                   timeout=600)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """One quick CPU run of each script, written where summarize.py can read them."""
    directory = tmp_path_factory.mktemp("results")
    run_script("bench_sampling.py", "--quick", "--device", "cpu", "--json",
               str(directory / "sampling.json"), "--passes", "fwd,bwd,fwd+bwd", *FAST_OPTIONS)
    run_script("bench_train.py", "--quick", "--device", "cpu", "--json",
               str(directory / "train.json"), "--min-run-time", "0.02")
    return directory


def load(path: Path) -> dict:
    run = json.loads(path.read_text())
    assert RUN_KEYS <= run.keys()
    assert isinstance(run["device"], str) and run["device"]
    assert run["skipped"] == []
    return run


def test_bench_sampling_json(results_dir):
    run = load(results_dir / "sampling.json")
    assert run["benchmark"] == "sampling"
    rows = run["results"]
    assert {(row["backend"], row["pass"]) for row in rows} == {
        (backend, pass_name) for backend in ("torch", "cpu")
        for pass_name in ("fwd", "bwd", "fwd+bwd")}
    for row in rows:
        assert SAMPLING_ROW_KEYS <= row.keys()
        assert row["shape"] == [64, 3, 32, 32, 32, 32]
        assert row["dtype"] == "float32" and row["channels_last"] is False
        assert row["ms"] > 0 and row["gbps"] > 0 and row["pct_of_copy"] > 0


def test_bench_train_json(results_dir):
    run = load(results_dir / "train.json")
    assert run["benchmark"] == "train"
    assert [(row["backend"], row["variant"]) for row in run["results"]] == [
        ("torch", "eager"), ("cpu", "eager")]
    for row in run["results"]:
        assert TRAIN_ROW_KEYS <= row.keys()
        assert row["ms_per_step"] > 0 and row["images_per_s"] > 0


def test_summarize(results_dir):
    output = results_dir / "RESULTS.md"
    run_script("summarize.py", "--results-dir", str(results_dir), "--output", str(output))
    text = output.read_text()
    assert "## Sampling: " in text and "## Training step: " in text
    assert "| 64x3x32x32->32x32 float32 | fwd | " in text
    assert (results_dir / "sampling.png").stat().st_size > 0


def test_bench_sampling_general_ops(tmp_path):
    """The general ops' workloads (a dense grid in bicubic mode, a 3-D volume): rows that name
    their op and mode, which summarize.py labels."""
    path = tmp_path / "general.json"
    run_script("bench_sampling.py", "--quick", "--device", "cpu", "--json", str(path),
               "--passes", "fwd", "--min-run-time", "0.02", "--shapes", "grid-bicubic,volume")
    run = load(path)
    assert {(row["op"], row["mode"], tuple(row["shape"]), row["backend"])
            for row in run["results"]} == {
        (op, mode, shape, backend) for backend in ("torch", "cpu")
        for op, mode, shape in (("grid_sample", "bicubic", (64, 3, 32, 32, 32, 32)),
                                ("affine_grid_sample", "bilinear", (4, 8, 32, 32, 32, 32, 32, 32)))}
    assert all(row["ms"] > 0 and row["gbps"] > 0 for row in run["results"])
    output = tmp_path / "RESULTS.md"
    run_script("summarize.py", "--results-dir", str(tmp_path), "--output", str(output))
    text = output.read_text()
    assert "| grid_sample 64x3x32x32->32x32 bicubic float32 | fwd | " in text
    assert "| 4x8x32x32x32->32x32x32 float32 | fwd | " in text


def test_bench_sampling_deterministic_rows(tmp_path):
    """A deterministic variant runs its backend under torch.use_deterministic_algorithms(True),
    for the passes with a backward, side by side with the rest; the mode is off again after."""
    path = tmp_path / "deterministic.json"
    run_script("bench_sampling.py", "--device", "cpu", "--json", str(path), "--passes",
               "fwd,bwd", "--min-run-time", "0.02", "--shapes", "stn",
               "--backends", "torch,cpu,cpu-deterministic")
    run = load(path)
    assert {(row["backend"], row["pass"]) for row in run["results"]} == {
        ("torch", "fwd"), ("cpu", "fwd"), ("torch", "bwd"), ("cpu", "bwd"),
        ("cpu-deterministic", "bwd")}


def test_deterministically_sets_the_mode_for_the_call_only():
    sys.path.insert(0, str(BENCHMARKS))
    import bench_sampling
    seen = []
    call = bench_sampling.deterministically(
        lambda: seen.append(torch.are_deterministic_algorithms_enabled()))
    call()
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()


def test_bench_sampling_opencv_rows(tmp_path):
    """Where OpenCV is installed, cv2.warpAffine runs beside ours on the HWC image warps, in the
    forward pass only."""
    pytest.importorskip("cv2")
    path = tmp_path / "opencv.json"
    run_script("bench_sampling.py", "--device", "cpu", "--json", str(path), "--passes",
               "fwd,fwd+bwd", "--min-run-time", "0.02", "--shapes", "stn-hwc",
               "--backends", "torch,cpu,opencv")
    run = load(path)
    assert {(row["backend"], row["pass"], row["channels_last"]) for row in run["results"]} == {
        ("torch", "fwd", True), ("cpu", "fwd", True), ("opencv", "fwd", True),
        ("torch", "fwd+bwd", True), ("cpu", "fwd+bwd", True)}


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("channels", [1, 3])
def test_opencv_warp_samples_where_theta_says(padding_mode, channels):
    """The OpenCV row warps by the same map: on a ramp image (value = x + 2 y in pixels, so a
    position error shows as a value error) it equals F.affine_grid + F.grid_sample to OpenCV's
    1/32-pixel position steps."""
    pytest.importorskip("cv2")
    sys.path.insert(0, str(BENCHMARKS))
    import bench_sampling
    n, h, w, out_hw = 3, 20, 30, (25, 17)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    image = (xs + 2 * ys).expand(n, channels, h, w).contiguous(memory_format=torch.channels_last)
    theta = bench_sampling.random_affine(n, torch.Generator().manual_seed(0))
    case = bench_sampling.Case("test", bench_sampling.AFFINE, (n, channels, h, w, *out_hw),
                               "bilinear", torch.float32, True)
    got = bench_sampling.opencv_warp(case, padding_mode)(image, theta)
    want = bench_sampling.torch_composition(image, theta, out_hw, "bilinear", padding_mode)
    # Inside the image; at its edge OpenCV's constant border blends with quantised weights too.
    inside = F.grid_sample(torch.ones(n, 1, h, w), F.affine_grid(theta, [n, 1, *out_hw], False),
                           align_corners=False) == 1
    error = (got - want).abs().masked_select(inside)
    assert error.numel() > 0 and error.max() <= 3 / 32


def test_side_by_side_timing_on_cpu():
    sys.path.insert(0, str(BENCHMARKS))
    import _common
    import torch

    calls = []
    times = _common.side_by_side_ms({"a": lambda: calls.append("a"),
                                     "b": lambda: calls.append("b")},
                                    torch.device("cpu"), min_run_time=0.01)
    assert sorted(times) == ["a", "b"]
    assert all(len(t) == _common.CPU_ROUNDS and min(t) > 0 for t in times.values())
    assert calls.count("a") >= _common.CPU_ROUNDS and calls.count("b") >= _common.CPU_ROUNDS
    assert _common.paired_speedup([2.0, 9.0, 6.0], [1.0, 3.0, 3.0]) == 2.0


def test_default_json_path_never_overwrites_a_record(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import _common
    import torch

    cpu = torch.device("cpu")
    first = _common.default_json_path(cpu, "-train", results_dir=tmp_path)
    assert first.parent == tmp_path and first.name.endswith("-train.json")
    first.write_text("{}")
    second = _common.default_json_path(cpu, "-train", results_dir=tmp_path)
    assert second.name == first.name.replace("-train.json", "-run2-train.json")
    second.write_text("{}")
    assert _common.default_json_path(cpu, "-train", results_dir=tmp_path).name == \
        first.name.replace("-train.json", "-run3-train.json")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    """benchmarks/gpu_check.sh on a machine without a GPU: a clear line and exit code 2, before
    any build or test."""
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(tmp_path / "out")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2
    assert "no CUDA device is available" in result.stderr
    assert not (tmp_path / "out" / "build.log").exists()
