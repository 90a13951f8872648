"""``python -m evaluation``: the list of evaluation protocols; ``python -m evaluation <protocol> ARGS`` runs one."""

from __future__ import annotations

import importlib
import sys

# module: one-line description. Every protocol takes --checkpoint (run folder, backbone.safetensors,
# checkpoint folder or torchvision/timm model name) and writes a JSON result.
PROTOCOLS = {
    "evaluation.knn": "weighted k-NN top-1/top-5 of frozen features: protocol=wu2018 (k=200 and 20, T=0.1, "
                      "the default) or dino (k=20 and 200, T=0.07)",
    "evaluation.linear": "linear probe of a frozen backbone (cached features or augmented images): SGD or LARS, "
                         "cosine or step schedule, top-1/top-5",
    "evaluation.semi_supervised": "fine-tuning on 1%/10% labels (SimCLR ImageNet split files or a stratified "
                                  "fraction), separate classifier/encoder learning rates",
    "evaluation.transfer": "Kornblith transfer probe (L-BFGS logistic regression, 45 L2 strengths) on Food-101, "
                           "CIFAR-10/100, SUN397, Cars, Aircraft, DTD, Pets, Caltech-101, Flowers-102 (top-1 or "
                           "mean per-class accuracy, as Kornblith et al.), folders; SGD protocol for Places205 / "
                           "iNaturalist 2018",
    "evaluation.voc07": "Pascal VOC07 classification: per-class linear SVMs, cost by 3-fold CV of the test AP, "
                        "test mAP; Goyal et al.'s res5 6x6 feature and resize as options",
    "evaluation.neural_collapse": "CDNV and nearest-class-centre accuracy of frozen features (VCReg Table 6)",
    "evaluation.mine": "MINE estimate of I(input; feature) in bits on any data set (VCReg Table 6)",
    "evaluation.detection.convert": "convert a ResNet-50 backbone to a Detectron2 checkpoint (.pkl)",
    "evaluation.detection.train": "Detectron2 detection transfer: Faster R-CNN R50-C4 on VOC07+12, Mask R-CNN "
                                  "R50-FPN on COCO",
}


def usage() -> str:
    width = max(map(len, PROTOCOLS))
    lines = ["usage: python -m evaluation <protocol> --checkpoint PATH [key=value ...]",
             "       (or python -m <module> --checkpoint PATH [key=value ...])", "", "protocols:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in PROTOCOLS.items()]
    lines += ["", ("Each writes a JSON result (output=PATH; default next to the checkpoint) and refuses to "
                   "overwrite one unless overwrite=true.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if not argv:  # no protocol named: nothing was done, so not a success
        print(f"error: name a protocol\n\n{usage()}", file=sys.stderr)
        return 2
    name = argv[0] if argv[0].startswith("evaluation.") else f"evaluation.{argv[0]}"
    if name not in PROTOCOLS:
        print(f"error: unknown protocol '{argv[0]}'\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(name).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
