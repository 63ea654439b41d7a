"""The arms of a study: the named losses and their variants (``--losses``), the published
recipes a baseline can carry (``--recipe``, ``NAME@RECIPE``), named ablations (``--ablate``)
with the contrasts that isolate each part of a method, and per-arm seed counts (``--seeds-for``).
``pipeline.study`` runs them."""

from __future__ import annotations

from dataclasses import dataclass

from foundation.errors import ManifestError

# Published training recipes a baseline can carry (`--losses kd@mdistiller`, or `--recipe own`),
# as student.train settings; the study's batch size and seed still come from the cell. Each
# names the configs it copies; a test holds every rate to them.
_STEP = {"schedule": "step", "milestones": [150, 180, 210], "gamma": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4,
         "warmup_epochs": 0}
RECIPES: dict[str, dict] = {
    # mdistiller configs/cifar100/kd.yaml, dkd/res32x4_res8x4.yaml, ... (KD, DKD, DIST)
    "mdistiller": {**_STEP, "epochs": 240, "lr": 0.05},
    # the CS-KD authors' (MLKD's) schedule (CSKD.md section 4)
    "cskd": {**_STEP, "epochs": 480, "lr": 0.025},
}
# Both recipes train ShuffleNet and MobileNetV2 students at 0.01: mdistiller's
# dkd/res32x4_shuv1.yaml, res32x4_shuv2.yaml, wrn40_2_shuv1.yaml, vgg13_mv2.yaml, res50_mv2.yaml,
# and the authors' configs (CSKD.md section 4). Not a ratio of the main rate (0.4 x 0.05 = 0.02).
SMALL_STUDENT_LR = {"mdistiller": 0.01, "cskd": 0.01}
OWN_RECIPE = {"ce": "mdistiller", "kd": "mdistiller", "dkd": "mdistiller", "dist": "mdistiller", "cskd": "cskd"}
_LOW_LR_STUDENTS = ("ShuffleV1", "ShuffleV2", "MobileNetV2")


@dataclass(frozen=True)
class LossSpec:
    label: str  # as the user wrote it: "kd", "kd:temperature=2", "kd@mdistiller"
    loss: dict
    recipe: str | None = None  # a name in RECIPES; None: the manifest's student.train
    seeds: int | None = None  # this arm's seed count (--seeds-for); None: the study's --seeds


@dataclass(frozen=True)
class Contrast:
    """Two arms whose paired difference isolates one part of a method."""

    loss: str
    control: str
    isolates: str  # what the difference measures, as a sentence's object: "the label weight"

