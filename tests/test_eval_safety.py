"""Results that say what they are: every image mode decoded to its 8-bit values, evaluations that refuse what
they cannot measure (one class, an output path in the way) or say what they measured (an unfinished run, a k
above the bank), and corrupt files counted once."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.data import DataConfig, build_dataset

# ------------------------------------------------------------------------------------------ image modes

GRID = np.arange(16).reshape(4, 4)


def sixteen_bit_to_8(values: np.ndarray) -> np.ndarray:
    """The 8-bit level nearest to each 16-bit intensity, clipped to [0, 65535] (common.data.pixels)."""
    return np.rint(np.clip(values.astype(np.float64), 0, 65535) * 255 / 65535).astype(np.uint8)


def mode_cases() -> dict[str, tuple[Image.Image, str, np.ndarray]]:
    """PIL mode -> (image, file suffix, the 8-bit pixels the data set must decode it to)."""
    bits = GRID % 3 == 0
    palette = np.array([[10 * i, 255 - 10 * i, (37 * i) % 256] for i in range(16)], dtype=np.uint8)
    paletted = Image.fromarray(GRID.astype(np.uint8), mode="L").convert("P")
    paletted.putpalette(palette.flatten().tolist())
    rgb = np.stack([GRID * 16, 255 - GRID * 16, GRID * 7], axis=-1).astype(np.uint8)
    rgba = np.concatenate([rgb, (GRID[..., None] * 5).astype(np.uint8)], axis=-1)
    sixteen = (GRID * 4369).astype(np.uint16)  # 0 .. 65535 in 16 steps; 8 bits clip all but 0 to 255
    sixteen[0, 1] = 1000  # the example: 1000 / 257 = 3.9, level 4, not 255
    thirty_two = (GRID.astype(np.int64) * 5000 - 10000).astype(np.int32)  # -10000 .. 65000: below 0 clips to 0
    thirty_two[3, 3] = 70000  # above 16 bits: clips to 255
    floats = (GRID / 10 - 0.25).astype(np.float32)  # -0.25 .. 1.25: [0, 1] scaled, outside clipped
    floats[0, 0] = np.nan
    cmyk = np.zeros((4, 4, 4), dtype=np.uint8)
    cmyk[0, :] = (255, 0, 0, 0)  # cyan ink: no red
    cmyk[1, :] = (0, 255, 0, 0)  # magenta: no green
    cmyk[2, :] = (0, 0, 0, 255)  # black
    cmyk_rgb = np.full((4, 4, 3), 255, dtype=np.uint8)  # row 3: no ink, white
    cmyk_rgb[0, :] = (0, 255, 255)
    cmyk_rgb[1, :] = (255, 0, 255)
    cmyk_rgb[2, :] = (0, 0, 0)
    return {
        "1": (Image.fromarray(bits), "png", np.where(bits, 255, 0).astype(np.uint8)),
        "L": (Image.fromarray((GRID * 17).astype(np.uint8)), "png", (GRID * 17).astype(np.uint8)),
        "P": (paletted, "png", palette[GRID]),
        "RGB": (Image.fromarray(rgb), "png", rgb),
        "RGBA": (Image.fromarray(rgba), "png", rgb),  # the alpha dropped, as torchvision's ImageFolder does
        "I;16": (Image.fromarray(sixteen), "png", sixteen_bit_to_8(sixteen)),
        "I": (Image.fromarray(thirty_two), "tif", sixteen_bit_to_8(thirty_two)),
        "F": (Image.fromarray(floats), "tif",
              np.rint(np.clip(np.nan_to_num(floats, nan=0.0), 0, 1) * 255).astype(np.uint8)),
        "CMYK": (Image.fromarray(cmyk, mode="CMYK"), "tif", cmyk_rgb),
    }


@pytest.mark.parametrize("mode", list(mode_cases()))
def test_every_image_mode_of_a_folder_decodes_to_its_8_bit_values(tmp_path, mode):
    image, suffix, expected = mode_cases()[mode]
    assert image.mode == mode
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / f"0.{suffix}")
    assert Image.open(tmp_path / "a" / f"0.{suffix}").mode == mode  # the file holds the mode under test
    dataset = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")
    decoded, _ = dataset[0]
    assert decoded.mode == ("RGB" if expected.ndim == 3 else "L")
    np.testing.assert_array_equal(np.asarray(decoded), expected)


def test_a_16_bit_image_among_colour_images_keeps_its_levels(tmp_path):
    """A folder of RGB images with one 16-bit PNG decodes to RGB: the grey levels, in each channel, scaled."""
    sixteen = (GRID * 4369).astype(np.uint16)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / name / "0.png")
    Image.fromarray(sixteen).save(tmp_path / "a" / "1.png")
    dataset = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")
    decoded, _ = dataset[1]
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), np.repeat(sixteen_bit_to_8(sixteen)[..., None], 3, axis=2))


def test_a_16_bit_pgm_opens_as_mode_i_and_keeps_its_levels(tmp_path):
    """Pillow opens a 16-bit PGM as mode I: the 16-bit range of I is that of such files."""
    sixteen = (GRID * 4369).astype(np.uint16)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(sixteen).save(tmp_path / name / "0.pgm")
    assert Image.open(tmp_path / "a" / "0.pgm").mode == "I"
    decoded, _ = build_dataset(DataConfig(name="image_folder", root=str(tmp_path)), "train")[0]
    np.testing.assert_array_equal(np.asarray(decoded), sixteen_bit_to_8(sixteen))
