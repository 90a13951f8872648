"""VCReg's tables and figures from the study's runs (``vcreg.study.jobs``): one markdown table and one PNG per
paper table or figure, every number a mean ± sd over the seeds that finished, every VCReg setting compared with
the baseline of the same seed."""

from __future__ import annotations

import shutil
from pathlib import Path

from common.data import DataConfig, build_dataset, dataset_info
from common.data_summary import class_counts
from common.errors import InputError
from common.plots import legend, new_figure, save_figure
from common.study.context import Context, diverged_at, evaluation_per_seed, read_json, results_per_seed
from common.study.report import PerSeed, bar_figure, cell, difference_cell, line_figure, write_table
from vcreg.study.jobs import LONGER_EPOCHS, MAIN, PAPER, RESNET32_DELTA, TWO_MOONS

SETTINGS = {
    "baseline": "baseline (no VCReg)",
    "blocks": "VCReg blocks, alpha 0.16, beta 0.01",
    "blocks_mild": "VCReg blocks, alpha 0.02, beta 0.00125",
    "blocks_strong": "VCReg blocks, alpha 1.28, beta 0.16",
    "final": "VCReg final, alpha 0.16, beta 0.01",
    "blocks_batch_mean": "VCReg blocks, batch_mean, alpha 0.16, beta matched",
    "blocks_equations": "VCReg blocks, eqs. 3-4, alpha 0.16, beta 0.01",
}
SETTINGS_NOTE = ("Settings (`vcreg/study/jobs.py`): *blocks* puts a VCReg layer after each of the CNN's 8 "
                 "conv-BN-ReLU units (Appendix A's choice), *final* only on the pooled features that enter the "
                 "classifier (Table 7's other main placement); alpha 0.16 / beta 0.01 is the mildest corner of the "
                 "paper's grid (the point the paper-scale configs use), 1.28 / 0.16 its strongest, 0.02 / 0.00125 the "
                 "mildest divided by 8 (below the grid, not from the paper); *batch_mean* is "
                 "`vcreg.normalization=batch_mean` with beta chosen so that the last stage's covariance pull equals "
                 "Algorithm 1's at beta 0.01 (beta = 0.01 x (rows - 1), rows = images per step x 16 locations); *eqs. 3-4* "
                 "is `batch_mean` at the paper's alpha and beta (eqs. 3-4 as written); every other VCReg setting is "
                 "Algorithm 1 as printed, none with Appendix A's forward mean removal or eq. 7. "
                 "\"higher on k/n\": seeds where the setting beats the baseline trained with the same seed.")


def values(ctx: Context, run: str, key: str) -> PerSeed:
    """``{seed: results[key]}`` of one of this paper's runs (or fine-tunings) over the seeds that have it."""
    return results_per_seed(ctx, PAPER, run, key)


def evaluation_values(ctx: Context, run: str, job: str, read) -> PerSeed:
    """``{seed: read(json)}`` of the ``<run>_s<seed>_<job>/<job>.json`` written by an evaluation of a run."""
    return evaluation_per_seed(ctx, PAPER, run, job, f"{job}.json", read)


def settings_table(ctx: Context, docs: Path, command: str, study: str, title: str,
                   columns: list[tuple[str, dict[str, PerSeed], float, int]], notes: str, ylabel: str,
                   names: dict[str, str] = SETTINGS, settings_note: str = SETTINGS_NOTE) -> list[Path]:
    """One row per setting: each column ``(header, {setting: values}, scale, digits)`` as mean ± sd, then the
    paired difference against the baseline (the first setting) on the first column, which the figure shows."""
    s = ctx.seeds
    base = next(iter(names))
    first = columns[0][1]
    rows = [[label, *(cell(data[name], s, scale, digits) for _, data, scale, digits in columns),
             "—" if name == base else difference_cell(first[name], first[base])] for name, label in names.items()]
    header = ["setting", *(c[0] for c in columns), f"{columns[0][0]}: vs baseline (paired)"]
    path = write_table(docs / f"vcreg_{study}.md", title, header, rows, notes + "\n\n" + settings_note, command)
    png = bar_figure(path.with_suffix(".png"), list(names.values()), {columns[0][0]: [first[n] for n in names]},
                     ylabel, title, scale=columns[0][2])
    return [path, png]


