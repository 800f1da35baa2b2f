"""``calibkit`` command line: eval, calibrate, quantize, bench, compare, demo, build-engine, import-cache."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from typing import Callable, Sequence

from PIL import Image

from calibkit.cli.defaults import INFERENCE_BATCH_SIZE
from calibkit.cli.options import build_parser
from calibkit.errors import CalibkitError
from calibkit.notices import recorded_warnings
from calibkit.progress import set_quiet, show_warning


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so every staged or half-written file is removed on the way out."""


def _terminated(signum, frame) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one line on stderr and exit code 2 for user errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    set_quiet(args.quiet)
    warnings.showwarning = show_warning
    # the decoder repeats it with the file's name, which Pillow's own lacks
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    signal.signal(signal.SIGTERM, _terminated)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        with recorded_warnings():
            return handler(args)
    except CalibkitError as exc:
        print(f"calibkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("calibkit: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130  # 128 + the signal, as shells report it


__all__ = ["INFERENCE_BATCH_SIZE", "build_parser", "main"]
