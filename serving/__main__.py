"""`python -m serving`: the model server without TFX (what a serving machine runs).

Same flags as `signflow serve` (see serving/cli.py).

Layer: entry point. Imports serving.cli only.
"""
from __future__ import annotations

import argparse
import sys

from serving import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving", description="signflow's TF Serving-compatible model server")
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
