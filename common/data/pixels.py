"""Decoded images as 8-bit pixels, whatever the bit depth of their file.

PIL's ``convert`` clips the modes that hold more than 8 bits per pixel (a 16-bit PNG's 1000 becomes 255, and
a third of a typical 16-bit image turns white), so those are scaled to 8 bits first:

- ``I;16`` (16-bit PNG and TIFF): ``round(v * 255 / 65535)``, the 8-bit level nearest to each 16-bit intensity.
  Not ``v >> 8``, which floors (darkening by half a level on average); both give back an 8-bit image stored in
  16 bits (``v * 257``) unchanged.
- ``I`` (32-bit integers): the same 16-bit range [0, 65535], values outside it clipped. An integer image states
  no range of its own, and in an image folder this mode comes from 16-bit files: Pillow opens 16-bit PGM and PPM
  files as ``I``.
- ``F`` (32-bit float TIFF): [0, 1], values outside it clipped and NaN black. [0, 1] is what a float image means
  in torchvision (``to_tensor`` takes an ``F`` image as it is, as a [0, 1] image) and in scikit-image.

The 8-bit modes are converted by PIL, as torchvision's ``ImageFolder`` loader converts them: ``1`` to 0 or 255,
``P`` through its palette, the alpha of ``RGBA`` and ``LA`` dropped, ``CMYK`` by PIL's CMYK to RGB, and colour to
``L`` by the ITU-R 601-2 luma.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIXTEEN_BIT_MAX = 65535


def eight_bit_levels(image: Image.Image) -> np.ndarray | None:
    """The uint8 levels of a one-channel image of more than 8 bits (``I;16*``, ``I``, ``F``); None for others."""
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return np.floor(np.clip(values, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.clip(np.asarray(image).astype(np.int64), 0, SIXTEEN_BIT_MAX)
        # floor(v * 255 / 65535 + 1/2) in integers: exact (no tie exists, since 65535 = 255 * 257)
        return ((values * 510 + SIXTEEN_BIT_MAX) // (2 * SIXTEEN_BIT_MAX)).astype(np.uint8)
    return None


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` decoded in ``mode`` ("L" or "RGB"), scaled to 8 bits first when it holds more (module doc)."""
    levels = eight_bit_levels(image)
    if levels is not None:
        image = Image.fromarray(levels)
    return image.convert(mode)  # convert() forces the full decode, so a truncated file raises here
