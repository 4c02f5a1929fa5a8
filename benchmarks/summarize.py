"""Write benchmarks/RESULTS.md, and a speedup-vs-torch plot per sampling run, from the JSON files
that bench_sampling.py, bench_train.py and kernel_resources.py recorded in benchmarks/results/. Every number in
RESULTS.md comes from those files; re-run this after adding one.

    python benchmarks/summarize.py
"""
import argparse
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from _common import RESULTS_DIR, HelpFormatter  # noqa: E402
from bench_sampling import AFFINE, BACKENDS, PASSES, shape_label  # noqa: E402

RESULTS_MD = RESULTS_DIR.parent / "RESULTS.md"
# Hand-written notes on runs (training runs, trials, what was tried and dropped), newest first;
# RESULTS.md carries them after the generated tables.
RUN_LOG = RESULTS_DIR / "log.md"
# Other processes' CPU use (in cores) above which a run is marked as taken on a shared machine.
SHARED_MACHINE_CORES = 0.25

RECORD_COMMANDS = """\
```
python benchmarks/bench_sampling.py --device cpu --json && \\
python benchmarks/bench_train.py --device cpu --json && \\
python benchmarks/summarize.py
```
The files are named after the device and the date. On a GPU, pass `--device cuda`; on a copy of
the tree without `.git`, set `STN_EXT_COMMIT` to the commit it was copied from."""

METHOD = """\
- **Timing.** On CPU the backends of one shape, dtype, layout and pass are timed side by side:
  `cpu_rounds` rounds (15), in alternating order, each backend running a block of calls of about
  `min_run_time_s / cpu_rounds` seconds per round on all of torch's threads (`threads` below). A
  row's time is the median of its per-round times per call; its speedup is the median of the
  per-round ratios torch / backend, so the VM's drift between seconds cancels out of it. Files
  without `cpu_rounds` (before 2026-11-23 evening) timed each row alone, as the median of
  `torch.utils.benchmark.Timer.blocked_autorange`. On GPU each row is the median of
  `triton.testing.do_bench` (CUDA events, L2 flushed between calls). *First call* is the
  wall time of a row's first call, reported apart from the median: each row starts with
  `torch._dynamo.reset()` and empty inductor and Triton on-disk caches, so it includes
  compilation (torch-compile, triton); kernels already compiled in memory by earlier rows of the
  same run (Triton's, inductor's C++) may still be reused.
- **Passes.** `fwd`: forward under `torch.no_grad()`. `bwd`: the backward alone, replayed on one
  saved forward graph (`retain_graph=True`), gradients for input and theta. `fwd+bwd`: both.
- **Effective bandwidth** counts the bytes a pass must move at least: forward, input + theta read
  and output written; backward, grad_output + input + theta read and grad_input + grad_theta
  written; fwd+bwd, the sum. *% of copy* relates it to the bandwidth of a large same-device
  `copy_` (read + write) timed the same way in the same run.
- **Backends.** `torch`: `F.affine_grid` + `F.grid_sample`, eager; `torch-compile`: the same two
  ops under `torch.compile`; `cpu`, `cuda`, `triton`: stn_ext's kernels; `cuda-deterministic`,
  `triton-deterministic`: the same under `torch.use_deterministic_algorithms(True)` (passes with
  a backward only). Speedup = torch's time / the backend's time, for the same shape, dtype,
  layout and pass.
- **Training.** One step of `train/cifar.py`'s loop for its CIFAR-10 STN: zero_grad, forward,
  NLL loss, backward, a step of the optimizer of the recipe named below; channels_last model and
  input, no LR schedule; on one synthetic batch kept on the device
  (no data loading). Time per epoch is derived: training images per epoch / images per second.
  Variants: `eager`; `compile` (`torch.compile(model)`); `cuda-graph` (the whole step captured in
  one CUDA graph and replayed). Speedups compare with backend `torch` in the same variant."""


def load_results(results_dir: Path) -> List[dict]:
    runs = []
    for path in results_dir.glob("*.json"):
        run = json.loads(path.read_text())
        if run.get("benchmark") in ("sampling", "train", "kernels"):
            run["name"] = path.stem
            runs.append(run)
    return sorted(runs, key=lambda run: run["date"], reverse=True)  # newest first


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def case_key(row: dict) -> tuple:
    """A result's or skip's case (files before the general ops have no op: the fused one)."""
    return (row.get("op", AFFINE), row.get("mode", "bilinear"), tuple(row["shape"]),
            row["dtype"], row["channels_last"])


