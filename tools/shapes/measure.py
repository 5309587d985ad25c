"""Pixel measurements of shapes-world pictures: colours, the shape blob, its class and motion.

Written for generated pictures, i.e. noisy, blurred reconstructions rather than clean drawings:
every pixel gets its nearest palette colour, the background is the colour of most border pixels,
the shape colour is the commonest other colour among pixels near a palette colour, and the
shape is classified from the largest 4-connected blob of that colour after a 3x3 majority filter.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

try:
    from .world import COLOURS
except ImportError:  # imported as a top-level module (tools/shapes on sys.path)
    from world import COLOURS

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)

MAX_DISTANCE = 80.0  # RGB distance beyond which a pixel counts as no palette colour (closest pair: 176)
MIN_BLOB = 8  # px: smaller blobs are noise
TRIANGLE_TAPER = 0.65  # top-quarter width / bottom-quarter width below this: a triangle
SQUARE_CORNERS = 0.35  # filled fraction of the bbox corners above this: a square (circle: 0)


@dataclass(frozen=True)
class Analysis:
    """What `analyse` saw. Blob fields are None when no shape blob was found.

    `bbox` is (left, top, right, bottom) with right/bottom exclusive; `centroid` is (x, y);
    `blob_fraction` the blob's share of all pixels. The classifier's features, measured in a
    robust bbox (see `classify`): `fill` blob area / box area, `taper` the mean width of the
    top quarter of rows over that of the bottom quarter, `corners` the filled fraction of the
    box's corner triangles.
    """

    background: str
    background_fraction: float
    colour: str | None = None
    blob_fraction: float | None = None
    shape: str | None = None
    centroid: tuple[float, float] | None = None
    bbox: tuple[int, int, int, int] | None = None
    fill: float | None = None
    taper: float | None = None
    corners: float | None = None


def _pixels(image) -> np.ndarray:
    """(H, W, 3) float32 RGB from a PIL image or an array (uint8 0..255 or float 0..1 / 0..255)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    if arr.max() <= 1.0 and not np.issubdtype(np.asarray(image).dtype, np.integer):
        arr = arr * 255.0
    return arr


def _labels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest palette index, distance to it) of every pixel."""
    dist = np.linalg.norm(pixels[..., None, :] - _PALETTE, axis=-1)
    labels = dist.argmin(-1)
    return labels, np.take_along_axis(dist, labels[..., None], -1)[..., 0]


def nearest_colour(rgb) -> str:
    """Name of the palette colour nearest to `rgb` in RGB distance."""
    dist = np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float32), axis=-1)
    return _NAMES[int(dist.argmin())]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 4-connected component of `mask` (all False if empty)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, comp = deque([(int(y0), int(x0))]), []
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def smooth(mask: np.ndarray) -> np.ndarray:
    """3x3 majority filter: drops lone pixels and ragged edge pixels, fills pinholes."""
    padded = np.pad(mask.astype(np.int8), 1)
    h, w = mask.shape
    votes = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    return votes >= 5


def _extent(profile: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the profile entries holding at least a quarter of its peak (robust bbox)."""
    keep = np.nonzero(profile >= max(1.0, 0.25 * profile.max()))[0]
    return int(keep[0]), int(keep[-1]) + 1


def _corners(box: np.ndarray) -> float:
    """Filled fraction of the box's four corner triangles (legs a quarter of each side).

    They lie just outside the inscribed circle: about 0 for a circle, 1 for a square, 0.25 for
    an upward triangle (its bottom corners are half filled, its top ones empty).
    """
    h, w = box.shape
    v, u = np.mgrid[0:h, 0:w]
    v, u = (v + 0.5) / h, (u + 0.5) / w
    near = np.minimum(u, 1 - u) + np.minimum(v, 1 - v) <= 0.25
    return float(box[near].mean()) if near.any() else 0.0


def classify(blob: np.ndarray) -> tuple[str, float, float, float]:
    """(shape, fill, taper, corners) of a non-empty blob mask; see `Analysis`.

    All three are measured in a robust bounding box that ignores rows / columns holding under a
    quarter of the blob's widest one, so that a few stray edge pixels do not stretch it.
    A triangle tapers (narrow top, wide bottom); a square fills its corners, a circle does not.
    """
    top, bottom = _extent(blob.sum(1))
    left, right = _extent(blob.sum(0))
    box = blob[top:bottom, left:right]
    fill = float(box.mean())
    widths = box.sum(1).astype(np.float32)
    quarter = max(1, len(widths) // 4)
    taper = float(widths[:quarter].mean() / max(widths[-quarter:].mean(), 1.0))
    corners = _corners(box)
    if taper < TRIANGLE_TAPER:
        shape = "triangle"
    elif corners >= SQUARE_CORNERS:
        shape = "square"
    else:
        shape = "circle"
    return shape, fill, taper, corners


def analyse(image, max_distance: float = MAX_DISTANCE, min_blob: int = MIN_BLOB) -> Analysis:
    """Background colour, shape colour, shape class and position of one picture."""
    labels, dist = _labels(_pixels(image))
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    result = Analysis(_NAMES[bg], float((labels == bg).mean()))

    candidates = (labels != bg) & (dist <= max_distance)
    if not candidates.any():
        return result
    colour = int(np.bincount(labels[candidates], minlength=len(_NAMES)).argmax())
    blob = largest_component(smooth(labels == colour))
    area = int(blob.sum())
    if area < min_blob:
        return Analysis(result.background, result.background_fraction, _NAMES[colour])
    shape, fill, taper, corners = classify(blob)
    ys, xs = np.nonzero(blob)
    return Analysis(
        background=result.background,
        background_fraction=result.background_fraction,
        colour=_NAMES[colour],
        blob_fraction=area / blob.size,
        shape=shape,
        centroid=(float(xs.mean()), float(ys.mean())),
        bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
        fill=fill,
        taper=taper,
        corners=corners,
    )


def track(frames) -> list[tuple[float, float] | None]:
    """Centroid (x, y) of the shape blob in each frame, None where none was found."""
    return [analyse(frame).centroid for frame in frames]


def direction(frames, min_move: float = 1.0) -> str | None:
    """"left", "right", "up" or "down": the main axis of the blob's overall displacement.

    None when fewer than two frames show a blob or it moves less than `min_move` px.
    """
    points = [p for p in track(frames) if p is not None]
    if len(points) < 2:
        return None
    dx, dy = points[-1][0] - points[0][0], points[-1][1] - points[0][1]
    if max(abs(dx), abs(dy)) < min_move:
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
