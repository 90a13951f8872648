"""Derive common/data/imagenet_hierarchies.json: the ImageNet subsets of VCReg's Table 5 (living_9, mixed_10,
mixed_13, geirhos_16, big_12), with their superclasses and the ImageNet classes (subclasses) of each.

    python scripts/derive_imagenet_hierarchies.py --is-a wordnet.is_a.txt --words words.txt \
        [--classes imagenet_synsets.txt] [--output common/data/imagenet_hierarchies.json]

The subsets are the "common superclass" groups of Engstrom et al.'s robustness library (2019, the paper's
citation for them): ``robustness.tools.imagenet_helpers.common_superclass_wnid``, a list of superclass WordNet
ids per group, read from that library's source (``SUPERCLASSES`` below). They live on ImageNet's own WordNet
tree, not on the recalibrated hierarchy of Santurkar et al.'s BREEDS (``robustness.tools.breeds_helpers``).
Their subclasses are what ``ImageNetHierarchy(...).get_subclasses(superclasses, balanced=True)`` returns,
computed here the same way:

- the tree: every WordNet id's parent is the parent on the *last* line of ``wordnet.is_a.txt`` ("parent child"
  per line) that names it as a child (the library keeps one parent per node and overwrites it line by line);
- a superclass's subclasses: the ImageNet classes below it in that tree;
- balanced: every superclass keeps as many subclasses as the smallest one has, its ImageNet classes of lowest
  class index (the library sorts the class numbers of ``imagenet_class_index.json``, i.e. the sorted WordNet
  ids, and keeps the first ones).

Inputs: ``wordnet.is_a.txt`` and ``words.txt`` are ImageNet's WordNet files (image-net.org's download API, the
files the robustness library asks for; 75,850 and 82,114 lines); ``--classes`` is the sorted list of the 1000
ImageNet-1k WordNet ids, by default the one timm ships (``timm/data/_info/imagenet_synsets.txt``), the class
folders of ImageNet's train split. The script checks that the groups are disjoint and prints their sizes.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

# robustness.tools.imagenet_helpers.common_superclass_wnid: each group's superclasses, in the library's order
# (the order gives the superclass labels 0, 1, ...).
SUPERCLASSES = {
    "living_9": ["n02084071", "n01503061", "n01767661", "n01661091", "n02469914", "n02512053", "n02120997",
                 "n02401031", "n01627424"],
    "mixed_10": ["n02084071", "n01503061", "n02159955", "n02484322", "n02958343", "n02120997", "n04490091",
                 "n13134947", "n12992868", "n02858304"],
    "mixed_13": ["n02084071", "n01503061", "n02159955", "n03405725", "n02512053", "n02484322", "n02958343",
                 "n02120997", "n04490091", "n13134947", "n12992868", "n02858304", "n03082979"],
    "geirhos_16": ["n02686568", "n02131653", "n02834778", "n01503061", "n02858304", "n02876657", "n02958343",
                   "n02121808", "n03001627", "n03046257", "n02084071", "n02503517", "n03614532", "n03623556",
                   "n03862676", "n04490091"],
    "big_12": ["n02084071", "n04341686", "n01503061", "n03051540", "n04576211", "n01661091", "n02075296",
               "n02159955", "n03800933", "n07555863", "n03405725", "n02469914"],
}


def read_parents(is_a: Path) -> dict[str, str]:
    """child -> parent, the last line naming the child winning."""
    parents = {}
    for line in is_a.read_text().splitlines():
        if line.strip():
            parent, child = line.split()
            parents[child] = parent
    return parents


def classes_below(parents: dict[str, str], classes: list[str]) -> dict[str, list[str]]:
    """WordNet id -> the ImageNet classes below it in the tree, in class-index order."""
    below: dict[str, list[str]] = {}
    for wnid in classes:
        node = wnid
        while node in parents:
            node = parents[node]
            below.setdefault(node, []).append(wnid)
    return below


def derive(is_a: Path, words: Path, class_list: Path) -> dict:
    classes = class_list.read_text().split()
    if len(classes) != 1000 or classes != sorted(classes):
        raise SystemExit(f"{class_list}: expected the 1000 ImageNet-1k WordNet ids in sorted order")
    names = dict(line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
    below = classes_below(read_parents(is_a), classes)
    result = {}
    for group, superclasses in SUPERCLASSES.items():
        per_superclass = min(len(below.get(w, [])) for w in superclasses)
        entries = [{"wnid": w, "name": names[w], "subclasses": below[w][:per_superclass]} for w in superclasses]
        flat = [c for entry in entries for c in entry["subclasses"]]
        if len(set(flat)) != len(flat):
            raise SystemExit(f"{group}: superclasses share ImageNet classes")
        result[group] = entries
        print(f"{group}: {len(entries)} superclasses, {len(flat)} subclasses ({per_superclass} each)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--is-a", type=Path, required=True, help="ImageNet's wordnet.is_a.txt")
    parser.add_argument("--words", type=Path, required=True, help="ImageNet's words.txt (synset names)")
    parser.add_argument("--classes", type=Path,
                        default=resources.files("timm.data") / "_info" / "imagenet_synsets.txt",
                        help="the 1000 ImageNet-1k WordNet ids, sorted (default: timm's copy)")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).resolve().parent.parent / "common/data/imagenet_hierarchies.json")
    args = parser.parse_args()
    hierarchies = derive(args.is_a, args.words, Path(args.classes))
    groups = [f" {json.dumps(group)}: [\n" + ",\n".join(f"  {json.dumps(entry)}" for entry in entries) + "\n ]"
              for group, entries in hierarchies.items()]
    args.output.write_text("{\n" + ",\n".join(groups) + "\n}\n")  # a superclass per line
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