def case_label(key: tuple) -> str:
    op, mode, shape, dtype, channels_last = key
    return (f"{shape_label(shape, op, mode)} {dtype}"
            + (" channels_last" if channels_last else ""))


def threads_label(run: dict) -> str:
    return f"{run['threads']} thread" + ("" if run["threads"] == 1 else "s")


def run_title(run: dict) -> str:
    return f"{run['device']}, {run['date'][:10]}, {threads_label(run)}"


def run_header(run: dict) -> str:
    samples = (run["other_processes_cores_start"], run["other_processes_cores_end"])
    if None in samples:
        load = "Other processes' CPU use was not recorded (no /proc/stat)"
    else:
        load = (f"Other processes kept {samples[0]:.2f} of the {run['cpu_count']} cores busy in a "
                f"1-second sample before the run and {samples[1]:.2f} after it")
        if max(samples) > SHARED_MACHINE_CORES:
            load += (": **other jobs shared the machine during this run**, so its times are "
                     "pessimistic and noisy; re-run on a quiet machine to replace them")
    lines = [f"`{run['name']}.json`: {run['device']}, torch {run['torch']}, "
             f"triton {run['triton']}, commit `{run['commit']}`, stn_ext build "
             f"`{run['extension_build']}`, {run['date']}, "
             + threads_label(run) + (", `--quick`" if run["quick"] else "") + ".",
             "", load + "."]
    if run.get("copy_gbps"):
        lines += ["", f"Copy bandwidth ({run['copy_bytes'] / 2**20:.0f} MiB `copy_`, read + "
                      f"write): {run['copy_gbps']:.1f} GB/s."]
    if run.get("note"):
        lines += ["", f"Note: {run['note']}"]
    return "\n".join(lines)


def skipped_lines(run: dict) -> str:
    if not run["skipped"]:
        return ""
    lines = ["", "Skipped (the backend failed):"]
    for skip in run["skipped"]:
        where = (case_label(case_key(skip)) + " "
                 + skip["pass"] if "shape" in skip else skip["variant"])
        lines.append(f"- {skip['backend']} {where}: `{skip['reason']}`")
    return "\n".join(lines)


def sampling_tables(run: dict) -> str:
    backends = [b for b in BACKENDS if any(r["backend"] == b for r in run["results"])]
    by_row: Dict[tuple, Dict[str, dict]] = {}
    for result in run["results"]:
        by_row.setdefault((case_key(result), result["pass"]), {})[result["backend"]] = result

    def table(title: str, cell) -> str:
        rows = [[case_label(key), pass_name] + [cell(by_row[key, pass_name].get(b))
                                                for b in backends]
                for key, pass_name in by_row]
        return f"**{title}**\n\n" + markdown_table(["case", "pass"] + backends, rows)

    def time_cell(result: Optional[dict]) -> str:
        if result is None:
            return "–"
        speedup = result["speedup_vs_torch"]
        if speedup is None or result["backend"] == "torch":
            return f"{result['ms']:.3f}"
        return f"{result['ms']:.3f} ({speedup:.2f}×)"

    def bandwidth_cell(result: Optional[dict]) -> str:
        return "–" if result is None else f"{result['gbps']:.2f} ({result['pct_of_copy']:.1f}%)"

    def first_call_cell(result: Optional[dict]) -> str:
        return "–" if result is None else f"{result['first_call_ms']:.1f}"

    return "\n\n".join([
        table("Time per call, ms (speedup vs torch)", time_cell),
        table("Effective bandwidth, GB/s (% of copy bandwidth)", bandwidth_cell),
        table("First call, ms (compilation included)", first_call_cell)])


