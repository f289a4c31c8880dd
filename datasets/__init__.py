"""FleetFL datasets: readers (KITTI, BDD100K, YOLO), validation, partitioning, synthetic scenes.

This top-level package shadows HuggingFace's ``datasets`` wherever the repository root is on the
path: FleetFL never depends on HuggingFace ``datasets`` or ``flwr-datasets``.
"""
