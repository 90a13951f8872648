"""Compression ratio of a latent code against its input (the paper's footnote 2).

ratio = (height * width * channels * bits_per_pixel) / (latent_dim * bits_per_unit):
224 x 224 x 3 pixels at 8 bits against 2048 binary units gives 1204224 / 2048 = 588x.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.plots import new_figure, save_figure
from stochcon.analysis.report import write_numbers


@dataclass
class CompressionRatio:
    input_bits: int
    code_bits: int
    ratio: float


def compression_ratio(
    height: int, width: int, channels: int, latent_dim: int, bits_per_pixel: int = 8, bits_per_unit: int = 1
) -> CompressionRatio:
    """Input bits over code bits; a Gumbel-Bernoulli unit is 1 bit, a float32 Gaussian unit 32."""
    for name, value in {
        "height": height,
        "width": width,
        "channels": channels,
        "latent_dim": latent_dim,
        "bits_per_pixel": bits_per_pixel,
        "bits_per_unit": bits_per_unit,
    }.items():
        if value <= 0:
            raise ValueError(f"compression ratio: {name} must be positive, got {value}")
    input_bits = height * width * channels * bits_per_pixel
    code_bits = latent_dim * bits_per_unit
    return CompressionRatio(input_bits, code_bits, input_bits / code_bits)


def ratio_label(ratio: float) -> str:
    """The ratio to three significant figures: 588x, 98x, 1.53x (not rounded to a whole number)."""
    return f"{ratio:.3g}x"


def compression_figure(rows: dict[str, CompressionRatio]):
    """One horizontal bar per named code, its name on the y axis (long names stack, never overlap) and its
    ratio at the bar's end."""
    names = list(rows)
    fig, ax = new_figure(figsize=(7.0, 1.0 + 0.45 * len(names)))
    ratios = [rows[name].ratio for name in names]
    bars = ax.barh(names, ratios, color="tab:blue")
    ax.bar_label(bars, labels=[ratio_label(r) for r in ratios], padding=3)
    ax.invert_yaxis()  # the first row on top
    ax.set_xscale("log")
    ax.set_xlim(right=max(ratios) * 4)  # room for the last label
    ax.set_xlabel("input bits / code bits")
    ax.set_title("Compression of the latent code")
    return fig


def write_compression_report(rows: dict[str, CompressionRatio], out_dir: str | Path) -> Path:
    """`compression.json` and `compression.png` (`compression_figure`)."""
    out_dir = write_numbers(rows, out_dir, "compression")
    return save_figure(compression_figure(rows), out_dir / "compression.png")
