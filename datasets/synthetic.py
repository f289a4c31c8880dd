"""Seeded synthetic driving scenes: the embedded default data, learnable by a small YOLO.

Each image is a road in perspective (vanishing point, lanes, curbs, sidewalks) under a sky, with
roadside buildings or trees, and objects standing on the ground plane at a scale that follows their
distance: cars, trucks and buses in lanes, pedestrians on sidewalks or crossing, cyclists at the
road's edge, traffic lights and signs on poles. Objects are drawn far to near, so nearer ones
occlude farther ones (at most half of a box is hidden; boxes are the full object). Each image has
BDD100K-style attributes (``weather``: clear/overcast/rainy/snowy/foggy, ``timeofday``:
daytime/dawn/dusk/night, ``scene``: city street/highway/residential) that change the rendering (light
level, lamps at night, rain streaks, snow, fog), so ``--split attribute:weather`` works on it too.

Image ``i`` depends only on ``(seed, i)``: the first k images are the same whatever ``n`` is.
Sizes are chosen so that the smallest objects stay about 6+ pixels wide at 160 px.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from datasets.classes import DEFAULT_CLASSES
from datasets.errors import DataError
from datasets.samples import Box

WEATHERS: tuple[str, ...] = ("clear", "overcast", "rainy", "snowy", "foggy")
WEATHER_P: tuple[float, ...] = (0.35, 0.2, 0.15, 0.15, 0.15)
TIMES: tuple[str, ...] = ("daytime", "dawn/dusk", "night")
TIME_P: tuple[float, ...] = (0.55, 0.2, 0.25)
SCENES: tuple[str, ...] = ("city street", "highway", "residential")
SCENE_P: tuple[float, ...] = (0.5, 0.25, 0.25)

CLS = {name: i for i, name in enumerate(DEFAULT_CLASSES)}
LANES = (-1.4, 0.0, 1.4)  # lane centres, in car widths from the road's centre line
ROAD_HALF = 2.15

#: class -> (width, height) in car widths, smallest ground scale, placement weights per scene.
_SPECS: dict[str, tuple[float, float, float]] = {
    "car": (1.0, 0.8, 0.24),
    "truck": (1.25, 1.55, 0.24),
    "bus": (2.6, 1.35, 0.2),
    "pedestrian": (0.36, 0.95, 0.34),
    "cyclist": (0.9, 0.95, 0.32),
    "traffic_light": (0.3, 0.75, 0.28),  # lights and signs are drawn larger than life: they are far
    "traffic_sign": (0.55, 0.55, 0.28),
}
_WEIGHTS: dict[str, dict[str, float]] = {
    "city street": {"car": 3, "truck": 1, "bus": 0.8, "pedestrian": 3, "cyclist": 2.5, "traffic_light": 2,
                    "traffic_sign": 2},
    "highway": {"car": 4, "truck": 2, "bus": 1, "pedestrian": 0, "cyclist": 0, "traffic_light": 0,
                "traffic_sign": 2.5},
    "residential": {"car": 2.5, "truck": 0.7, "bus": 0.3, "pedestrian": 3, "cyclist": 3, "traffic_light": 1,
                    "traffic_sign": 2},
}  # fmt: skip


@dataclass
class _Scene:
    """Geometry of one image: size, horizon row and vanishing point column."""

    size: int
    horizon: float
    vx: float

    def scale(self, y: float) -> float:
        """Ground scale at image row ``y`` (1 at the bottom, 0 at the horizon)."""
        return (y - self.horizon) / (self.size - self.horizon)

    def unit(self, s: float) -> float:
        """Pixels per car width at ground scale ``s``."""
        return s * 0.5 * self.size

    def x(self, lateral: float, s: float) -> float:
        """Image column of a ground point ``lateral`` car widths from the road centre."""
        return self.vx + lateral * self.unit(s)

    def row(self, s: float) -> float:
        """Image row of ground scale ``s``."""
        return self.horizon + s * (self.size - self.horizon)


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x), round(y)


def _rect(img: np.ndarray, x1: float, y1: float, x2: float, y2: float, color, thickness: int = -1) -> None:
    cv2.rectangle(img, _pt(x1, y1), _pt(x2, y2), color, thickness, cv2.LINE_AA)


# ----------------------------------------------------------------------------------------------- objects
# Each painter draws the object into its box (x1, y1, x2, y2) and may append lamps (drawn after the
# light level is applied, so that they glow at night).
Lamps = list[Callable[[np.ndarray], None]]


def _draw_car(img, b, rng, lamps: Lamps) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    body = _color(rng, 20, 235)
    cv2.ellipse(img, _pt((x1 + x2) / 2, y2), _pt(w * 0.55, h * 0.06), 0, 0, 360, (25, 25, 25), -1)
    top = y1 + 0.42 * h
    cabin = np.array([_pt(x1 + 0.14 * w, y1), _pt(x2 - 0.14 * w, y1), _pt(x2 - 0.04 * w, top),
                      _pt(x1 + 0.04 * w, top)], np.int32)  # fmt: skip
    cv2.fillConvexPoly(img, cabin, body, cv2.LINE_AA)
    low = top - 0.03 * h
    glass = np.array([_pt(x1 + 0.2 * w, y1 + 0.08 * h), _pt(x2 - 0.2 * w, y1 + 0.08 * h),
                      _pt(x2 - 0.12 * w, low), _pt(x1 + 0.12 * w, low)], np.int32)  # fmt: skip
    cv2.fillConvexPoly(img, glass, (60, 45, 40), cv2.LINE_AA)
    _rect(img, x1, top, x2, y2 - 0.14 * h, body)
    _rect(img, x1 + 0.04 * w, y2 - 0.18 * h, x1 + 0.22 * w, y2, (20, 20, 20))
    _rect(img, x2 - 0.22 * w, y2 - 0.18 * h, x2 - 0.04 * w, y2, (20, 20, 20))
    _rect(img, x1 + 0.38 * w, y2 - 0.36 * h, x2 - 0.38 * w, y2 - 0.24 * h, (225, 225, 225))
    for lx in (x1 + 0.03 * w, x2 - 0.2 * w):
        lamps.append(
            lambda im, lx=lx: _rect(im, lx, top + 0.06 * h, lx + 0.17 * w, top + 0.18 * h, (30, 30, 230))
        )


def _draw_truck(img, b, rng, lamps: Lamps) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    cv2.ellipse(img, _pt((x1 + x2) / 2, y2), _pt(w * 0.55, h * 0.05), 0, 0, 360, (25, 25, 25), -1)
    cargo = _color(rng, 120, 250) if rng.random() < 0.7 else _color(rng, 20, 200)
    _rect(img, x1, y1, x2, y2 - 0.14 * h, cargo)
    _rect(img, x1, y1, x2, y2 - 0.14 * h, tuple(int(c * 0.6) for c in cargo), max(1, int(w * 0.03)))
    cv2.line(img, _pt((x1 + x2) / 2, y1 + 0.05 * h), _pt((x1 + x2) / 2, y2 - 0.2 * h), (60, 60, 60), 1)
    _rect(img, x1, y2 - 0.2 * h, x2, y2 - 0.12 * h, (40, 40, 40))
    _rect(img, x1 + 0.03 * w, y2 - 0.13 * h, x1 + 0.3 * w, y2, (15, 15, 15))
    _rect(img, x2 - 0.3 * w, y2 - 0.13 * h, x2 - 0.03 * w, y2, (15, 15, 15))
    for lx in (x1 + 0.02 * w, x2 - 0.12 * w):
        lamps.append(
            lambda im, lx=lx: _rect(im, lx, y2 - 0.3 * h, lx + 0.1 * w, y2 - 0.22 * h, (20, 40, 230))
        )


def _draw_bus(img, b, rng, lamps: Lamps) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    cv2.ellipse(img, _pt((x1 + x2) / 2, y2), _pt(w * 0.52, h * 0.05), 0, 0, 360, (25, 25, 25), -1)
    paint = [(0, 200, 250), (40, 40, 200), (180, 90, 20), (230, 230, 230)][int(rng.integers(4))]
    _rect(img, x1, y1, x2, y2 - 0.12 * h, paint)
    windows = int(rng.integers(5, 8))
    step = (w * 0.84) / windows
    for k in range(windows):
        wx = x1 + 0.12 * w + k * step
        _rect(img, wx, y1 + 0.12 * h, wx + step * 0.8, y1 + 0.48 * h, (70, 50, 40))
    _rect(img, x1 + 0.02 * w, y1 + 0.12 * h, x1 + 0.09 * w, y2 - 0.2 * h, (70, 50, 40))
    _rect(img, x1, y1 + 0.55 * h, x2, y1 + 0.6 * h, (50, 50, 50))
    for wx in (x1 + 0.18 * w, x2 - 0.18 * w):
        cv2.circle(img, _pt(wx, y2 - 0.11 * h), max(1, int(0.12 * h)), (15, 15, 15), -1, cv2.LINE_AA)
    lamps.append(lambda im: _rect(im, x1, y1 + 0.62 * h, x1 + 0.03 * w, y1 + 0.75 * h, (120, 240, 255)))


def _draw_pedestrian(img, b, rng, lamps: Lamps) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    skin = [(150, 180, 225), (90, 120, 170), (60, 80, 120)][int(rng.integers(3))]
    shirt, pants = _color(rng, 20, 240), _color(rng, 10, 120)
    t = max(1, round(w * 0.28))
    stride = float(rng.uniform(0.1, 0.45)) * w
    cv2.line(img, _pt(cx, y1 + 0.55 * h), _pt(cx - stride, y2 - t / 2), pants, t, cv2.LINE_AA)
    cv2.line(img, _pt(cx, y1 + 0.55 * h), _pt(cx + stride, y2 - t / 2), pants, t, cv2.LINE_AA)
    _rect(img, cx - 0.32 * w, y1 + 0.17 * h, cx + 0.32 * w, y1 + 0.58 * h, shirt)
    arm = max(1, t // 2 + 1)
    cv2.line(img, _pt(cx - 0.3 * w, y1 + 0.2 * h), _pt(x1 + 0.02 * w, y1 + 0.52 * h), shirt, arm, cv2.LINE_AA)
    cv2.line(img, _pt(cx + 0.3 * w, y1 + 0.2 * h), _pt(x2 - 0.02 * w, y1 + 0.52 * h), shirt, arm, cv2.LINE_AA)
    cv2.circle(img, _pt(cx, y1 + 0.085 * h), max(1, int(0.085 * h)), skin, -1, cv2.LINE_AA)


def _draw_cyclist(img, b, rng, lamps: Lamps) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    r = 0.21 * w
    t = max(1, round(w * 0.05))
    frame = _color(rng, 30, 230)
    back, front = (x1 + r, y2 - r), (x2 - r, y2 - r)
    for c in (back, front):
        cv2.circle(img, _pt(*c), max(1, int(r)), (25, 25, 25), t + 1, cv2.LINE_AA)
    seat, bar = (x1 + 0.42 * w, y1 + 0.5 * h), (x2 - 0.28 * w, y1 + 0.45 * h)
    pedal = ((x1 + x2) / 2, y2 - r)
    for p, q in ((back, pedal), (pedal, seat), (seat, back), (seat, bar), (bar, front), (bar, pedal)):
        cv2.line(img, _pt(*p), _pt(*q), frame, t, cv2.LINE_AA)
    shirt = _color(rng, 20, 240)
    body_t = max(1, round(w * 0.12))
    shoulder = (x1 + 0.55 * w, y1 + 0.18 * h)
    cv2.line(img, _pt(*seat), _pt(*shoulder), shirt, body_t, cv2.LINE_AA)
    cv2.line(img, _pt(*shoulder), _pt(*bar), shirt, max(1, body_t // 2), cv2.LINE_AA)
    cv2.line(img, _pt(*seat), _pt(*pedal), (60, 40, 30), max(1, body_t // 2 + 1), cv2.LINE_AA)
    cv2.circle(img, _pt(x1 + 0.6 * w, y1 + 0.08 * h), max(1, int(0.08 * h)), (120, 150, 200), -1, cv2.LINE_AA)


def _draw_traffic_light(img, b, rng, lamps: Lamps) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    _rect(img, x1, y1, x2, y2, (30, 30, 30))
    _rect(img, x1, y1, x2, y2, (70, 70, 70), 1)
    lit = int(rng.integers(3))
    colors = [(40, 40, 240), (40, 200, 250), (90, 230, 60)]
    for k in range(3):
        c = (x1 + w / 2, y1 + h * (0.18 + 0.32 * k))
        rad = max(1, int(0.3 * w))
        cv2.circle(img, _pt(*c), rad, tuple(v // 4 for v in colors[k]), -1, cv2.LINE_AA)
        if k == lit:
            lamps.append(
                lambda im, c=c, rad=rad, col=colors[k]: cv2.circle(im, _pt(*c), rad, col, -1, cv2.LINE_AA)
            )


def _draw_traffic_sign(img, b, rng, lamps: Lamps) -> None:
    x1, y1, x2, y2 = b
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    kind = int(rng.integers(4))
    border = max(1, round(w * 0.14))
    if kind == 0:  # round prohibition / speed limit
        cv2.circle(img, _pt(cx, cy), max(1, int(w / 2)), (30, 30, 210), -1, cv2.LINE_AA)
        cv2.circle(img, _pt(cx, cy), max(1, int(w / 2) - border), (240, 240, 240), -1, cv2.LINE_AA)
    elif kind == 1:  # warning triangle
        tri = np.array([_pt(cx, y1), _pt(x2, y2), _pt(x1, y2)], np.int32)
        cv2.fillConvexPoly(img, tri, (30, 30, 210), cv2.LINE_AA)
        inner = np.array([_pt(cx, y1 + 2.2 * border), _pt(x2 - 1.6 * border, y2 - 0.8 * border),
                          _pt(x1 + 1.6 * border, y2 - 0.8 * border)], np.int32)  # fmt: skip
        cv2.fillConvexPoly(img, inner, (235, 235, 235), cv2.LINE_AA)
    elif kind == 2:  # blue mandatory sign
        cv2.circle(img, _pt(cx, cy), max(1, int(w / 2)), (180, 90, 20), -1, cv2.LINE_AA)
        cv2.arrowedLine(img, _pt(cx, y2 - border), _pt(cx, y1 + border), (245, 245, 245), border, cv2.LINE_AA)
    else:  # stop-like octagon
        pts = [
            _pt(cx + w / 2 * np.cos(a), cy + h / 2 * np.sin(a)) for a in np.arange(8) * np.pi / 4 + np.pi / 8
        ]
        cv2.fillConvexPoly(img, np.array(pts, np.int32), (30, 30, 200), cv2.LINE_AA)
        cv2.line(img, _pt(x1 + 0.25 * w, cy), _pt(x2 - 0.25 * w, cy), (240, 240, 240), border, cv2.LINE_AA)


_PAINTERS = {
    "car": _draw_car,
    "truck": _draw_truck,
    "bus": _draw_bus,
    "pedestrian": _draw_pedestrian,
    "cyclist": _draw_cyclist,
    "traffic_light": _draw_traffic_light,
    "traffic_sign": _draw_traffic_sign,
}


# ----------------------------------------------------------------------------------------- placement
@dataclass
class _Placed:
    name: str
    box: tuple[float, float, float, float]
    depth: float  # ground scale of the contact point (larger = nearer)
    pole: list | None = None  # line segments ((x, y), (x, y)) of the pole or mast holding the object


def _propose(name: str, scene: _Scene, rng: np.random.Generator) -> _Placed:
    w_u, h_u, s_min = _SPECS[name]
    on_pole = name in ("traffic_light", "traffic_sign")
    s = float(rng.uniform(s_min, 0.6) if on_pole else rng.uniform(s_min, 1.0) ** 0.8)
    u = scene.unit(s)
    ground = scene.row(s)
    side = 1 if rng.random() < 0.5 else -1
    pole = None
    if name in ("car", "truck"):
        lateral = LANES[int(rng.integers(3))] + rng.uniform(-0.15, 0.15)
    elif name == "bus":
        lateral = side * rng.uniform(0.3, 1.6)
    elif name == "pedestrian":
        lateral = side * rng.uniform(2.4, 3.4) if rng.random() < 0.8 else rng.uniform(-2.0, 2.0)
    elif name == "cyclist":
        lateral = side * rng.uniform(1.7, 2.3)
    else:  # on a pole at the roadside; half of the lights hang over the road from a mast arm
        lateral = side * rng.uniform(2.25, 2.6)
    w, h = w_u * u, h_u * u
    cx = scene.x(lateral, s)
    if name not in ("car", "truck", "bus"):  # roadside objects stay in view: nearer the road if need be
        cx = float(np.clip(cx, w / 2 + 1, scene.size - w / 2 - 1))
    if on_pole:
        top = ground - (2.6 if name == "traffic_light" else 1.6) * u
        pole = [((cx, top + h), (cx, ground))]
        if name == "traffic_light" and rng.random() < 0.5:
            cx = scene.x(side * rng.uniform(0.4, 1.6), s)
            pole = [((cx, top), (pole[0][0][0], top)), ((pole[0][0][0], top), (pole[0][0][0], ground))]
        return _Placed(name, (cx - w / 2, top, cx + w / 2, top + h), s, pole)
    return _Placed(name, (cx - w / 2, ground - h, cx + w / 2, ground), s)


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _clip(b, size: int) -> tuple[float, float, float, float]:
    return max(b[0], 0.0), max(b[1], 0.0), min(b[2], float(size)), min(b[3], float(size))


def _acceptable(candidate: _Placed, placed: list[_Placed], size: int) -> bool:
    box = candidate.box
    inside = _clip(box, size)
    if _area(inside) < 0.7 * _area(box) or inside[2] - inside[0] < 3 or inside[3] - inside[1] < 3:
        return False
    for other in placed:
        ix = _clip((max(box[0], other.box[0]), max(box[1], other.box[1]),
                    min(box[2], other.box[2]), min(box[3], other.box[3])), size)  # fmt: skip
        inter = _area(ix)
        if inter == 0:
            continue
        farther = candidate if candidate.depth < other.depth else other
        if inter > 0.45 * _area(farther.box) or abs(candidate.depth - other.depth) < 0.03:
            return False
    return True


# ---------------------------------------------------------------------------------------- background
def _sky_and_ground(img, scene: _Scene, rng, timeofday: str, weather: str, kind: str) -> None:
    size, hz = scene.size, int(scene.horizon)
    tops = {"daytime": (235, 190, 120), "dawn/dusk": (150, 110, 160), "night": (60, 25, 15)}
    lows = {"daytime": (250, 225, 200), "dawn/dusk": (120, 170, 250), "night": (90, 50, 35)}
    top, low = np.array(tops[timeofday], float), np.array(lows[timeofday], float)
    if weather in ("overcast", "rainy", "snowy", "foggy"):
        top = low = np.array([200, 200, 200], float) * (0.5 if timeofday == "night" else 1.0)
    ramp = np.linspace(0, 1, max(hz, 1))[:, None]
    img[:hz] = (top * (1 - ramp) + low * ramp)[:, None, :].astype(np.uint8)
    grass = np.array((70, 140, 90) if kind != "highway" else (80, 150, 120), float)
    if weather == "snowy":
        grass = np.array((235, 235, 235), float)
    img[hz:] = (grass + rng.normal(0, 6, 3)).clip(0, 255).astype(np.uint8)
    # roadside scenery above the horizon: buildings (city), trees (residential/highway)
    for side in (-1, 1):
        edge = scene.vx + side * size * 0.08
        for _ in range(int(rng.integers(3, 7))):
            x = edge + side * rng.uniform(0, size * 0.55)
            if kind == "city street":
                bw, bh = rng.uniform(0.08, 0.22) * size, rng.uniform(0.1, 0.38) * size
                color = _color(rng, 70, 190)
                _rect(img, x - bw / 2, hz - bh, x + bw / 2, hz + 2, color)
                for wy in np.arange(hz - bh + 4, hz - 3, max(4.0, size * 0.04)):
                    _rect(img, x - bw / 2 + 2, wy, x + bw / 2 - 2, wy + max(1.0, size * 0.01), (90, 80, 70))
            else:
                r = rng.uniform(0.03, 0.08) * size
                cv2.line(img, _pt(x, hz + 1), _pt(x, hz - r), (40, 60, 80), max(1, int(r * 0.2)))
                cv2.circle(img, _pt(x, hz - 1.6 * r), max(1, int(r)), _color(rng, 30, 120), -1, cv2.LINE_AA)

    # road, curbs, sidewalks and lane marks
    def quad(a: float, b: float, color) -> None:
        pts = [
            _pt(scene.x(a, 0), hz),
            _pt(scene.x(b, 0), hz),
            _pt(scene.x(b, 1), size),
            _pt(scene.x(a, 1), size),
        ]
        cv2.fillConvexPoly(img, np.array(pts, np.int32), color, cv2.LINE_AA)

    if kind != "highway":
        side_color = (170, 170, 175) if weather != "snowy" else (225, 225, 230)
        quad(-3.8, -ROAD_HALF, side_color)
        quad(ROAD_HALF, 3.8, side_color)
    asphalt = int(rng.integers(70, 110))
    quad(-ROAD_HALF, ROAD_HALF, (asphalt, asphalt, asphalt + 3))
    for lateral in (-ROAD_HALF + 0.05, ROAD_HALF - 0.05):
        cv2.line(
            img, _pt(scene.x(lateral, 0), hz), _pt(scene.x(lateral, 1), size), (230, 230, 230), 1, cv2.LINE_AA
        )
    phase = rng.uniform(0, 1)
    for lateral in (-0.7, 0.7):
        for k in range(12):
            s0, s1 = ((k + phase) / 12) ** 2, ((k + phase + 0.45) / 12) ** 2
            cv2.line(img, _pt(scene.x(lateral, s0), scene.row(s0)), _pt(scene.x(lateral, s1), scene.row(s1)),
                     (220, 220, 220), max(1, int(s1 * size * 0.015)), cv2.LINE_AA)  # fmt: skip


def _weather_and_light(img: np.ndarray, scene: _Scene, rng, weather: str, timeofday: str) -> np.ndarray:
    out = img.astype(np.float32)
    if weather == "foggy":
        density = rng.uniform(0.25, 0.45)
        rows = np.arange(scene.size, dtype=np.float32)
        depth = np.clip(1 - (rows - scene.horizon) / (scene.size - scene.horizon), 0, 1)
        alpha = (density * (0.45 + 0.55 * depth))[:, None, None]
        out = out * (1 - alpha) + 200 * alpha
    elif weather in ("rainy", "overcast"):
        out = out * 0.85 + out.mean(axis=2, keepdims=True) * 0.15
    level = {"daytime": 1.0, "dawn/dusk": 0.72, "night": 0.5}[timeofday] * rng.uniform(0.9, 1.1)
    out *= level
    if timeofday == "dawn/dusk":
        out[..., 2] *= 1.12
    return out.clip(0, 255).astype(np.uint8)


def _precipitation(img: np.ndarray, rng, weather: str) -> None:
    size = img.shape[0]
    if weather == "rainy":
        for _ in range(int(size * 0.6)):
            x, y = rng.uniform(0, size), rng.uniform(0, size)
            length = rng.uniform(0.02, 0.05) * size
            cv2.line(img, _pt(x, y), _pt(x - length * 0.2, y + length), (200, 200, 200), 1, cv2.LINE_AA)
    elif weather == "snowy":
        for _ in range(int(size * 0.8)):
            cv2.circle(img, _pt(rng.uniform(0, size), rng.uniform(0, size)), 1, (250, 250, 250), -1)


# ------------------------------------------------------------------------------------------- public
def render_scene(rng: np.random.Generator, imgsz: int = 320) -> tuple[np.ndarray, list[Box], dict[str, str]]:
    """Render one scene: BGR image, its boxes (canonical class ids, pixels) and its attributes."""
    attributes = {
        "weather": str(rng.choice(WEATHERS, p=WEATHER_P)),
        "timeofday": str(rng.choice(TIMES, p=TIME_P)),
        "scene": str(rng.choice(SCENES, p=SCENE_P)),
    }
    scene = _Scene(imgsz, imgsz * rng.uniform(0.36, 0.48), imgsz * rng.uniform(0.4, 0.6))
    img = np.zeros((imgsz, imgsz, 3), np.uint8)
    _sky_and_ground(img, scene, rng, attributes["timeofday"], attributes["weather"], attributes["scene"])
    weights = _WEIGHTS[attributes["scene"]]
    names = [n for n in weights if weights[n] > 0]
    p = np.array([weights[n] for n in names], float)
    placed: list[_Placed] = []
    for _ in range(int(rng.integers(4, 12))):
        for _attempt in range(8):
            candidate = _propose(names[int(rng.choice(len(names), p=p / p.sum()))], scene, rng)
            if _acceptable(candidate, placed, imgsz):
                placed.append(candidate)
                break
    lamps: Lamps = []
    for obj in sorted(placed, key=lambda o: o.depth):
        if obj.pole is not None:
            thickness = max(1, int(scene.unit(obj.depth) * 0.05))
            for a, b in obj.pole:
                cv2.line(img, _pt(*a), _pt(*b), (90, 90, 95), thickness, cv2.LINE_AA)
        _PAINTERS[obj.name](img, obj.box, rng, lamps)
    img = _weather_and_light(img, scene, rng, attributes["weather"], attributes["timeofday"])
    for lamp in lamps:
        lamp(img)
    _precipitation(img, rng, attributes["weather"])
    noise = rng.normal(0, 3, img.shape)
    img = (img + noise).clip(0, 255).astype(np.uint8)
    boxes = [Box(CLS[o.name], *_clip(o.box, imgsz)) for o in placed]
    return img, boxes, attributes


def generate_scenes(out_dir: Path, n: int, seed: int = 0, imgsz: int = 320) -> Path:
    """Write ``n`` seeded synthetic scenes as a YOLO dataset and return ``out_dir``.

    Layout: ``images/NNNNNN.jpg``, ``labels/NNNNNN.txt``, ``data.yaml`` (``train``/``val``:
    ``images``, ``nc`` and ``names`` of the canonical classes, no ``path`` key) and
    ``attributes.json`` (image file name -> weather, timeofday, scene). Written to a temporary
    folder and moved into place, so a failure leaves nothing half-written.

    Raises:
        DataError: ``n`` < 1, ``imgsz`` < 64, or ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir)
    if n < 1:
        raise DataError(f"synthetic:{n}: the number of images must be at least 1")
    if imgsz < 64:
        raise DataError(f"synthetic image size {imgsz}: must be at least 64")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir}: output folder exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        attributes = {}
        for i in range(n):
            img, boxes, attrs = render_scene(np.random.default_rng([seed, i]), imgsz)
            name = f"{i:06d}"
            cv2.imwrite(str(tmp / "images" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines = [b.yolo_line(imgsz, imgsz) for b in boxes]
            (tmp / "labels" / f"{name}.txt").write_text("".join(f"{x}\n" for x in lines))
            attributes[f"{name}.jpg"] = attrs
        (tmp / "attributes.json").write_text(json.dumps(attributes, indent=1, sort_keys=True))
        data = {
            "train": "images",
            "val": "images",
            "nc": len(DEFAULT_CLASSES),
            "names": dict(enumerate(DEFAULT_CLASSES)),
        }
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
