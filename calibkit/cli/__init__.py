"""``calibkit`` command line: eval, calibrate, quantize, bench, compare, demo, build-engine, import-cache."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from typing import Callable, Sequence

from calibkit.cli.defaults import INFERENCE_BATCH_SIZE
from calibkit.cli.options import build_parser
from calibkit.errors import CalibkitError
from calibkit.progress import set_quiet, show_warning


def _terminated(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so every half-written temporary file is removed on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one line on stderr and exit code 2 for user errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    warnings.showwarning = show_warning
    signal.signal(signal.SIGTERM, _terminated)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except CalibkitError as exc:
        print(f"calibkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("calibkit: interrupted", file=sys.stderr)
        return 130


__all__ = ["INFERENCE_BATCH_SIZE", "build_parser", "main"]