def per_setting(ctx: Context, study: str, key: str, names: dict[str, str] = SETTINGS) -> dict[str, PerSeed]:
    return {name: values(ctx, f"{study}_{name}", key) for name in names}


RESNET32_SETTINGS = {
    "baseline": "baseline (no VCReg)",
    "algorithm1": "Algorithm 1, identity forward",
    "algorithm1_mean_removal": "Algorithm 1 + mean removal (the paper configs')",
    "equations": "eqs. 3-4, identity forward",
    "equations_mean_removal": "eqs. 3-4 + mean removal",
    "algorithm1_mean_removal_eq7": f"Algorithm 1 + mean removal + eq. 7 (delta {RESNET32_DELTA:g})",
}
RESNET32_NOTE = ("Settings (`vcreg/study/jobs.py`, `resnet32_settings`): He et al.'s ResNet-32 with a VCReg layer after "
                 "each of its 15 residual blocks (Appendix A), at the paper's alpha 0.16 and beta 0.01 "
                 "(256 images per step, 1 process). *Algorithm 1*: the algorithm as printed (its covariance gradient "
                 "lacks eq. 4's 1/(n-1), so it pulls n-1 times harder); *eqs. 3-4*: the loss as written "
                 "(`vcreg.normalization=batch_mean`); *mean removal*: Appendix A's layer centring the forward pass "
                 "over the batch before each VCReg layer (a running mean in eval mode); *eq. 7*: the smooth-L1 "
                 "covariance penalty, delta the 0.9 quantile of |C_ij| at initialisation (a rule of ours: the paper "
                 "gives none). \"higher on k/n\": seeds where the setting beats the baseline trained with the same seed.")


def resnet32_tables(ctx: Context, docs: Path, command: str) -> list[Path]:
    """Tables 3, 5 and 2 on the paper's ResNet-32, one table and bar chart each, every reading of the layer."""
    names = RESNET32_SETTINGS
    transfer = {name: evaluation_values(ctx, f"table2_resnet32_{name}", "transfer", lambda d: d["results"]["top1"])
                for name in names}
    tables = {
        "table3": ("VCReg Table 3 on ResNet-32: long-tailed training (ratio 100)",
                   [("test top-1 % (its classifier)", per_setting(ctx, "table3_resnet32", "test_top1", names), 100, 1),
                    ("linear probe %", per_setting(ctx, "table3_resnet32", "linear_top1", names), 100, 1)],
                   (f"Fashion-MNIST-LT ({longtail_counts_text(ctx)}), 3 epochs, "
                   "`vcreg/configs/fashion_mnist_lt_resnet32_vcreg.yaml`; balanced test set."), "balanced test top-1 (%)"),
        "table5": ("VCReg Table 5 on ResNet-32: superclass training, subclass probe",
                   [("subclass probe top-1 %", per_setting(ctx, "table5_resnet32", "subclass_linear_top1", names), 100, 1),
                    ("superclass test top-1 %", per_setting(ctx, "table5_resnet32", "test_top1", names), 100, 1)],
                   ("Fashion-MNIST's 4 superclasses, 2 epochs, `vcreg/configs/fashion_mnist_superclass_resnet32_vcreg.yaml`"
                   "; the subclass probe as in the small CNN's Table 5."), "subclass probe top-1 (%)"),
        "table2": ("VCReg Table 2 on ResNet-32: transfer to unseen classes",
                   [("transfer top-1 % (classes 5-9)", transfer, 100, 1),
                    ("in-domain test top-1 % (classes 0-4)", per_setting(ctx, "table2_resnet32", "test_top1", names),
                     100, 1)],
                   ("Pre-trained on Fashion-MNIST classes 0-4 for 2 epochs "
                   "(`vcreg/configs/fashion_mnist_split_resnet32_vcreg.yaml`), Kornblith et al.'s probe on classes 5-9 "
                   "as in the small CNN's Table 2."), "transfer top-1 (%)"),
    }
    out: list[Path] = []
    for study, (title, columns, notes, ylabel) in tables.items():
        out += settings_table(ctx, docs, command, f"{study}_resnet32", title, columns, notes, ylabel, names=names,
                              settings_note=RESNET32_NOTE)
    return out


