"""The manifest's JSON schema, assembled from the registries: the foundation's fixed sections,
every section stagekit and the stages registered (``data``, ``teacher``, ``student``, ``gate``,
``latency``), every ``export:`` key a back-end registered, and every registered ``student.loss``
kind (pydantic sees only their common base, which has just ``kind``). It lives in the roof because
the loss kinds are the method's (cskd), which the foundation does not import."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from cskd.loss_registry import registered_losses
from foundation.manifest import Manifest
from foundation.sections import EXPORT_SETTINGS, SECTIONS

REF = "#/$defs/{model}"


def manifest_schema() -> dict:
    schema = Manifest.model_json_schema(by_alias=True, ref_template=REF)
    defs = schema.setdefault("$defs", {})

    sections = SECTIONS.model().model_json_schema(by_alias=True, ref_template=REF)
    defs.update(sections.pop("$defs", {}))
    # the sections stages and stagekit registered (data, teacher, student, gate, latency) follow the
    # manifest's identity (version, name, store), as users write them; the run's settings come after
    fixed = schema["properties"]
    first = {k: fixed.pop(k) for k in ("version", "name", "store") if k in fixed}
    schema["properties"] = {**first, **sections["properties"], **fixed}
    schema["required"] = [*schema.get("required", []), *sections.get("required", [])]
    schema["additionalProperties"] = False

    settings = EXPORT_SETTINGS.model().model_json_schema(by_alias=True, ref_template=REF)
    defs.update(settings.pop("$defs", {}))
    export = defs["ExportSection"]
    export["properties"].update(settings["properties"])
    export["additionalProperties"] = False

    losses = [entry.config for entry in registered_losses().values()]
    refs, loss_defs = models_json_schema([(config, "validation") for config in losses], by_alias=True,
                                         ref_template=REF)
    defs.update(loss_defs.get("$defs", {}))
    defs.pop("LossConfig", None)
    loss = defs["StudentSection"]["properties"]["loss"]
    loss.pop("$ref", None)
    loss["oneOf"] = [refs[(config, "validation")] for config in losses]
    loss["discriminator"] = {"propertyName": "kind"}
    return schema
