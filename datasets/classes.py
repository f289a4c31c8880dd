"""The canonical driving classes and the maps from source class names to them.

FleetFL trains one detector on data from several sources, so every reader maps its own class names
onto ONE list of canonical classes (the YOLO class ids are their positions in that list):

====  ==============  =========================================================================
 id   canonical       source names mapped to it by default
====  ==============  =========================================================================
 0    car             KITTI Car, Van; BDD100K car; Udacity car
 1    truck           KITTI Truck; BDD100K truck, trailer; Udacity truck
 2    bus             BDD100K bus
 3    pedestrian      KITTI Pedestrian, Person_sitting; BDD100K pedestrian, person, other person
 4    cyclist         KITTI Cyclist; BDD100K rider; Udacity biker (a person riding a bike or motor)
 5    motorcycle      BDD100K motorcycle, motor
 6    bicycle         BDD100K bicycle, bike (the vehicle; its rider is a cyclist)
 7    traffic_light   BDD100K traffic light; Udacity trafficLight and its colour variants
 8    traffic_sign    BDD100K traffic sign
 9    train           KITTI Tram; BDD100K train
====  ==============  =========================================================================

Dropped by default (``null``): KITTI ``Misc``, BDD100K ``other vehicle``, ``drivable area`` and
``lane``. KITTI ``DontCare`` regions are not objects at all and are always ignored.

Names are matched case-insensitively, ignoring spaces, ``_`` and ``-`` (``Traffic Light`` =
``traffic_light``). A user map (``--classes MAP.yaml``) is either a plain mapping
``source name: canonical name`` (or ``null`` to drop), applied on top of the default map, or a
mapping with ``classes: [..]`` (your own canonical list) and ``map: {..}`` (then only your map
applies; canonical names map to themselves).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from datasets.errors import DataError
from datasets.files import read_yaml

#: The canonical classes, in YOLO class-id order.
DEFAULT_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "pedestrian",
    "cyclist",
    "motorcycle",
    "bicycle",
    "traffic_light",
    "traffic_sign",
    "train",
)

#: Source class name -> canonical class (None: dropped). Keys are matched through :func:`normalize`.
DEFAULT_CLASS_MAP: dict[str, str | None] = {
    # KITTI label_2
    "Car": "car",
    "Van": "car",
    "Truck": "truck",
    "Pedestrian": "pedestrian",
    "Person_sitting": "pedestrian",
    "Cyclist": "cyclist",
    "Tram": "train",
    "Misc": None,
    # BDD100K (det_20 and the 2018 names)
    "bus": "bus",
    "person": "pedestrian",
    "other person": "pedestrian",
    "rider": "cyclist",
    "motorcycle": "motorcycle",
    "motor": "motorcycle",
    "bicycle": "bicycle",
    "bike": "bicycle",
    "traffic light": "traffic_light",
    "traffic sign": "traffic_sign",
    "train": "train",
    "trailer": "truck",
    "other vehicle": None,
    "drivable area": None,
    "lane": None,
    # Udacity / Roboflow self-driving-car exports
    "biker": "cyclist",
    "trafficLight": "traffic_light",
    "trafficLight-Red": "traffic_light",
    "trafficLight-Green": "traffic_light",
    "trafficLight-Yellow": "traffic_light",
    "trafficLight-RedLeft": "traffic_light",
    "trafficLight-GreenLeft": "traffic_light",
    "trafficLight-YellowLeft": "traffic_light",
}

#: KITTI regions that are not objects (never a class, never an error).
IGNORED_NAMES: frozenset[str] = frozenset({"dontcare"})


def normalize(name: str) -> str:
    """Class-name key for matching: lower case without spaces, ``_`` or ``-``."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


@dataclass(frozen=True)
class ClassMap:
    """Canonical class list plus the lookup from (normalized) source names."""

    classes: tuple[str, ...]
    lookup: dict[str, str | None]
    origin: str = "default class map"

    @property
    def names(self) -> dict[int, str]:
        """Ultralytics ``names``: class id -> canonical name."""
        return dict(enumerate(self.classes))

    def is_ignored(self, name: str) -> bool:
        """True for regions that are not objects (KITTI ``DontCare``)."""
        return normalize(name) in IGNORED_NAMES

    def resolve(self, name: str) -> int | None:
        """Canonical class id of a source name, None when the map drops it.

        Raises:
            KeyError: the name is neither in the map nor a canonical class (callers report it).
        """
        key = normalize(name)
        if key in self.lookup:
            target = self.lookup[key]
            return None if target is None else self.classes.index(target)
        raise KeyError(name)


def _build(classes: tuple[str, ...], mapping: dict[str, str | None], origin: str) -> ClassMap:
    lookup: dict[str, str | None] = {normalize(c): c for c in classes}
    for source, target in mapping.items():
        lookup[normalize(source)] = target
    return ClassMap(classes=classes, lookup=lookup, origin=origin)


def default_class_map() -> ClassMap:
    """The documented default driving class map."""
    return _build(DEFAULT_CLASSES, DEFAULT_CLASS_MAP, "default class map")


def load_class_map(path: Path | None) -> ClassMap:
    """The default map, or the default map updated by / replaced with the user map at ``path``.

    Raises:
        DataError: unreadable YAML, a wrong structure, or a target that is not a canonical class.
    """
    if path is None:
        return default_class_map()
    path = Path(path)
    data = read_yaml(path, "class map")
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: class map must be a non-empty mapping 'source name: canonical name'")
    if "classes" in data or "map" in data:
        classes = data.get("classes")
        mapping = data.get("map") or {}
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise DataError(f"{path}: field 'classes' must be a non-empty list of class names")
        if len(set(classes)) != len(classes):
            raise DataError(f"{path}: field 'classes' lists a class twice")
        if not isinstance(mapping, dict):
            raise DataError(f"{path}: field 'map' must be a mapping 'source name: canonical name'")
        canonical, base, field = tuple(classes), {}, "map."
    else:
        canonical, base, mapping, field = DEFAULT_CLASSES, dict(DEFAULT_CLASS_MAP), data, ""
    for source, target in mapping.items():
        if target is not None and target not in canonical:
            raise DataError(
                f"{path}: field '{field}{source}': unknown canonical class {target!r} "
                f"(expected one of {', '.join(canonical)} or null)"
            )
    base.update({str(k): v for k, v in mapping.items()})
    return _build(canonical, base, str(path))
