"""Registers, stack and local memory of every CUDA kernel in the built extension, read statically
with `cuobjdump --dump-resource-usage` (no GPU needed): what a kernel costs in occupancy before it
ever runs. Writes one row per kernel and architecture; summarize.py puts them in RESULTS.md, and
tests/test_kernel_resources.py fails on new stack or local-memory use (and reads the kernels'
machine code through read_sass, to check the instructions they use).

    python benchmarks/kernel_resources.py                       # print the table
    python benchmarks/kernel_resources.py --json benchmarks/results/kernels-sm_90.json

cuobjdump ships with the CUDA toolkit and, for torch's Triton, inside the triton package
(triton/backends/nvidia/bin/); both are looked for.
"""
import argparse
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

from _common import HelpFormatter, git_commit, utc_now, write_json

# "Function <mangled name>:" then "REG:.. STACK:.. SHARED:.. LOCAL:.. ..." in cuobjdump's output.
FUNCTION = re.compile(r"^\s*Function (\S+):")
USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
ARCH = re.compile(r"^\s*arch = (sm_\d+)")


def find_cuobjdump() -> Optional[str]:
    """cuobjdump from PATH, the CUDA toolkit, or the triton package; None if there is none."""
    candidates = [shutil.which("cuobjdump"),
                  os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        candidates.append(str(Path(spec.origin).parent / "backends" / "nvidia" / "bin" /
                              "cuobjdump"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def extension_path() -> Path:
    """The built stn_ext._C shared library, located without importing it."""
    spec = importlib.util.find_spec("stn_ext._C")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("stn_ext._C is not built (pip install -e .)")
    return Path(spec.origin)


def demangle(names: Sequence[str]) -> List[str]:
    """C++ names of the mangled ones (c++filt), or the mangled names where it is missing."""
    if not names or shutil.which("c++filt") is None:
        return list(names)
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return out if len(out) == len(names) else list(names)


def kernel_label(name: str) -> str:
    """A kernel's template name without its namespaces and parameter list: e.g.
    sample_forward_kernel<float, 3, LinearPolicy, DenseGridSource<3, float> const>."""
    name = re.sub(r"stn_ext::|\(anonymous namespace\)::|c10::|^void ", "", name)
    depth = 0
    for i, char in enumerate(name):  # cut at the parameter list: the first '(' outside <...>
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "(" and depth == 0:
            return name[:i]
    return name


def resource_rows(cuobjdump_output: str) -> List[dict]:
    """One row per (architecture, kernel) of `cuobjdump --dump-resource-usage` output."""
    rows, arch, function = [], None, None
    for line in cuobjdump_output.splitlines():
        if match := ARCH.match(line):
            arch = match.group(1)
        elif match := FUNCTION.match(line):
            function = match.group(1)
        elif (match := USAGE.search(line)) and function is not None:
            registers, stack, shared, local = map(int, match.groups())
            rows.append({"arch": arch, "mangled": function, "registers": registers,
                         "stack_bytes": stack, "shared_bytes": shared, "local_bytes": local})
            function = None
    for row, name in zip(rows, demangle([row["mangled"] for row in rows])):
        row["kernel"] = kernel_label(name)
    return rows


def read_resources(library: Path, cuobjdump: str) -> List[dict]:
    output = subprocess.run([cuobjdump, "--dump-resource-usage", str(library)],
                            capture_output=True, text=True, check=True).stdout
    return resource_rows(output)


# "Function : <mangled name>" heads each kernel's code in `cuobjdump -sass` output.
SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)")


def read_sass(library: Path, cuobjdump: str) -> dict:
    """Each kernel's SASS (`cuobjdump -sass`), by kernel label; the architectures' codes of one
    kernel are joined."""
    output = subprocess.run([cuobjdump, "-sass", str(library)], capture_output=True, text=True,
                            check=True).stdout
    mangled, code = [], []
    for line in output.splitlines():
        if match := SASS_FUNCTION.match(line):
            mangled.append(match.group(1))
            code.append([])
        elif code:
            code[-1].append(line)
    sass = {}
    for name, lines in zip(demangle(mangled), code):
        label = kernel_label(name)
        sass[label] = sass.get(label, "") + "\n".join(lines)
    return sass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--library", type=Path, default=None,
                        help="the shared library to read (default: the built stn_ext._C)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows to this file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        parser.error("no cuobjdump found (CUDA toolkit, or the triton package)")
    library = args.library or extension_path()
    rows = read_resources(library, cuobjdump)
    if not rows:
        parser.error(f"{library} holds no CUDA kernels (built without a CUDA toolkit?)")
    for row in rows:
        print(f"{row['arch']:7} {row['registers']:4} regs {row['stack_bytes']:4} B stack "
              f"{row['local_bytes']:4} B local  {row['kernel']}")
    payload = {"benchmark": "kernels", "date": utc_now().isoformat(timespec="seconds"),
               "commit": git_commit(), "library": library.name, "results": rows}
    if args.json is not None:
        write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