def longtail_counts_text(ctx: Context) -> str:
    """Fashion-MNIST-LT's training images per class at imbalance ratio 100, counted on the data set the runs read."""
    cfg = DataConfig(name="fashion_mnist_lt", imbalance_ratio=100, **({"root": ctx.data_root} if ctx.data_root else {}))
    try:
        counts = class_counts(build_dataset(cfg, "train"), dataset_info(cfg).num_classes)
    except InputError as error:  # a report without the data set: say so instead of a number
        return f"not counted: {str(error).splitlines()[0]}"
    return f"{counts[0]:,} images of class 0 down to {counts[-1]:,} of class {len(counts) - 1}, {sum(counts):,} in all"


def table3(ctx: Context, docs: Path, command: str) -> list[Path]:
    notes = ("Fashion-MNIST-LT: the training set cut to Cao et al.'s exponential profile with imbalance ratio 100 "
             f"(`data.name=fashion_mnist_lt data.imbalance_ratio=100`: {longtail_counts_text(ctx)}), 3 epochs; "
             "evaluated on the balanced test set. The paper (Table 3, ResNet-32, 100 "
             "epochs, `vcreg/configs/cifar10_lt_resnet32_{supervised,vcreg}.yaml`): CIFAR10-LT 69.6 -> 71.2, "
             "CIFAR100-LT 37.4 -> 40.4.")
    columns = [("test top-1 % (its classifier)", per_setting(ctx, "table3", "test_top1"), 100, 1),
               ("linear probe %", per_setting(ctx, "table3", "linear_top1"), 100, 1)]
    return settings_table(ctx, docs, command, "table3", "VCReg Table 3: long-tailed training (ratio 100)", columns,
                          notes, "balanced test top-1 (%)")


def table5(ctx: Context, docs: Path, command: str) -> list[Path]:
    notes = ("Trained on Fashion-MNIST's 4 superclasses (`data.labels=coarse`: tops, footwear, trouser, bag), "
             "then a linear probe of the 10 subclasses on the frozen features (`subclass_probe.enabled=true`: "
             "Appendix C.2's AdamW, lr 0.016, weight decay 0.05, batch 256, 100 epochs over 10,000 cached training "
             "features). The paper (Table 5, ConvNeXt-Atto, 200 epochs, e.g. "
             "`vcreg/configs/cifar100_superclass_convnext_atto_{supervised,vcreg}.yaml`): CIFAR-100 60.7 -> 72.9 and "
             "+4.9 to +9.7 points on the five ImageNet hierarchies.")
    columns = [("subclass probe top-1 %", per_setting(ctx, "table5", "subclass_linear_top1"), 100, 1),
               ("superclass test top-1 %", per_setting(ctx, "table5", "test_top1"), 100, 1)]
    return settings_table(ctx, docs, command, "table5", "VCReg Table 5: superclass training, subclass probe",
                          columns, notes, "subclass probe top-1 (%)")


def table2(ctx: Context, docs: Path, command: str) -> list[Path]:
    notes = ("Pre-trained (supervised, 2 epochs) on Fashion-MNIST classes 0-4 written as an image folder (4,000 "
             "training images per class), then Kornblith et al.'s probe on classes 5-9 (`python -m evaluation "
             "transfer dataset=image_folder`: L2-regularised logistic regression by L-BFGS on frozen features, the "
             "strength chosen from 45 values on a 20% validation split; 2,000 training and 1,000 test images per "
             "class). The paper (Table 2, ImageNet pre-training, `vcreg/configs/imagenet_resnet50_{supervised,vcreg}"
             ".yaml`, ConvNeXt-T, ViT-B/32): VCReg higher on every downstream set for all three networks (ResNet-50 "
             "+0.2 to +15.7 points), in-domain top-1 within 0.4.")
    transfer = {name: evaluation_values(ctx, f"table2_{name}", "transfer", lambda d: d["results"]["top1"])
                for name in SETTINGS}
    columns = [("transfer top-1 % (classes 5-9)", transfer, 100, 1),
               ("in-domain test top-1 % (classes 0-4)", per_setting(ctx, "table2", "test_top1"), 100, 1)]
    return settings_table(ctx, docs, command, "table2", "VCReg Table 2: transfer to unseen classes", columns, notes,
                          "transfer top-1 (%)")


