"""The shapes world: its vocabulary, random scenes and motions, and their drawing.

A scene is one flat-coloured shape (circle, square or triangle) on a plain background; a motion
moves a scene's shape in a straight line over a few frames. Everything is drawn with plain PIL
ImageDraw (no anti-aliasing), so every pixel has exactly one of the palette colours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
POSITIONS = ("left", "middle", "right")
IMAGE_SIZE = 64
MARGIN = 2  # px kept free between a shape and the image edge
N_FRAMES = 12

# Unit step of each direction in image coordinates (y grows downwards).
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class Scene:
    """One shape of `size` px (diameter / side) centred at (cx, cy) on a plain background."""

    shape: str
    colour: str
    background: str
    size: float
    cx: float
    cy: float

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        for name in (self.colour, self.background):
            if name not in COLOURS:
                raise ValueError(f"unknown colour {name!r}; expected one of {tuple(COLOURS)}")
        if self.colour == self.background:
            raise ValueError(f"shape and background have the same colour ({self.colour})")
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")

    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"

    def position(self, image_size: int = IMAGE_SIZE) -> str:
        """"left", "middle" or "right": the shape's centre against the image's vertical centre
        line, "middle" within 1/16 of the width of it. (Not the third of the width that holds
        the centre: a shape half the image wide has its centre in the middle third nearly always.)"""
        offset = self.cx - image_size / 2
        if abs(offset) <= image_size / 16:
            return "middle"
        return "left" if offset < 0 else "right"

    def box(self) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1) of the shape, both ends inclusive (PIL's convention)."""
        side = max(1, round(self.size))
        x0, y0 = round(self.cx - side / 2), round(self.cy - side / 2)
        return x0, y0, x0 + side - 1, y0 + side - 1

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "background": self.background,
                "size": self.size, "cx": self.cx, "cy": self.cy}


def draw(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an `image_size` x `image_size` RGB image (no anti-aliasing)."""
    image = Image.new("RGB", (image_size, image_size), COLOURS[scene.background])
    pen = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    x0, y0, x1, y1 = scene.box()
    if scene.shape == "circle":
        pen.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        pen.rectangle((x0, y0, x1, y1), fill=fill)
    else:  # isosceles triangle pointing up: apex at the top centre, base along the bottom
        pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _colours(rng: np.random.Generator) -> tuple[str, str]:
    """(shape colour, background colour), uniform and distinct."""
    names = tuple(COLOURS)
    colour = _pick(rng, names)
    background = _pick(rng, tuple(n for n in names if n != colour))
    return colour, background


def random_scene(rng: np.random.Generator, image_size: int = IMAGE_SIZE,
                 min_size: int = 20, max_size: int = 36) -> Scene:
    """A uniform random scene whose shape lies wholly inside the image, `MARGIN` px from its edges."""
    if not 0 < min_size <= max_size or max_size + 2 * MARGIN > image_size:
        raise ValueError(f"sizes {min_size}..{max_size} do not fit a {image_size}px image")
    shape = _pick(rng, SHAPES)
    colour, background = _colours(rng)
    size = int(rng.integers(min_size, max_size + 1))
    lo, hi = MARGIN + size / 2, image_size - MARGIN - size / 2
    cx, cy = (round(float(rng.uniform(lo, hi)), 2) for _ in range(2))
    return Scene(shape, colour, background, float(size), cx, cy)


@dataclass(frozen=True)
class Motion:
    """`scene`'s shape moving `speed` px per frame towards `direction`; `scene` is the first frame."""

    scene: Scene
    direction: str
    speed: float

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; expected one of {DIRECTIONS}")

    def caption(self) -> str:
        s = self.scene
        return f"a {s.colour} {s.shape} moving {self.direction} on a {s.background} background"

    def at(self, i: int) -> Scene:
        """The scene of frame `i`."""
        dx, dy = _STEP[self.direction]
        return replace(self.scene, cx=self.scene.cx + dx * self.speed * i,
                       cy=self.scene.cy + dy * self.speed * i)

    def frames(self, n: int = N_FRAMES, image_size: int = IMAGE_SIZE) -> list[Image.Image]:
        return [draw(self.at(i), image_size) for i in range(n)]

    def to_dict(self) -> dict:
        return {**self.scene.to_dict(), "direction": self.direction, "speed": self.speed}


def random_motion(rng: np.random.Generator, n_frames: int = N_FRAMES,
                  image_size: int = IMAGE_SIZE) -> Motion:
    """A random motion (size 16..24 px, speed 2..3 px/frame at 64 px) that stays inside every frame."""
    scale = image_size / IMAGE_SIZE
    shape = _pick(rng, SHAPES)
    colour, background = _colours(rng)
    direction = _pick(rng, DIRECTIONS)
    size = int(rng.integers(round(16 * scale), round(24 * scale) + 1))
    lo, hi = MARGIN + size / 2, image_size - MARGIN - size / 2
    # at small image sizes the speed is capped so that the whole path fits
    fastest = max(0.0, (hi - lo) / max(1, n_frames - 1))
    speed = math.floor(100 * min(float(rng.uniform(2 * scale, 3 * scale)), fastest)) / 100
    travel = speed * (n_frames - 1)
    if hi - lo < travel:
        raise ValueError(f"{n_frames} frames at {speed} px/frame do not fit a {image_size}px image")
    centre = [round(float(rng.uniform(lo, hi)), 2) for _ in range(2)]
    dx, dy = _STEP[direction]
    axis, step = (0, dx) if dx else (1, dy)
    # along the motion, start where the whole path stays inside
    start = rng.uniform(lo, hi - travel) if step > 0 else rng.uniform(lo + travel, hi)
    centre[axis] = round(float(start), 2)
    return Motion(Scene(shape, colour, background, float(size), *centre), direction, speed)


def questions(scene: Scene, image_size: int = IMAGE_SIZE) -> list[tuple[str, str]]:
    """The (question, answer) pairs asked about a scene."""
    return [
        ("What colour is the shape?", scene.colour),
        ("What shape is it?", scene.shape),
        ("What colour is the background?", scene.background),
        ("Where is the shape?", scene.position(image_size)),
        # the whole scene in one answer: more supervised tokens per image than a one-word answer
        ("Describe the image.", scene.caption()),
    ]