def parse_losses(text: str) -> list[LossSpec]:
    """``ce,kd,cskd-core`` or variants ``kind:key=value,key=value``: a comma-separated item
    with ``=`` and no ``:`` continues the variant before it."""
    import yaml

    from cskd.loss_registry import LOSS_PRESETS, registered_losses

    groups: list[list[str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item.split("=", 1)[0]:
            if not groups:
                raise ManifestError(f"--losses: {item!r} has no loss before it; write kind:key=value")
            groups[-1].append(item)
        else:
            groups.append([item])
    if not groups:
        raise ManifestError("--losses: name at least one loss, e.g. --losses kd,cskd-core")
    specs = []
    for group in groups:
        head, _, first = group[0].partition(":")
        head, _, recipe = head.partition("@")
        if recipe and recipe not in RECIPES:
            raise ManifestError(f"--losses: unknown recipe {recipe!r} in {group[0]!r}; choose from {', '.join(RECIPES)}")
        if head in LOSS_PRESETS:
            loss = dict(LOSS_PRESETS[head])
        elif head in registered_losses():
            loss = {"kind": head}
        else:
            raise ManifestError(f"--losses: unknown loss {head!r}; choose from "
                                f"{', '.join([*LOSS_PRESETS, *sorted(set(registered_losses()) - {'cskd'})])}")
        for setting in ([first] if first else []) + group[1:]:
            key, sep, value = setting.partition("=")
            if not sep or not key:
                raise ManifestError(f"--losses: {setting!r} in {head!r} is not key=value")
            loss[key.strip()] = yaml.safe_load(value)
        label = group[0].partition(":")[0] if len(group) == 1 and not first else ",".join([group[0], *group[1:]])
        specs.append(LossSpec(label, loss, recipe or None))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ManifestError(f"--losses: {labels} names a loss twice")
    return specs


def ablation(name: str) -> tuple[list[LossSpec], list[Contrast]]:
    """``study --ablate NAME``: the arms and contrasts of a named ablation.

    ``cskd``: each arm changes one part against the arm before it, so the paired
    difference of neighbours isolates that part:

    - ``kd``: Hinton's KD at mdistiller's defaults (CE 0.1, KL 0.9, T 4);
    - ``kd-ce1``: the same with cskd-core's label weight (the control for the label term:
      cskd-core weighs CE ten times more than kd does);
    - ``cskd-fixed-t``: cskd-core with CSWT off, every sample at the fixed temperature
      (``cswt_low = cswt_high = T``): the cosine loss against KL at the same label weight;
    - ``cskd-core``: CE + CS(T) + CS(CSWT), so against ``cskd-fixed-t`` it isolates CSWT;
    - ``cskd-paper``: the authors' full objective (two views, masks, correlation terms).
    """
    from cskd.loss_configs import CSKDLoss

    if name != "cskd":
        raise ManifestError(f"--ablate: unknown ablation {name!r}; choose from cskd")
    core = CSKDLoss(kind="cskd")
    label_weight = core.ce_weight
    fixed = core.temperature
    arms = [LossSpec("kd", {"kind": "kd"}),
            LossSpec("kd-ce1", {"kind": "kd", "ce_weight": label_weight}),
            LossSpec("cskd-fixed-t", {"kind": "cskd", "preset": "core", "cswt_low": fixed, "cswt_high": fixed}),
            LossSpec("cskd-core", {"kind": "cskd", "preset": "core"}),
            LossSpec("cskd-paper", {"kind": "cskd", "preset": "paper"})]
    contrasts = [Contrast("kd-ce1", "kd", f"the label weight (CE {label_weight:g} in place of kd's 0.1)"),
                 Contrast("cskd-fixed-t", "kd-ce1", f"the cosine loss in place of KL (both at T = {fixed:g})"),
                 Contrast("cskd-core", "cskd-fixed-t", "CSWT (per-sample temperatures in place of a fixed one)"),
                 Contrast("cskd-paper", "cskd-core",
                          "the authors' additions (strong view, confidence masks, correlation terms)"),
                 Contrast("cskd-core", "kd", "CS-KD core as a whole against KD")]
    return arms, contrasts


def with_seeds(specs: list[LossSpec], text: str | None) -> list[LossSpec]:
    """``--seeds-for LABEL=N,LABEL=N``: fewer (or more) seeds for the arms named."""
    if not text:
        return specs
    counts: dict[str, int] = {}
    labels = [s.label for s in specs]
    for item in (part.strip() for part in text.split(",") if part.strip()):
        label, sep, value = item.rpartition("=")
        if not sep or label not in labels or not value.isdigit() or int(value) < 1:
            raise ManifestError(f"--seeds-for: {item!r} is not LABEL=N with LABEL one of {', '.join(labels)} "
                                f"and N a positive integer")
        counts[label] = int(value)
    return [LossSpec(s.label, s.loss, s.recipe, counts.get(s.label, s.seeds)) for s in specs]


def with_recipes(specs: list[LossSpec], recipe: str) -> list[LossSpec]:
    """``--recipe own``: every loss without an explicit ``@recipe`` takes its published one
    (``OWN_RECIPE``); ``shared``: the manifest's student.train for all (as written)."""
    if recipe == "shared":
        return specs
    return [s if s.recipe else LossSpec(s.label, s.loss, OWN_RECIPE.get(s.loss["kind"]), s.seeds) for s in specs]


def recipe_settings(recipe: str, student_model: str) -> dict:
    """student.train settings of a named recipe for this student (the published lower rate for
    ShuffleNet and MobileNetV2 students)."""
    settings = dict(RECIPES[recipe])
    if student_model in _LOW_LR_STUDENTS:
        settings["lr"] = SMALL_STUDENT_LR[recipe]
    return settings