def table2_budget(ctx: Context, docs: Path, command: str) -> list[Path]:
    """Table 2's baseline and blocks at the study's 2 epochs and at LONGER_EPOCHS: does the gap close?"""
    s = ctx.seeds
    rows, transfer_bars = [], {}
    for epochs in (2, LONGER_EPOCHS):
        suffix = "" if epochs == 2 else f"_{epochs}epochs"
        transfer = {name: evaluation_values(ctx, f"table2_{name}{suffix}", "transfer", lambda d: d["results"]["top1"])
                    for name in MAIN}
        in_domain = {name: values(ctx, f"table2_{name}{suffix}", "test_top1") for name in MAIN}
        transfer_bars[f"{epochs} epochs"] = [transfer[name] for name in MAIN]
        for name in MAIN:
            vs = ("—", "—") if name == "baseline" else (difference_cell(transfer[name], transfer["baseline"]),
                                                      difference_cell(in_domain[name], in_domain["baseline"]))
            rows.append([f"{SETTINGS[name]}, {epochs} epochs", cell(transfer[name], s, 100, 1), vs[0],
                         cell(in_domain[name], s, 100, 1), vs[1]])
    notes = (f"Table 2's pre-training (classes 0-4, 20,000 images, batch 256) at the study's 2 epochs and at "
             f"{LONGER_EPOCHS}, the same transfer probe on classes 5-9. Differences are paired by seed against the "
             "baseline of the same budget.")
    path = write_table(docs / "vcreg_table2_budget.md", "VCReg Table 2 at a longer budget",
                       ["run", "transfer top-1 % (classes 5-9)", "transfer vs baseline (paired)",
                        "in-domain test top-1 %", "in-domain vs baseline (paired)"], rows, notes, command)
    png = bar_figure(path.with_suffix(".png"), [SETTINGS[name] for name in MAIN], transfer_bars,
                     "transfer top-1 (%)", "VCReg Table 2: transfer at 2 and 6 epochs", scale=100)
    return [path, png]


def table6(ctx: Context, docs: Path, command: str) -> list[Path]:
    s = ctx.seeds
    rows = []
    metrics = {}
    for name, label in SETTINGS.items():
        cdnv = values(ctx, f"table2_{name}", "cdnv")
        ncc = values(ctx, f"table2_{name}", "ncc_top1")
        mi = evaluation_values(ctx, f"table2_{name}", "collapse", lambda d: d[0]["mutual_information_bits"])
        metrics[name] = (cdnv, ncc, mi)
        base = metrics["baseline"]
        diff = ("—" if name == "baseline" else
                " / ".join(difference_cell(a, b, scale=1.0, unit="", digits=d)
                           for a, b, d in zip((cdnv, ncc, mi), base, (3, 3, 2))))
        rows.append([label, cell(cdnv, s), cell(ncc, s), cell(mi, s, digits=2), diff])
    notes = ("The Table 2 pre-training runs (classes 0-4): CDNV (eq. 8, mean over class pairs) and the "
             "nearest-class-centre accuracy (eq. 9) of the penultimate features of 10,000 training images "
             "(`results.json`: `cdnv`, `ncc_top1`), and MINE's estimate of I(input; feature) in bits on 5,000 "
             "training images, 2,000 steps (`python -m vcreg.analysis.collapse`). The paper (Table 6, ConvNeXt on "
             "ImageNet, `vcreg/configs/imagenet_convnext_tiny_{supervised,vcreg}.yaml`): CDNV 0.28 -> 0.56, NCC "
             "0.99 -> 0.81, MI 2.8 -> 4.6 (its caption calls higher better in every metric, but its own NCC falls "
             "with VCReg: less collapse means a lower NCC accuracy on the training set). Differences are in the "
             "metrics' units.")
    path = write_table(docs / "vcreg_table6.md", "VCReg Table 6: neural collapse and mutual information",
                       ["setting", "CDNV", "NCC accuracy (train)", "MI (bits)", "vs baseline: CDNV / NCC / MI"],
                       rows, notes + "\n\n" + SETTINGS_NOTE, command)
    groups = list(SETTINGS.values())
    png = bar_figure(path.with_suffix(".png"), groups, {"CDNV": [m[0] for m in metrics.values()],
                                                        "NCC accuracy": [m[1] for m in metrics.values()]},
                     "value", "VCReg Table 6: CDNV and NCC (MI in the table)")
    return [path, png]


