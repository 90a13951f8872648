"""Markdown tables of the benchmarks' JSON files in bench/results/ (the tables of bench/README.md).

    python bench/report.py [bench/results/method_overhead.json ...]   # default: every known file there
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def q(x: dict, digits: int = 3) -> str:
    return f"{x['median']:.{digits}f} [{x['q25']:.{digits}f}-{x['q75']:.{digits}f}]"


def setup_line(setup: dict) -> str:
    return (f"_{setup['cpu_count']}-core CPU, {setup['threads']} torch threads, torch {setup['torch']}, "
            f"{setup['rounds']} rounds (+{setup['warmup']} warm-up), started {setup['started_utc']} "
            f"(1-min load {setup['load_average_1min_at_start']:.2f}); command: `{setup['command']}`_")


def method_overhead(data: dict) -> list[str]:
    r = data["results"]
    lines = [(f"{r['backbone']} (width {r['width']}), {r['image_size']} px x {r['channels']} channel(s), "
             f"batch {r['batch']}"), "",
             ("| variant | views | optimiser | step s | images/s | method / bare | method share "
             "| share beyond EMA target | vs reference |"),
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for name, row in r["variants"].items():
        ratio = q(row["ratio_to_bare"]) if "ratio_to_bare" in row else "(bare)"
        share = q(row["method_share"]) if "method_share" in row else ""
        beyond = q(row["share_beyond_target"]) if "share_beyond_target" in row else ""
        ref = f"{q(row['ratio_to_reference'])} x {row['reference']}" if "ratio_to_reference" in row else ""
        lines.append(f"| {name} | {row['views']} | {row['optimizer']} | {q(row['seconds'], 4)} | "
                     f"{row['images_per_second']:.0f} | {ratio} | {share} | {beyond} | {ref} |")
    return lines


def knn(data: dict) -> list[str]:
    r = data["results"]
    lines = [f"bank {r['train']} x {r['dim']}, {r['test']} queries, {r['classes']} classes, k = {r['k']}", "",
             "| variant | seconds | / bare |", "|---|---:|---:|"]
    over = {"ours": q(r["ours_over_bare"]), "bare": "1", "sklearn": q(r["sklearn_over_bare"], 2)
            if "sklearn_over_bare" in r else ""}
    for name, s in r["seconds"].items():
        lines.append(f"| {name} | {q(s, 2)} | {over[name]} |")
    lines += ["", f"Bare similarity product: {r['bare_gflops_per_second']:.1f} GFLOP/s."]
    return lines


def augment(data: dict) -> list[str]:
    lines = ["| recipe | views | batched images/s | per-image images/s | batched / per-image |",
             "|---|---:|---:|---:|---:|"]
    results = data["results"]
    for r in results["recipes"]:
        ips = r["images_per_second"]
        lines.append(f"| {r['recipe']} | {r['views']} | {q(ips['batched'], 0)} | {q(ips['per_image'], 0)} | "
                     f"{q(r['batched_over_per_image'], 2)} |")
    jpeg = results["jpeg"]
    lines += ["", (f"Loader path of image folders, one process, {jpeg['source_size'][0]} x {jpeg['source_size'][1]} px "
              f"JPEG (quality {jpeg['quality']}):"), "", "| per image | images/s |", "|---|---:|"]
    lines += [f"| {name.replace('_', ' ')} | {q(v, 0)} |" for name, v in jpeg["images_per_second"].items()]
    if "crop_over_full" in jpeg:
        lines += ["", "A worker's images/s with the crops alone (`augment.on=device`) over the whole per-image pipeline "
                  "(`augment.on=loader`), within each round: "
                  + ", ".join(f"{name.replace('_', ' ')} {q(v, 2)}" for name, v in jpeg["crop_over_full"].items())
                  + "."]
    return lines


def peer_lightly(data: dict) -> list[str]:
    r = data["results"]
    lines = [(f"lightly {r['lightly']}; {r['backbone']} (width {r['width']}), {r['image_size']} px x "
             f"{r['channels']} channel(s), batch {r['batch']}, 2 views"), "",
             "| method | ours s/step | lightly s/step | ours / lightly |", "|---|---:|---:|---:|"]
    for name, row in r["methods"].items():
        s = row["seconds"]
        lines.append(f"| {name} | {q(s['ours'], 4)} | {q(s['lightly'], 4)} | {q(row['ours_over_lightly'])} |")
    return lines


def vcreg_overhead(data: dict) -> list[str]:
    variants = ("naive", "fast", "batchnorm")
    lines = ["| model | px | batch | layers | " + " | ".join(f"{v} / identity" for v in variants)
             + " | FLOP bound (fast) | identity s |", "|---|---:|---:|---:|" + "---:|" * (len(variants) + 2)]
    for r in data["results"]:
        cells = " | ".join(q(r["ratio_to_identity"][v]) for v in variants)
        lines.append(f"| {r['model']} | {r['image_size']} | {r['batch']} | {r['layers']} | {cells} | "
                     f"{r['flop_bound_fast_over_identity']:.3f} | {r['seconds']['identity']['median']:.3f} |")
    return lines


def switches(data: dict) -> list[str]:
    r = data["results"]
    where = data["setup"].get("gpu") or f"CPU capability {r['cpu_capability']}"
    peak = r.get("peak_bf16_tflops")
    lines = [(f"SimCLR step, {r['backbone']} (width {r['width']}), {r['image_size']} px x {r['channels']} "
              f"channel(s), batch {r['batch']}, {where}"), "",
             "| variant | step s | / reference | reference | images/s (2 views each) | TFLOP/s | of bf16 peak |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for name, row in r["variants"].items():
        fraction = row.get("fraction_of_peak")
        lines.append(f"| {name} | {q(row['seconds'], 4)} | {q(row['ratio_to_reference'])} | {row['reference']} | "
                     f"{row.get('images_per_second', 0):.0f} | {row.get('tflops_per_second', 0):.3f} | "
                     f"{'' if fraction is None else f'{fraction:.3f}'} |")
    if "step_flops" in r:
        lines += ["", f"{r['step_flops'] / 1e9:.2f} GFLOP per step (forward and backward)"
                  + (f"; bf16 dense peak {peak:.0f} TFLOP/s." if peak else ".")]
    return lines


def trainer_throughput(data: dict) -> list[str]:
    r = data["results"]
    files = (f" on {r['jpeg_images']} synthetic {r['jpeg_size'][0]} x {r['jpeg_size'][1]} px JPEG files"
             if r.get("jpeg_images") else "")
    lines = [(f"`{r['config']}` {' '.join(r['overrides'])}{files}, {r['steps']} steps per measurement; images/s "
             "count images (each with all its views)"), "",
             ("| pipeline | trainer images/s | step images/s | data images/s | data images/s per worker "
             "| trainer / step |"), "|---|---:|---:|---:|---:|---:|"]
    for name, row in r["pipelines"].items():
        per_worker = row.get("data_images_per_second_per_worker")
        lines.append(f"| {name} | {row['trainer_images_per_second']:.0f} | {row['step_images_per_second']:.0f} | "
                     f"{row['data_images_per_second']:.0f} | {'' if per_worker is None else f'{per_worker:.0f}'} | "
                     f"{q(row['trainer_over_step'])} |")
    return lines


def grad_cache(data: dict) -> list[str]:
    r = data["results"]
    lines = [(f"{r['backbone']} (width {r['width']}), {r['image_size']} px x {r['channels']} channel(s), "
              f"batch {r['batch']}, K = {r['micro_batches']} micro-batches"), "",
             "| variant | ms / image | time / whole batch | activation KiB / image | memory / whole batch |",
             "|---|---:|---:|---:|---:|"]
    for name, row in r["variants"].items():
        lines.append(f"| {name} | {row['milliseconds_per_image']:.2f} | {q(row['ratio_to_whole'])} | "
                     f"{row['activation_bytes_per_image'] / 1024:.1f} | {row['memory_ratio_to_whole']:.3f} |")
    return lines


TABLES = {"method_overhead": method_overhead, "knn": knn, "augment": augment, "peer_lightly": peer_lightly,
          "vcreg_overhead": vcreg_overhead, "switches": switches,
          "trainer_throughput": trainer_throughput, "grad_cache": grad_cache}


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    kind = data["setup"].get("benchmark", path.stem)
    if kind not in TABLES:
        raise SystemExit(f"{path}: no table for this file name (known: {', '.join(TABLES)})")
    lines = [f"### {path.name}", ""] + TABLES[kind](data) + [""]
    if "command" in data["setup"]:
        lines.append(setup_line(data["setup"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    files = args.files or [RESULTS / f"{name}.json" for name in TABLES if (RESULTS / f"{name}.json").exists()]
    print("\n".join(render(path) for path in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
