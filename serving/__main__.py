"""`python -m serving`: the model server without TFX (what a serving machine runs).

Same flags as `signflow serve` (see serving/cli.py). `python -m serving ui ...`
is `signflow ui ...` instead (serving/ui_command.py): the web page in front of a
real TF Serving.

Layer: entry point. Imports serving.cli, and serving.ui_command for `ui`.
"""
from __future__ import annotations

import argparse
import os
import sys

from serving import cli

UI_COMMAND = "ui"


def _program() -> str:
    """The command as it was typed, for usage and error lines: `python -m serving` or the `signflow-serve` script."""
    script = os.path.basename(sys.argv[0])
    return "python -m serving" if script in ("__main__.py", "-m", "") else script


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    program = _program()
    if argv[:1] == [UI_COMMAND]:
        from serving import ui_command

        parser = argparse.ArgumentParser(
            prog=f"{program} ui", description="signflow's web page in front of TF Serving's REST API")
        ui_command.add_arguments(parser)
        return ui_command.main(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(
        prog=program, description="signflow's TF Serving-compatible model server")
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