def table4(ctx: Context, docs: Path, command: str) -> list[Path]:
    s = ctx.seeds
    rows, linear = [], {}
    for method in ("simclr", "vicreg"):
        base = f"table4_{method}_baseline"
        rows.append([f"{method}: k-NN at initialisation", cell(values(ctx, base, "knn_top1_k20_at_init"), s, 100, 1),
                     cell(values(ctx, base, "knn_top1_k200_at_init"), s, 100, 1), "—", "—", "—"])
        for name, label in SETTINGS.items():
            run = f"table4_{method}_{name}"
            k20, lin = values(ctx, run, "knn_top1_k20"), values(ctx, run, "linear_top1")
            linear[(method, name)] = lin
            vs = ("—", "—") if name == "baseline" else (
                difference_cell(k20, values(ctx, base, "knn_top1_k20")),
                difference_cell(lin, values(ctx, base, "linear_top1")))
            diverged = diverged_at(ctx, PAPER, run)
            if diverged:
                label += (f" (diverged on {len(diverged)} of {len(s)} seeds, non-finite loss at step "
                          f"{', '.join(str(step) for step in diverged.values())})")
            row = [cell(k20, s, 100, 1), cell(values(ctx, run, "knn_top1_k200"), s, 100, 1), cell(lin, s, 100, 1)]
            rows.append([f"{method}: {label}", *("diverged" if diverged and not lin else c for c in row), *vs])
    notes = ("Self-supervised pre-training with VCReg layers (`vcreg/train.py method.name=simclr|vicreg`) for 2 "
             "epochs on 20,000 images at batch 128 (LARS, the CPU SimCLR recipe of "
             "`stochcon/configs/fashion_mnist_simclr.yaml`; projectors 256 -> 64 for SimCLR, 512 -> 512 for VICReg), "
             "then the trainer's weighted k-NN (k = 20 and 200, T = 0.1) and linear probe (10 epochs) on frozen "
             "features, on Fashion-MNIST itself. VCReg's alpha and beta are per Algorithm 1 at 256 rows (two views "
             "of 128). The paper (Table 4, ResNet-50, ImageNet, 100 epochs, `vcreg/configs/"
             "imagenet_resnet50_{simclr,vicreg}_{plain,vcreg}.yaml`): ImageNet linear 67.2 -> 67.1 (SimCLR), "
             "65.2 -> 66.3 (VICReg); transfer higher on most downstream sets.")
    path = write_table(docs / "vcreg_table4.md", "VCReg Table 4: SimCLR and VICReg with VCReg layers",
                       ["run", "20-NN %", "200-NN %", "linear probe %", "20-NN vs baseline", "linear vs baseline"],
                       rows, notes + "\n\n" + SETTINGS_NOTE, command)
    png = bar_figure(path.with_suffix(".png"), list(SETTINGS.values()),
                     {m: [linear[(m, n)] for n in SETTINGS] for m in ("simclr", "vicreg")},
                     "linear probe top-1 (%)", "VCReg Table 4 (Fashion-MNIST, CPU scale)", scale=100,
                     empty="diverged")
    return [path, png]


def figure1(ctx: Context, docs: Path, command: str) -> list[Path]:
    folder = ctx.runs / PAPER / "two_moons"
    results = {run: read_json(ctx.runs / PAPER / run / "two_moons.json") for run in TWO_MOONS}
    rows = []
    for moons in filter(None, results.values()):
        config = moons["config"]
        for name, stats in moons["regularisers"].items():
            label = (f"{name} {config['placement']}, {config['normalization']}, alpha {config['alpha']:g}, "
                     f"beta {config['beta']:g}") if name == "vcreg" else name
            rows.append([label, f"{stats['test_accuracy_mean'] * 100:.1f} ± {stats['test_accuracy_std'] * 100:.1f}",
                         f"{stats['train_accuracy_mean'] * 100:.1f}", f"{stats['boundary_margin']:.3f}"])
    runs = results["two_moons"]["config"]["runs"] if results["two_moons"] else 0
    notes = (f"`python -m vcreg.analysis.two_moons`: a 2 -> 128 -> 128 -> 2 ReLU network, full-batch Adam, 300 "
             f"moons (noise 0.1) per run, {runs} runs per regulariser (fresh sample and initialisation each; "
             "accuracy mean ± sd over them, on 1,000 test points); margin: mean distance from 2,000 test points to "
             "the boundary of the run-averaged prediction. VCReg *blocks*: after both hidden layers (the figure, "
             "at alpha 1.28, beta 0.16); *final*: after the last hidden layer only; *batch_mean* with full-batch "
             "training is Algorithm 1 with beta divided by n - 1 = 299 (`vcreg/layer.py`). "
             "The paper (Figure 1, no numbers): the other regularisers keep a boundary close to one moon "
             "(gradient starvation), VCReg's is wider.")
    path = write_table(docs / "vcreg_figure1.md", "VCReg Figure 1: two moons",
                       ["regulariser", "test accuracy %", "train accuracy %", "boundary margin"],
                       rows or [["not run", "", "", ""]], notes, command)
    out = [path]
    if (folder / "two_moons.png").is_file():
        out.append(Path(shutil.copyfile(folder / "two_moons.png", path.with_suffix(".png"))))
    return out


