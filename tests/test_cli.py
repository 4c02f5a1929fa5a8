"""Bad command-line input gets argparse's one-line error (exit code 2) before any work starts, in
every script with a command line (train/*.py, benchmarks/*.py), and --help states each numeric
flag's valid range. The types are train/_cli.py's, shared by all the scripts."""
import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "train"), str(REPO / "benchmarks")]
import _cli  # noqa: E402

# Every script with a command line; a new one is picked up here and must follow the same rules.
SCRIPTS = {path.stem: path for folder in ("train", "benchmarks")
           for path in sorted((REPO / folder).glob("*.py"))
           if 'if __name__ == "__main__"' in path.read_text()}
NO_CUDA = not torch.cuda.is_available()
# A --data that does not exist: a script that got past parsing would fail on it with exit code
# 1 ("no dataset at"), not 2, and a run that loads nothing finishes at once.
NO_DATA = ["--data", "missing/cifar10.tar.xz"]
# If a benchmark did get past parsing, the smallest run it can do.
BENCH_SAMPLING_SMALL = ["--quick", "--shapes", "stn", "--passes", "fwd", "--backends", "torch"]
BENCH_TRAIN_SMALL = ["--quick"]

# (script, the bad arguments, what the message must name); the script's other arguments keep a
# run that wrongly got past parsing short.
BAD_INPUT = [
    ("cifar", ["--batch-size", "0"], "--batch-size"),
    ("cifar", ["--batch-size", "-64"], "--batch-size"),
    ("cifar", ["--batch-size", "1.5"], "--batch-size"),
    ("cifar", ["--epochs", "0"], "--epochs"),
    ("cifar", ["--epochs", "-1"], "--epochs"),
    ("cifar", ["--limit-train", "-5"], "--limit-train"),
    ("cifar", ["--limit-train", "0"], "--limit-train"),
    ("cifar", ["--lr", "nan"], "--lr"),
    ("cifar", ["--lr", "-1"], "--lr"),
    ("cifar", ["--lr", "0"], "--lr"),
    ("cifar", ["--lr", "inf"], "--lr"),
    ("cifar", ["--seed", "-1"], "--seed"),
    ("cifar", ["--threads", "0"], "--threads"),
    ("cifar", ["--eval-batch-size", "0"], "--eval-batch-size"),
    ("cifar", ["--log-interval", "0"], "--log-interval"),
    ("cifar", ["--backend", "cuda", "--device", "cpu"], "--backend"),
    ("cifar", ["--backend", "cpu", "--device", "cuda"], "--device" if NO_CUDA else "--backend"),
    ("bench_sampling", ["--threads", "0"], "--threads"),
    ("bench_sampling", ["--threads", "-2"], "--threads"),
    ("bench_sampling", ["--min-run-time", "-1"], "--min-run-time"),
    ("bench_sampling", ["--min-run-time", "0"], "--min-run-time"),
    ("bench_sampling", ["--min-run-time", "nan"], "--min-run-time"),
    ("bench_sampling", ["--min-run-time", "inf"], "--min-run-time"),
    ("bench_train", ["--threads", "0"], "--threads"),
    ("bench_train", ["--min-run-time", "-1"], "--min-run-time"),
    ("bench_train", ["--min-run-time", "nan"], "--min-run-time"),
    ("summarize", ["--results-dir", "missing"], "--results-dir"),
]
if NO_CUDA:
    BAD_INPUT += [(script, ["--device", "cuda"], "--device")
                  for script in ("cifar", "bench_sampling", "bench_train")]
SMALL_RUN = {"cifar": NO_DATA, "bench_sampling": BENCH_SAMPLING_SMALL,
             "bench_train": BENCH_TRAIN_SMALL, "summarize": ["--output", "RESULTS.md"]}


# Runs command lines of the scripts, each in a process of its own that is forked from one that
# has imported torch and stn_ext already: the scripts run exactly as `python script.py args`
# would run them (as __main__, with that sys.argv and sys.path[0]), without paying the seconds
# of importing torch per command line. Prints {"case": [exit code, stdout, stderr]} as JSON.
RUNNER = r"""
import json, os, runpy, sys, tempfile, traceback
import numpy, torch, torch.distributed, stn_ext, tqdm  # noqa: F401  (the slow imports, once)
try:
    import triton.testing  # what benchmarks/_common.py imports where it is installed
except ImportError:
    pass

def run(script, args, folder):
    out, err = os.path.join(folder, "out"), os.path.join(folder, "err")
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = [script, *args]
        sys.path[0] = os.path.dirname(script)
        code = 0
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:  # as the interpreter does at the top level
            code = e.code if isinstance(e.code, int) or e.code is None else 1
            if not (isinstance(e.code, int) or e.code is None):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code or 0)
    _, status = os.waitpid(pid, 0)
    with open(out) as o, open(err) as e:
        return os.waitstatus_to_exitcode(status), o.read(), e.read()

cases = json.load(sys.stdin)
with tempfile.TemporaryDirectory() as folder:
    results = {name: run(script, args, folder) for name, (script, args) in cases.items()}
print(json.dumps(results))
"""


