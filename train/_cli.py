"""Command-line checks shared by train/cifar.py and the benchmark scripts (benchmarks/*.py put
this folder on sys.path): argparse types for numeric flags that reject out-of-range values at
parse time, a help formatter that states each such flag's range, and the --device check.

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--batch-size", type=positive_int, default=64, help="batch size [64]")
    # --help: "--batch-size BATCH_SIZE  batch size [64] (an integer >= 1)"
    # --batch-size 0: "error: argument --batch-size: must be an integer >= 1, got '0'" (exit 2)
"""
import argparse
import math
from typing import Callable, Optional


class _RangedType:
    """An argparse ``type``: parses the text with ``parse`` and accepts the value only if
    ``accept(value)``; ``range`` says what is valid, in --help and in the error message."""

    def __init__(self, name: str, parse: Callable[[str], object],
                 accept: Callable[[object], bool], range_text: str):
        self.__name__ = name  # argparse names the type in some messages
        self.parse = parse
        self.accept = accept
        self.range = range_text

    def __call__(self, text):
        try:
            value = self.parse(str(text).strip())
        except (TypeError, ValueError):
            value = None
        if value is None or not self.accept(value):
            raise argparse.ArgumentTypeError(f"must be {self.range}, got {str(text)!r}")
        return value

    def __repr__(self) -> str:
        return self.__name__


positive_int = _RangedType("positive_int", int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _RangedType("non_negative_int", int, lambda v: v >= 0, "an integer >= 0")
# float("nan") and float("inf") parse, so finiteness is checked explicitly (nan > 0 is False,
# inf > 0 is True).
positive_float = _RangedType("positive_float", float, lambda v: math.isfinite(v) and v > 0,
                             "a finite number > 0")

RANGED_TYPES = (positive_int, non_negative_int, positive_float)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends "(<range>)" to the help of every flag
    whose type is one of the types above, so that --help states each flag's valid range."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        text = super()._get_help_string(action) or ""
        if isinstance(action.type, _RangedType):
            text = f"{text} ({action.type.range})".strip()
        return text


def check_device(parser: argparse.ArgumentParser, device: str, flag: str = "--device") -> None:
    """parser.error (exit 2) if ``device`` names a device this machine lacks."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error(f"{flag} cuda but no CUDA device is available")