def gradient_share(ctx: Context, docs: Path, command: str) -> list[Path]:
    """Per VCReg layer and setting: the gradient the layer adds over the one arriving from above, at the first
    and the last step of the Table 2 runs (``vcreg.analysis.gradient_share``)."""
    s = ctx.seeds
    shares: dict[tuple[str, str], dict[int, PerSeed]] = {}  # (setting, moment) -> {layer: {seed: share}}
    shapes: dict[int, str] = {}
    for name in SETTINGS:
        for seed in s:
            data = read_json(ctx.runs / PAPER / f"table2_{name}_s{seed}_gradient_share" / "gradient_share.json")
            for moment in ("init", "end"):
                for k, layer in enumerate((data or {}).get(moment, [])):
                    shares.setdefault((name, moment), {}).setdefault(k, {})[seed] = layer["share"]
                    shapes.setdefault(k, " x ".join(map(str, layer["shape"][1:])))
    regularised = [name for name in SETTINGS if name != "baseline"]
    moments = ("init", "end")
    header = ["layer (channels x map)", *(f"{SETTINGS[n]}: {m}" for n in regularised for m in moments)]

    def share_cell(name: str, moment: str, k: int) -> str:
        measured = shares.get((name, moment))
        if measured and k not in measured:
            return "—"  # the setting has fewer layers (final: one)
        return cell((measured or {}).get(k, {}), s, digits=2)

    rows = [[f"{k + 1}: {shapes[k]}", *(share_cell(n, m, k) for n in regularised for m in moments)]
            for k in sorted(shapes)]
    notes = ("`python -m vcreg.analysis.gradient_share --run RUN --at init end`: on one batch of 256 training images "
             "(the runs' batch, in training mode, no augmentation), the norm of the gradient each VCReg layer adds "
             "in backward divided by the norm of the gradient reaching it from above (the task's and the later "
             "layers' VCReg gradients), at the run's initial weights (its seed) and its last checkpoint. Above 1, "
             "the layer's input follows the regulariser more than the loss. *final* has one layer, on the pooled "
             "128 features, listed as layer 1.")
    path = write_table(docs / "vcreg_gradient_share.md", "VCReg: how hard each layer pulls (Table 2 runs)", header,
                       rows or [["not run", *([""] * (len(header) - 1))]], notes + "\n\n" + SETTINGS_NOTE, command)
    fig, ax = new_figure(figsize=(10.0, 3.8))
    for k, name in enumerate(regularised):
        for moment, style in zip(moments, ("-", ":")):
            per_layer = shares.get((name, moment), {})
            layers = sorted(per_layer)
            line_figure(ax, [n + 1 for n in layers], [per_layer[n] for n in layers], f"{SETTINGS[name]}, {moment}",
                        f"C{k}", linestyle=style)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("VCReg layer (1: after the first conv unit)")
    ax.set_ylabel("added / incoming gradient norm")
    ax.set_title("VCReg's pull against the task, first step (solid) and last (dotted)", fontsize=10)
    legend(ax, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: the lines fill them
    return [path, save_figure(fig, path.with_suffix(".png"))]


def report(ctx: Context, command: str) -> list[Path]:
    out: list[Path] = []
    for write in (table2, table2_budget, table3, table4, table5, table6, figure1, gradient_share, resnet32_tables):
        out += write(ctx, ctx.docs, command)
    return out

