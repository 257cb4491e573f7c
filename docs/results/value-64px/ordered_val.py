"""pneumonia2 with an ordered validation split: the earliest-numbered patients of Kermany's
train pool hold validation, the way a temporal hold-out would.

Why: Kermany's file numbers place the test set before the training pool (test normals are
IM-0001..0111 and NORMAL2-IM-0007..0381, train+val normals IM-0115.. and NORMAL2-IM-0383..;
test pneumonia patients have a median person number of 118 against 711 in train+val), read from
file names only. If the test images differ by when they were taken, the earliest training
patients should resemble them more than a random patient split does. (They did not: see
README.md here.)

Writes OUT/manifest.csv: test rows as they are; of train+val, the lowest-numbered ~10 % of each
file family (IM, NORMAL2-IM, person..._bacteria, person..._virus), whole patients, become `val`;
files are absolute paths into the data folder, so the sweep needs --allow-outside-data.

    python docs/results/value-64px/ordered_val.py ../shared/data/pneumonia2 /tmp/p2t
    python -m ray_xray.tune --allow-outside-data --data /tmp/p2t/manifest.csv --space all \
        --trials 60 --budget-minutes 10 --cpus-per-trial 1 --set img_size=64 --set epochs=6
"""

from __future__ import annotations

import collections
import csv
import re
import sys
from pathlib import Path


def family_and_number(source_path: str) -> tuple[str, int]:
    """('N2' | 'IM' | 'bacteria' | 'virus', patient number) of a Kermany file name."""
    name = source_path.rsplit("/", 1)[-1]
    if name.startswith("NORMAL2"):
        family = "N2"
    elif name.startswith("IM-"):
        family = "IM"
    else:
        family = "bacteria" if "bacteria" in name else "virus"
    return family, int(re.search(r"(?:IM-|person)(\d+)", name).group(1))


def ordered_val(rows: list[dict], fraction: float = 0.1) -> set[str]:
    """The `file`s of the train+val rows that go to val: per family, the lowest patient numbers
    until `fraction` of the family's images, never splitting a patient."""
    families = collections.defaultdict(list)
    for r in rows:
        if r["split"] in ("train", "val"):
            families[family_and_number(r["source_path"])[0]].append(r)
    val = set()
    number = lambda r: family_and_number(r["source_path"])[1]  # noqa: E731
    for members in families.values():
        members.sort(key=number)
        n = round(fraction * len(members))
        i = 0
        while i < n or (0 < i < len(members) and number(members[i]) == number(members[i - 1])):
            val.add(members[i]["file"])
            i += 1
    return val


def main(src: str, out: str) -> None:
    """Write OUT/manifest.csv for the pneumonia2 folder SRC and print the split counts."""
    rows = list(csv.DictReader(open(Path(src) / "manifest.csv", newline="")))
    val = ordered_val(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    counts = collections.Counter()
    with open(Path(out) / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "split", "source_path"])
        for r in rows:
            split = "test" if r["split"] == "test" else "val" if r["file"] in val else "train"
            writer.writerow(
                [str(Path(src).resolve() / r["file"]), r["label"], split, r["source_path"]]
            )
            counts[split, r["label"]] += 1
    print(sorted(counts.items()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
