"""`signflow enroll --signer NAME --images DIR`: a new signer served without retraining the backbone (a fast cycle).

The references are checked (at least MIN_REFERENCES images that ingestion would
accept), copied into the inbox as `<inbox>/<NAME>/<file>` (ingestion's folder
convention: genuine signatures of NAME), and the pipeline runs once as a fast
cycle (`trainer.cycle=fast`: a new head and new verification SVMs on the serving
model's backbone, from cached embeddings). The candidate passes the same gate,
serving check and atomic push as any run; the run summary says what happened.

Layer: runner (like local_runner, which it calls). Exit codes are `signflow run`'s;
2 also for references that are too few or unreadable, and for a folder with no
serving model to start from.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from components.ingest.landing import skipped_folder
from components.ingest.records import IMAGE_SUFFIXES, folder_claim
from pipeline.definition.configs import load_config
from pipeline.runners import local_runner
from serving.contract import InvalidRecord, check_label
from serving.images import InvalidImage, inspect_image

log = logging.getLogger(__name__)

# Fewer references cannot train a verifier worth having: cross-validation holds some out, and
# the ingestion split sends about a third of them to the eval split.
MIN_REFERENCES = 5


class EnrollError(ValueError):
    """Why these references cannot enrol the signer (said to the user as it is)."""


def references(folder: Path) -> list[Path]:
    """The image files directly in `folder` that ingestion would accept, sorted; EnrollError when fewer than
    MIN_REFERENCES (naming every file refused and why)."""
    if not folder.is_dir():
        raise EnrollError(f"{folder} is not a folder")
    accepted, refused = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            refused.append(f"{path.name}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
            continue
        try:
            inspect_image(path.read_bytes())
        except InvalidImage as err:
            refused.append(f"{path.name}: {err.reason} ({err.detail})")
            continue
        accepted.append(path)
    if len(accepted) < MIN_REFERENCES:
        detail = "".join(f"\n  {line}" for line in refused)
        raise EnrollError(f"enrolment needs at least {MIN_REFERENCES} reference signatures; {folder} has "
                          f"{len(accepted)} usable image(s){detail}")
    return accepted


def check_folder_name(signer: str) -> str:
    """`signer`, or EnrollError when `<inbox>/<signer>/` would not be read back as that signer's genuine
    references: a path rather than a name, a hidden folder (the inbox skips it), or a forgery folder."""
    if "/" in signer or os.sep in signer or skipped_folder(signer):
        raise EnrollError(f"the signer {signer!r} names the inbox folder the references go to: no '/' and "
                          "no leading '.'")
    if folder_claim([signer]) != (signer, True):
        raise EnrollError(f"a folder named {signer!r} holds forgeries for ingestion, not {signer!r}'s references: "
                          "choose another name")
    return signer


def land(signer: str, images: list[Path], inbox: Path) -> list[Path]:
    """Copy the references to `<inbox>/<signer>/`; a name already taken there by other bytes gets a suffix."""
    target = inbox / signer
    target.mkdir(parents=True, exist_ok=True)
    landed = []
    for image in images:
        path = target / image.name
        n = 1
        while path.exists() and path.read_bytes() != image.read_bytes():
            path = target / f"{image.stem}-{n}{image.suffix}"
            n += 1
        if not path.exists():
            # Copied under a name ingestion skips, then renamed: a scheduler polling the inbox never
            # sees half a file.
            partial = path.with_name(path.name + ".part")
            shutil.copyfile(image, partial)
            partial.rename(path)
        landed.append(path)
    return landed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--signer", required=True, help="the new (or known) signer's label")
    parser.add_argument("--images", required=True, type=Path,
                        help=f"folder of at least {MIN_REFERENCES} genuine signature images (PNG, JPEG, GIF, BMP)")
    parser.add_argument("--config", type=Path, help="JSON file with settings, as for signflow run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one setting, as for signflow run (repeatable)")
    parser.add_argument("--summary-json", type=Path, metavar="PATH",
                        help="also write the run summary (or the failure) as JSON to PATH")
    parser.add_argument("--verbose", action="store_true", help="also show TFX's and Beam's INFO logs")


def main(args: argparse.Namespace) -> int:
    try:
        signer = check_folder_name(check_label(args.signer, lenient=False))
        images = references(args.images)
        config = load_config(args.config, args.overrides)
    except (EnrollError, InvalidRecord, OSError, ValueError) as err:
        print(f"signflow enroll: {err}", file=sys.stderr)
        return local_runner.EXIT_USAGE
    serving = config.paths().model_base_path(config.delivery.model_name)
    if not any(p.name.isdigit() for p in Path(serving).glob("*")):
        print(f"signflow enroll: no model is served from {serving} yet: enrolment adds a signer to a trained "
              "model; run `signflow run` (or `make run-local`) first", file=sys.stderr)
        return local_runner.EXIT_USAGE
    landed = land(signer, images, Path(config.paths().ingest.inbox_dir))
    print(f"enrolling {signer!r}: {len(landed)} references in {landed[0].parent}")
    run_args = local_runner.parse_arguments([])
    run_args.config, run_args.overrides = args.config, [*args.overrides, "trainer.cycle=fast"]
    run_args.summary_json, run_args.verbose = args.summary_json, args.verbose
    return local_runner.main(run_args)
