"""What a user of a bundle must know to feed its model and read its output: written into the ship
stage's model card and the serving stage's card alike, so both say the same."""

from __future__ import annotations

from foundation.artifact import Artifact


def describe_io(artifacts: dict[str, Artifact]) -> dict:
    """What a user of the bundle must know to feed the model and read its output."""
    data = artifacts["validate"].record.get("data", {})
    return {
        "input": {
            **artifacts["export"].record["input"],
            "normalisation": "inside the model: feed pixels scaled to [0, 1], do not normalise "
                             "again",
        },
        "output": {
            "name": "logits",
            "shape": ["batch", data.get("num_classes")],
            "meaning": "unnormalised scores; softmax gives probabilities, argmax the class",
        },
        "class_names": data.get("class_names")
        or [str(i) for i in range(data.get("num_classes", 0))],
    }