def plot_speedups(run: dict, path: Path) -> None:
    """Bars of speedup vs torch per case, one panel per pass, one bar colour per backend."""
    backends = [b for b in BACKENDS if b != "torch"
                and any(r["backend"] == b for r in run["results"])]
    passes = [p for p in PASSES if any(r["pass"] == p for r in run["results"])]
    cases = list(dict.fromkeys(case_key(r) for r in run["results"]))
    figure, axes = plt.subplots(len(passes), 1, figsize=(max(6, 1.1 * len(cases) + 2),
                                                         2.8 * len(passes)),
                                squeeze=False, sharex=True)
    bar_width = 0.8 / max(1, len(backends))
    for ax, pass_name in zip(axes[:, 0], passes):
        speedups = {(case_key(r), r["backend"]): r["speedup_vs_torch"]
                    for r in run["results"] if r["pass"] == pass_name}
        for i, backend in enumerate(backends):
            xs = [x + (i - (len(backends) - 1) / 2) * bar_width for x in range(len(cases))]
            # Bars grow from 1 (parity with torch): up when faster, down when slower.
            heights = [speedups.get((case, backend)) or 1.0 for case in cases]
            ax.bar(xs, [h - 1.0 for h in heights], bar_width, bottom=1.0, label=backend)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_ylabel("speedup vs torch")
        ax.set_title(pass_name, fontsize=10)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xticks(range(len(cases)))
    axes[-1, 0].set_xticklabels([case_label(c).replace(" ", "\n", 1) for c in cases],
                                fontsize=7, rotation=30, ha="right")
    figure.suptitle(f"affine_grid_sample speedup vs torch: {run['device']}, {run['date'][:10]}",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def train_table(run: dict) -> str:
    rows = [[r["variant"], r["backend"], f"{r['ms_per_step']:.2f}", f"{r['images_per_s']:.0f}",
             f"{r['epoch_s']:.1f}", f"{r['first_call_ms'] / 1e3:.2f}",
             f"{r['speedup_vs_torch']:.2f}×" if r["speedup_vs_torch"] is not None else "–"]
            for r in run["results"]]
    return markdown_table(["variant", "backend", "ms / step", "images / s",
                           f"s / epoch (derived, {run['epoch_images']:,} images)",
                           "first step, s", "speedup vs torch (same variant)"], rows)


def kernels_table(run: dict) -> str:
    rows = [[f"`{r['kernel']}`", r["arch"], str(r["registers"]), str(r["stack_bytes"]),
             str(r["local_bytes"]), str(r["shared_bytes"])] for r in run["results"]]
    return markdown_table(["kernel", "arch", "registers", "stack B", "local B", "shared B"],
                          rows)


def render(runs: List[dict], results_dir: Path, output: Path) -> str:
    sections = ["# Benchmark results", "",
                "Generated by `python benchmarks/summarize.py` from the JSON files in "
                "`benchmarks/results/`; do not edit by hand. To record this machine again:",
                "", RECORD_COMMANDS, "", "## Method", "", METHOD]
    for run in runs:
        if run["benchmark"] == "sampling":
            plot_path = results_dir / f"{run['name']}.png"
            plot_speedups(run, plot_path)
            sections += ["", f"## Sampling: {run_title(run)}", "",
                         run_header(run), "",
                         f"![speedup vs torch]({os.path.relpath(plot_path, output.parent)})",
                         "", sampling_tables(run) + skipped_lines(run)]
        elif run["benchmark"] == "kernels":
            sections += ["", f"## CUDA kernel resources: `{run['name']}.json`", "",
                         f"`kernel_resources.py`: cuobjdump of `{run['library']}` (static, no "
                         f"GPU), commit `{run['commit']}`, {run['date']}.", "",
                         kernels_table(run)]
        else:
            sections += ["", f"## Training step: {run_title(run)}", "",
                         run_header(run), "",
                         f"Batch {run['batch']}, recipe `{run['recipe']}`, data: {run['data']}.",
                         "",
                         train_table(run) + skipped_lines(run)]
    log = results_dir / RUN_LOG.name
    if log.is_file():
        sections += ["", log.read_text().rstrip()]
    return "\n".join(sections) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="folder of the JSON result files (default: benchmarks/results)")
    parser.add_argument("--output", type=Path, default=RESULTS_MD,
                        help="the Markdown file to write (default: benchmarks/RESULTS.md)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        parser.error(f"--results-dir {args.results_dir} is not a folder")
    if not args.output.parent.is_dir():
        parser.error(f"--output {args.output}: no folder {args.output.parent}")
    runs = load_results(args.results_dir)
    args.output.write_text(render(runs, args.results_dir, args.output))
    print(f"wrote {args.output} from {len(runs)} result files")


if __name__ == "__main__":
    main()
