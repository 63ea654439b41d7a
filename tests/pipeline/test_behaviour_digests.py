"""Behaviour pins the cache: what each stage kind computes on a fixed tiny input (the strong view,
each loss preset's training step, the export graph, the INT8 graph, the teacher's step) must match
the committed table for the stage's version (``tests/golden/behaviour.py``). A change in behaviour
with no version bump would let the store reuse what the old code made; this test names the stage
whose version to bump."""

from __future__ import annotations

import json

from tests.golden.behaviour import TABLE, behaviour, differences


def test_what_each_stage_computes_is_pinned_to_its_version():
    table, now = json.loads(TABLE.read_text()), behaviour()
    problems = []
    for kind, entry in now.items():
        pinned = table.get(kind)
        if pinned is None or pinned["version"] != entry["version"]:
            problems.append(f"{kind}: the table pins version {pinned and pinned['version']}, the stage is version "
                            f"{entry['version']}: regenerate it (python -m tests.golden.behaviour --write)")
        elif changed := differences(pinned["behaviour"], entry["behaviour"]):
            problems.append(f"{kind}: what the stage computes changed ({'; '.join(changed[:3])}) but its version is "
                            f"still {entry['version']}: bump the {kind} stage's version (its cached artifacts were "
                            f"made by the old code), then python -m tests.golden.behaviour --write")
    assert not problems, "\n".join(problems)


def test_floats_are_compared_within_the_tolerance_and_everything_else_exactly():
    assert differences({"a": [1.0, 2e-7]}, {"a": [1.0005, 9e-6]}) == []  # within rtol 1e-3 / atol 1e-5
    assert differences({"a": [1.0]}, {"a": [1.002]}) == ["a[0]: 1.0 -> 1.002"]
    assert differences({"ops": ["Conv", "Relu"]}, {"ops": ["Conv", "Clip"]}) == ["ops[1]: Relu -> Clip"]
    assert differences({"sha": "ab"}, {"sha": "ac"}) and differences({"a": 1.0}, {"b": 1.0})
    assert differences([1.0], [1.0, 2.0])  # a list that grew
