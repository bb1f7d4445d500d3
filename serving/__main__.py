"""`python -m serving`: the model server without TFX (what a serving machine runs).

Same flags as `signflow serve` (see serving/cli.py). `python -m serving ui ...`
is `signflow ui ...` instead (serving/ui_command.py): the web page in front of a
real TF Serving.

Layer: entry point. Imports serving.cli, and serving.ui_command for `ui`.
"""
from __future__ import annotations

import argparse
import sys

from serving import cli

UI_COMMAND = "ui"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [UI_COMMAND]:
        from serving import ui_command

        parser = argparse.ArgumentParser(
            prog="python -m serving ui", description="signflow's web page in front of TF Serving's REST API")
        ui_command.add_arguments(parser)
        return ui_command.main(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(
        prog="python -m serving", description="signflow's TF Serving-compatible model server")
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
