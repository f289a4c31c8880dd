"""How the pipeline's steps hand their return values to each other: JSON, never a pickle.

ClearML's ``PipelineController`` stores a function step's return value as an artifact and the next
step (and ``collect_outputs``) reads it back; by default a dict is pickled and unpickled, so whoever
could replace that file on the server would run code in the reading process. These two functions
replace the SDK's default. ClearML copies their source, with this module's imports, into every
step's script: so this module imports only ``json`` (no ``from __future__``, which must come first
in a file) and its annotations name builtins only.
"""

import json


def to_bytes(value: object) -> bytes:
    """A step's return value as JSON bytes."""
    return json.dumps(value).encode("utf-8")


def from_bytes(data: bytes) -> object:
    """A step's return value read back from JSON (nothing is unpickled)."""
    return json.loads(data)
