"""Can a set's skilled forgeries be told from its genuine signatures without looking at the signature?

A check of the data, not of signflow: if trivial statistics of the scan (paper
colour, ink colour, image size, share of ink) separate genuine images from
forgeries, a model can learn that shortcut instead of the writing, and its
skilled-forgery figures on that set say more about the pen or the scanner than
about the signatures. Each statistic set goes through a logistic regression,
cross-validated with whole writers held out (5 folds), and the pooled equal
error rate of genuine against forged is printed: 50% means no shortcut.

    .venv/bin/python -m bench.forgery_shortcuts /path/to/train

The folder layout is bench_quality's (`<writer>/`, `<writer>_forg/` or
`<writer>/forged/`). Results: printed, and written to
bench/out/forgery-shortcuts-<time>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.results import reserve
from bench.bench_quality import writer_images
from components.trainer.verification import equal_error_rate

ROOT = Path(__file__).resolve().parents[1]
STATISTICS = ("paper_r", "paper_g", "paper_b", "ink_r", "ink_g", "ink_b", "height", "width", "ink_share")
GROUPS = {
    "paper colour": ("paper_r", "paper_g", "paper_b"),
    "ink colour": ("ink_r", "ink_g", "ink_b"),
    "image size": ("height", "width"),
    "share of ink": ("ink_share",),
    "all of them": STATISTICS,
}
# The darkest share of pixels taken as ink, and the brightest half as paper.
INK_QUANTILE = 0.03


def image_statistics(path: Path) -> list[float]:
    """STATISTICS of one scan: median RGB of its brighter half, mean RGB of its darkest pixels, size, ink share."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    pixels = rgb.reshape(-1, 3)
    grey = pixels.mean(axis=1)
    paper = np.median(pixels[grey >= np.median(grey)], axis=0)
    ink = pixels[grey <= np.quantile(grey, INK_QUANTILE)].mean(axis=0)
    ink_share = float((grey < 0.7 * paper.mean()).mean())
    return [*paper, *ink, float(rgb.shape[0]), float(rgb.shape[1]), ink_share]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    genuine, forged = writer_images(args.folder)
    rows, is_forged, writers = [], [], []
    for writer in sorted(forged):  # writers with both kinds only
        for label, paths in ((False, genuine[writer]), (True, forged[writer])):
            for path in paths:
                rows.append(image_statistics(path))
                is_forged.append(label)
                writers.append(writer)
    table = np.array(rows)
    is_forged = np.array(is_forged)
    print(f"{len(set(writers))} writers, {int((~is_forged).sum())} genuine and {int(is_forged.sum())} forged images")
    means = {name: {"genuine": float(table[~is_forged, i].mean()), "forged": float(table[is_forged, i].mean())}
             for i, name in enumerate(STATISTICS)}
    for name, pair in means.items():
        print(f"  {name:10s} genuine {pair['genuine']:8.2f}   forged {pair['forged']:8.2f}")
    eers = {}
    for group, names in GROUPS.items():
        columns = [STATISTICS.index(name) for name in names]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        scores = cross_val_predict(model, table[:, columns], is_forged, groups=writers, cv=GroupKFold(5),
                                   method="decision_function")
        # The regression scores "forged" high; verification's EER wants genuine high.
        eers[group], _ = equal_error_rate(-scores[~is_forged], -scores[is_forged])
        print(f"  {group:14s} genuine vs forged, writers held out: EER {eers[group]:.3f}")
    out = ROOT / "bench" / "out"
    path = reserve(out, f"forgery-shortcuts-{dt.datetime.now():%Y%m%d-%H%M%S}")
    path.write_text(json.dumps({"data": str(args.folder), "writers": len(set(writers)),
                                "genuine": int((~is_forged).sum()), "forged": int(is_forged.sum()),
                                "means": means, "eer": eers}, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