def run_scripts(cases: dict, cwd: Path) -> dict:
    """{name: (script, args)} -> {name: subprocess.CompletedProcess}."""
    payload = json.dumps({name: (str(SCRIPTS[script]), list(args))
                          for name, (script, args) in cases.items()})
    runner = subprocess.run([sys.executable, "-c", RUNNER], input=payload, cwd=cwd,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert runner.returncode == 0, runner.stderr[-3000:]
    return {name: subprocess.CompletedProcess(cases[name], code, out, err)
            for name, (code, out, err) in json.loads(runner.stdout).items()}


@pytest.fixture(scope="module")
def script_results(tmp_path_factory):
    """Every command line these tests run: each BAD_INPUT one (by its index) and each script's
    --help (by the script's name), run in one go; and the folder they ran in."""
    cwd = tmp_path_factory.mktemp("cli")
    cases = {str(i): (script, [*SMALL_RUN.get(script, []), *args])
             for i, (script, args, _) in enumerate(BAD_INPUT)}
    cases.update({script: (script, ["--help"]) for script in SCRIPTS})
    return run_scripts(cases, cwd), cwd


@pytest.mark.parametrize("index", range(len(BAD_INPUT)),
                         ids=[f"{s}:{' '.join(a)}" for s, a, _ in BAD_INPUT])
def test_bad_input_is_refused_at_parse_time(script_results, index):
    results, cwd = script_results
    script, args, flag = BAD_INPUT[index]
    result = results[str(index)]
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]  # argparse's exit code: refused at parsing
    assert "Traceback" not in output
    assert result.stdout == ""  # nothing started: no "decoding", no table header
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage: ")
    assert lines[-1].startswith(f"{SCRIPTS[script].name}: error: ")
    assert flag in lines[-1]
    assert not (cwd / "runs").exists() and not (cwd / "RESULTS.md").exists()


def test_runner_runs_scripts_as_the_command_line_does(script_results, tmp_path):
    """The shortcut above gives what a plain `python train/cifar.py ...` gives."""
    results, _ = script_results
    index = BAD_INPUT.index(("cifar", ["--batch-size", "0"], "--batch-size"))
    plain = subprocess.run([sys.executable, str(SCRIPTS["cifar"]), *NO_DATA, "--batch-size", "0"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (plain.returncode, plain.stdout, plain.stderr) == (
        results[str(index)].returncode, results[str(index)].stdout, results[str(index)].stderr)
    assert plain.stderr.strip().splitlines()[-1] == (
        "cifar.py: error: argument --batch-size: must be an integer >= 1, got '0'")


def test_every_script_is_covered():
    assert set(SCRIPTS) >= {"cifar", "bench_sampling", "bench_train", "summarize"}
    assert {script for script, _, _ in BAD_INPUT} <= set(SCRIPTS)


# ----------------------------------------------------------------------------- the types
@pytest.mark.parametrize("kind, text, expected", [
    ("positive_int", "1", 1), ("positive_int", " 64 ", 64), ("positive_int", "0", None),
    ("positive_int", "-5", None), ("positive_int", "1.5", None), ("positive_int", "1e3", None),
    ("positive_int", "", None), ("positive_int", "abc", None),
    ("non_negative_int", "0", 0), ("non_negative_int", "7", 7), ("non_negative_int", "-1", None),
    ("non_negative_int", "nan", None),
    ("positive_float", "0.5", 0.5), ("positive_float", "1e-30", 1e-30),
    ("positive_float", "3", 3.0), ("positive_float", "0", None), ("positive_float", "-0.0", None),
    ("positive_float", "-1", None), ("positive_float", "nan", None),
    ("positive_float", "inf", None), ("positive_float", "-inf", None),
    ("positive_float", "1e999", None), ("positive_float", "x", None),
])
def test_ranged_types(kind, text, expected):
    parse = getattr(_cli, kind)
    if expected is None:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(parse.range)):
            parse(text)
    else:
        value = parse(text)
        assert value == expected and type(value) is type(expected)


def test_argparse_message_names_flag_value_and_range(capsys):
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--batch-size", type=_cli.positive_int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--batch-size", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "tool: error: argument --batch-size: must be an integer >= 1, got '0'")


# ----------------------------------------------------------------------------- --help
def parser_of(script: str) -> argparse.ArgumentParser:
    module = importlib.import_module(script)
    assert hasattr(module, "build_parser"), f"{script}.py: no build_parser()"
    return module.build_parser()


def option_help(help_text: str) -> dict:
    """{option string: its help entry, whitespace collapsed} from a --help output."""
    entries, current = {}, None
    for line in help_text.splitlines():
        match = re.match(r"^  (-{1,2}[\w-]+)", line)
        if match:
            current = match[1]
            entries[current] = ""
        if current and line.strip():
            entries[current] += " " + line.strip()
        elif not line.strip():
            current = None
    return {option: " ".join(text.split()) for option, text in entries.items()}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_numeric_flags_use_the_shared_types(script):
    for action in parser_of(script)._actions:
        assert action.type not in (int, float), (
            f"{script}.py {action.option_strings}: use a type from train/_cli.py")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_states_each_range(script, script_results):
    result = script_results[0][script]
    assert result.returncode == 0, result.stderr[-2000:]
    entries = option_help(result.stdout)
    for action in parser_of(script)._actions:
        if isinstance(action.type, type(_cli.positive_int)):
            option = action.option_strings[-1]
            assert f"({action.type.range})" in entries[option], (option, entries[option])


def test_ranges_of_the_issue_flags():
    """The flags the issue names have the ranges it asks for."""
    expected = {("cifar", "--batch-size"): _cli.positive_int,
                ("cifar", "--epochs"): _cli.positive_int,
                ("cifar", "--limit-train"): _cli.positive_int,
                ("cifar", "--lr"): _cli.positive_float,
                ("cifar", "--seed"): _cli.non_negative_int,
                ("bench_sampling", "--threads"): _cli.positive_int,
                ("bench_sampling", "--min-run-time"): _cli.positive_float,
                ("bench_train", "--threads"): _cli.positive_int,
                ("bench_train", "--min-run-time"): _cli.positive_float}
    for (script, option), kind in expected.items():
        actions = {o: a for a in parser_of(script)._actions for o in a.option_strings}
        assert actions[option].type is kind, (script, option)
