"""How visible are the lesions a segmentation training config draws?  The oracle threshold Dice per sample.

    python Scripts/lesion_visibility.py CONFIG.json [-n 30] [--set generator.clinical_prob=0.8 ...]

For each of the first ``n`` training samples with a lesion (exactly as ``train-seg`` draws them: generation,
augmentation, crop, normalisation), the best Dice any single intensity threshold inside the brain reaches
against the lesion mask (above or below, every threshold tried), chosen *with* the truth.  A network cannot be
expected to find lesions that not even this oracle separates from the brain around them; a median near 0 means
the data, not the network, is the problem (docs/training.md, "Lesion visibility").  ``--set`` overrides
``data`` fields (dotted paths into the config's ``data`` section, JSON values).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np


def oracle_dice(image: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> float:
    """The best Dice of ``image > t`` or ``image < t`` inside ``brain`` against ``lesion`` over every threshold
    ``t`` (exact: the brain's voxels sorted once, the Dice of every cut from cumulative sums)."""
    values, truth = image[brain], lesion[brain].astype(np.float64)
    total = truth.sum()
    best = 0.0
    for order in (np.argsort(-values, kind="stable"), np.argsort(values, kind="stable")):
        hits = np.cumsum(truth[order])
        best = max(best, float(np.max(2.0 * hits / (np.arange(1, hits.size + 1) + total))))
    return best


def main(argv: list[str] | None = None) -> int:
    from qmricore.models.networks import CLASS_SETS
    from qmricore.training.config import config_from_dict
    from qmricore.training.seg import SegSampler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("-n", type=int, default=30, help="samples drawn (default %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override data.KEY")
    args = parser.parse_args(argv)
    data = json.loads(args.config.read_text())
    data = copy.deepcopy(data)
    data["network"] = {**data.get("network", {}), "classes": "tissue"}  # the tissue classes give the brain mask
    for item in args.set:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = data["data"]
        for part in path:
            node = node.setdefault(part, {})
        node[last] = json.loads(value)
    sampler = SegSampler(config_from_dict(data, base=args.config.resolve().parent))
    scores = []
    for index in range(args.n):
        image, label = sampler.sample(index)
        image, label = image[0].numpy(), label[0].numpy()
        lesion = label == CLASS_SETS["tissue"].index("lesion")
        if lesion.sum() >= 10:
            scores.append(oracle_dice(image, lesion, label >= 1))
    if not scores:
        print("no sample with a lesion of >= 10 voxels", file=sys.stderr)
        return 1
    q1, median, q3 = np.percentile(scores, [25, 50, 75])
    print(f"oracle threshold Dice over {len(scores)} lesions: median {median:.2f} (IQR {q1:.2f}-{q3:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
