"""`cskd-pipeline study`: cells through the store, paired statistics, the same study
from every launcher, and paired cells that really share their start."""

from __future__ import annotations

import json
import math
import shutil
import statistics

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import edited, working_dir, write_manifest

# Two losses x two seeds of one-epoch students on digits: seconds per cell.
STUDY = ["study", "-m", "tiny.yaml", "--losses", "kd,cskd-core", "--seeds", "2", "-o", "student.train.epochs=1"]


def _cli(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def _numbers(study: dict) -> list[tuple]:
    return [(c["loss"], c["batch_size"], c["seed"], c["student_top1"], c["distill_id"]) for c in study["cells"]]


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """One study of the tiny manifest, and its rerun."""
    folder = tmp_path_factory.mktemp("study")
    with working_dir(folder):
        write_manifest(folder, edited(teacher__train__epochs=1))
        first = _cli(*STUDY, "--jobs", "2")  # two local worker processes compute the cells
        study = json.loads((folder / "reports" / "tiny" / "study.json").read_text())
        second = _cli(*STUDY)
        again = json.loads((folder / "reports" / "tiny" / "study.json").read_text())
        yield folder, first, study, second, again


def test_a_study_completes_and_writes_its_statistics(studied):
    folder, (code, out), study, _, _ = studied
    assert code == 0, out
    assert len(study["cells"]) == 4 and {c["loss"] for c in study["cells"]} == {"kd", "cskd-core"}
    assert study["study"]["reference"] == "kd" and study["study"]["seeds"] == [0, 1]
    for row in study["summary"]:
        assert row["n"] == 2 and set(row) >= {"mean", "std", "ci95", "scores", "seeds"}
        # the 95% Student-t interval of two scores, computed here from the scores (t(0.975, 1) = 12.706)
        half = 12.7062 * statistics.stdev(row["scores"]) / math.sqrt(2)
        mean = statistics.mean(row["scores"])
        assert row["ci95"] == pytest.approx([max(0.0, mean - half), min(100.0, mean + half)], abs=1e-3)
    (paired,) = study["paired"]
    assert paired["loss"] == "cskd-core" and paired["n"] == 2
    by_cell = {(c["loss"], c["seed"]): c["student_top1"] for c in study["cells"]}
    assert paired["diffs"] == pytest.approx([by_cell["cskd-core", s] - by_cell["kd", s] for s in (0, 1)])
    assert set(paired) >= {"mean_diff", "ci95", "excludes_zero", "wins", "losses", "ties", "sign_p"}
    diffs = paired["diffs"]
    assert (paired["wins"], paired["losses"], paired["ties"]) == (sum(d > 0 for d in diffs), sum(d < 0 for d in diffs),
                                                                  sum(d == 0 for d in diffs))
    html = (folder / "reports" / "tiny" / "study.html").read_text()
    assert "Paired differences against kd" in html and "data:image/png;base64," in html
    assert "| cskd-core | 64 |" not in out and "| cskd-core | 128 | 2 |" in out  # the printed table, the manifest's batch


def test_a_rerun_reuses_every_cell(studied):
    _, _, study, (code, out), again = studied
    assert code == 0, out
    assert all(c["cached"] for c in again["cells"]) and not any(c["cached"] for c in study["cells"])
    assert _numbers(again) == _numbers(study)
    assert out.count("(cached)") == 4


def test_submitit_and_local_processes_give_the_same_study(studied, tmp_path, monkeypatch):
    """The Slurm code path (submitit's local executor) recomputes one cell (kd, seed 0) in another
    store, sharing only the teacher, and must write the study.json that --jobs 2 computed and
    --jobs 1 reads back (one cell: each submitit job is a process that imports the pipeline)."""
    pytest.importorskip("submitit")
    folder, _, _, _, _ = studied
    one_cell = [*STUDY[:3], "--losses", "kd", "--seeds", "1", *STUDY[-2:]]  # cached here, computed there
    monkeypatch.chdir(folder)
    assert _cli(*one_cell)[0] == 0
    reference = json.loads((folder / "reports" / "tiny" / "study.json").read_text())
    for launcher, extra in (("submitit-local", []),):
        work = tmp_path / launcher
        work.mkdir()
        shutil.copy(folder / "tiny.yaml", work)
        shutil.copytree(folder / ".cskd", work / ".cskd")
        for kind in ("distill", "validate"):  # the cells' own artifacts go; the teacher stays
            shutil.rmtree(work / ".cskd" / "artifacts" / kind)
        monkeypatch.chdir(work)
        code, out = _cli(*one_cell, "--launcher", launcher, *extra)
        assert code == 0, out
        other = json.loads((work / "reports" / "tiny" / "study.json").read_text())
        assert len(other["cells"]) == 1 and not other["cells"][0]["cached"], launcher
        assert _numbers(other) == _numbers(reference), launcher
        assert other["summary"] == reference["summary"] and other["paired"] == reference["paired"]


def test_paired_cells_share_initialisation_and_data_order(tiny_manifest):
    """Cells of one seed differ in their loss only: the same distill config otherwise, the
    same initial student, and the same batches (a strong view draws from its own stream)."""
    from cskd.data import DeviceLoader
    from pipeline.manifest_io import load_manifest
    from pipeline.study import Cell, cell_manifest, parse_losses
    from stagekit.data import train_val
    from stagekit.models import build_network
    from stages.distill import DistillStage

    base = load_manifest(tiny_manifest)
    kd, paper = parse_losses("kd,cskd-paper")
    configs = [DistillStage.configure(cell_manifest(base, Cell(loss, 64, 3))) for loss in (kd, paper)]
    assert configs[0].model_dump(exclude={"loss"}) == configs[1].model_dump(exclude={"loss"})
    assert configs[0].loss.kind == "kd" and configs[1].loss.kind == "cskd"
    source = configs[0].data.source
    nets = [build_network(c.model, source, seed=c.train.seed).state_dict() for c in configs]
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
    other_seed = build_network(configs[0].model, source, seed=4).state_dict()
    assert not all(torch.equal(nets[0][k], other_seed[k]) for k in nets[0])
    train, _ = train_val(configs[0].data)
    t = configs[0].train
    loaders = [DeviceLoader(train, batch_size=64, crop_padding=t.augment.crop_padding, flip=t.augment.flip,
                            strong=strong, seed=t.seed) for strong in (False, True)]
    for (w1, y1, _), (w2, y2, s2) in zip(*loaders, strict=True):
        assert torch.equal(y1, y2) and torch.equal(w1, w2) and s2 is not None


def test_paired_statistics_by_hand():
    from pipeline.study_stats import summarize

    rows = [{"loss": loss, "batch_size": 64, "seed": s, "student_top1": v}
            for loss, values in (("kd", [80.0, 81.0, 82.0]), ("cskd-core", [81.0, 83.0, 85.0]))
            for s, v in enumerate(values)]
    stats = summarize(rows, reference="kd")
    (paired,) = stats["paired"]
    assert paired["diffs"] == [1.0, 2.0, 3.0] and paired["mean_diff"] == 2.0
    half = 4.302652729911275 / 3 ** 0.5  # t(0.975, 2) * sd 1 / sqrt(3)
    assert paired["ci95"] == pytest.approx((2.0 - half, 2.0 + half))
    assert paired["excludes_zero"] is False and (paired["wins"], paired["losses"], paired["ties"]) == (3, 0, 0)
    assert paired["sign_p"] == pytest.approx(0.25)
    kd = next(r for r in stats["summary"] if r["loss"] == "kd")
    assert kd["mean"] == 81.0 and kd["std"] == 1.0
    assert stats["conclusion"] == ("What this data supports: cskd-core against kd: 3 of 3 seeds ahead, mean +2.00 "
                                   f"(interval [{2.0 - half:+.2f}, {2.0 + half:+.2f}]); 3 pairs are fewer than 5, "
                                   "too few to establish an effect size.")


def test_a_top1_interval_stays_within_0_and_100_and_the_sentence_says_what_holds():
    from pipeline.study_stats import summarize

    rows = [{"loss": loss, "batch_size": 64, "seed": s, "student_top1": v}
            for loss, values in (("kd", [95.0, 97.5, 97.0]), ("cskd-core", [97.0, 100.0, 99.2]))
            for s, v in enumerate(values)]
    stats = summarize(rows, reference="kd")
    for row in stats["summary"]:
        low, high = row["ci95"]
        assert 0.0 <= low <= row["mean"] <= high <= 100.0  # unclipped, cskd-core's would pass 100
    assert next(r for r in stats["summary"] if r["loss"] == "cskd-core")["ci95"][1] == 100.0
    (paired,) = stats["paired"]  # diffs 2.0, 2.5, 2.2: the interval excludes 0
    assert paired["excludes_zero"] is True
    assert stats["conclusion"].startswith("What this data supports: cskd-core against kd: 3 of 3 seeds ahead, mean "
                                          "+2.23 (interval [+")


@pytest.mark.parametrize("args, needle", [
    (["--losses", "kd,nonsense"], "unknown loss 'nonsense'"),
    (["--losses", "cskd-core", "--reference", "kd"], "--reference 'kd' is not among --losses"),
    (["--losses", "kd,kd"], "names a loss twice"),
    (["--losses", "kd,kd:temperature=-1"], "study cell kd:temperature=-1"),
    (["--batch-sizes", "64,x"], "--batch-sizes"),
    (["--losses", "kd@nowhere,cskd-core"], "unknown recipe 'nowhere'"),
    (["--ablate", "cskd", "--losses", "kd"], "give --ablate or --losses, not both"),
    (["--seeds-for", "cskd-paper=3"], "--seeds-for: 'cskd-paper=3' is not LABEL=N with LABEL one of kd, cskd-core"),
    (["--ablate", "cskd", "--seeds-for", "cskd-paper=0"], "--seeds-for"),
])
def test_bad_study_options_exit_2_with_one_line(tiny_manifest, args, needle):
    code, out = _cli("study", "-m", str(tiny_manifest), *args)
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], out
    assert not (tiny_manifest.parent / ".cskd").exists()  # refused before anything ran


def test_a_baseline_can_carry_its_published_recipe(tiny_manifest):
    """`kd@mdistiller` trains KD with mdistiller's recipe, `--recipe own` gives every loss its own
    (KD, DKD, DIST: mdistiller's 240 epochs at lr 0.05; CS-KD: the authors' 480 at 0.025, 0.01 for
    a MobileNetV2 student), and `shared` (the default) keeps the manifest's for all."""
    from pipeline.manifest_io import load_manifest
    from pipeline.study import Cell, cell_manifest, parse_losses, with_recipes

    base = load_manifest(tiny_manifest)
    specs = parse_losses("kd@mdistiller,cskd-core")
    assert [(s.label, s.recipe) for s in specs] == [("kd@mdistiller", "mdistiller"), ("cskd-core", None)]
    assert [s.recipe for s in with_recipes(specs, "own")] == ["mdistiller", "cskd"]
    assert [s.recipe for s in with_recipes(parse_losses("kd,dkd,cskd-paper"), "shared")] == [None, None, None]

    def train(spec, manifest=base):
        return cell_manifest(manifest, Cell(spec, batch_size=64, seed=3)).student.train

    kd, cskd = with_recipes(specs, "own")
    t = train(kd)
    assert (t.epochs, t.lr, t.schedule, t.milestones, t.seed, t.batch_size) == (240, 0.05, "step", [150, 180, 210], 3, 64)
    t = train(cskd)
    assert (t.epochs, t.lr) == (480, 0.025)
    mobile = base.model_copy(update={"student": base.student.model_copy(update={"model": "MobileNetV2"})})
    assert train(cskd, mobile).lr == 0.01 and train(kd, mobile).lr == 0.01
    assert train(parse_losses("kd")[0]).epochs == base.student.train.epochs  # shared: the manifest's


def test_the_cskd_ablation_expands_to_exactly_these_arms(tiny_manifest):
    """`--ablate cskd`: kd at mdistiller's defaults, kd at cskd-core's label weight, cskd-core at a
    fixed temperature, cskd-core, cskd-paper; each contrast differs from its control in one part."""
    from cskd.loss_registry import build_objective
    from pipeline.manifest_io import load_manifest
    from pipeline.study import Cell, StudyRequest, ablation, cell_manifest, with_seeds

    base = load_manifest(tiny_manifest)
    arms, contrasts = ablation("cskd")
    assert [a.label for a in arms] == ["kd", "kd-ce1", "cskd-fixed-t", "cskd-core", "cskd-paper"]
    loss = {a.label: cell_manifest(base, Cell(a, 64, 0)).student.loss for a in arms}
    assert (loss["kd"].ce_weight, loss["kd"].kd_weight, loss["kd"].temperature) == (0.1, 0.9, 4.0)
    # the label-term control: kd with cskd-core's CE weight, nothing else changed
    assert loss["kd-ce1"].ce_weight == loss["cskd-core"].ce_weight == 1.0
    assert loss["kd-ce1"].model_dump(exclude={"ce_weight"}) == loss["kd"].model_dump(exclude={"ce_weight"})
    # the CSWT control: cskd-core with every sample at the fixed temperature, nothing else changed
    fixed = loss["cskd-fixed-t"]
    assert fixed.cswt_low == fixed.cswt_high == fixed.temperature == 4.0
    assert fixed.model_dump(exclude={"cswt_low", "cswt_high"}) == loss["cskd-core"].model_dump(
        exclude={"cswt_low", "cswt_high"})
    assert (loss["cskd-core"].cswt_low, loss["cskd-core"].cswt_high) == (2.0, 6.0)
    assert loss["cskd-core"].preset == "core" and loss["cskd-paper"].preset == "paper"
    assert loss["cskd-paper"].model_dump(exclude={"preset"}) == loss["cskd-core"].model_dump(exclude={"preset"})
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(8, 10), torch.nn.Linear(8, 10)
    out = build_objective(fixed, student, teacher)(torch.randn(16, 8), torch.randint(0, 10, (16,)))
    assert out["mean_temperature"].item() == 4.0  # CSWT off: no per-sample temperature
    out = build_objective(loss["cskd-core"], student, teacher)(torch.randn(16, 8), torch.randint(0, 10, (16,)))
    assert out["mean_temperature"].item() != 4.0
    assert [(c.loss, c.control) for c in contrasts] == [("kd-ce1", "kd"), ("cskd-fixed-t", "kd-ce1"),
                                                         ("cskd-core", "cskd-fixed-t"), ("cskd-paper", "cskd-core"),
                                                         ("cskd-core", "kd")]
    # seed by seed, the paper arm on its own count: a study stopped part-way holds whole pairs
    request = StudyRequest(losses=with_seeds(arms, "cskd-paper=3"), seeds=5, batch_sizes=[64])
    cells = [(c.loss.label, c.seed) for c in request.cells()]
    assert len(cells) == 4 * 5 + 3 and cells[:5] == [(a.label, 0) for a in arms]
    assert [seed for label, seed in cells if label == "cskd-paper"] == [0, 1, 2]
    assert [c[1] for c in cells] == sorted(c[1] for c in cells)


# The published configs each recipe copies: (recipe, student) -> (epochs, lr, milestones, weight decay,
# momentum), read from the files named. mdistiller: configs/cifar100/<file>; the authors: CSKD.md 4.
PUBLISHED = {
    ("mdistiller", "resnet8x4"): ("kd.yaml, dkd/res32x4_res8x4.yaml", 240, 0.05),
    ("mdistiller", "resnet20"): ("dkd/res56_res20.yaml", 240, 0.05),
    ("mdistiller", "ShuffleV1"): ("dkd/res32x4_shuv1.yaml, dkd/wrn40_2_shuv1.yaml", 240, 0.01),
    ("mdistiller", "ShuffleV2"): ("dkd/res32x4_shuv2.yaml", 240, 0.01),
    ("mdistiller", "MobileNetV2"): ("dkd/vgg13_mv2.yaml, dkd/res50_mv2.yaml", 240, 0.01),
    ("cskd", "resnet8x4"): ("CSKD.md 4: ResNet/WRN/VGG students", 480, 0.025),
    ("cskd", "wrn_16_2"): ("CSKD.md 4: ResNet/WRN/VGG students", 480, 0.025),
    ("cskd", "ShuffleV2"): ("CSKD.md 4: ShuffleNet/MobileNet students", 480, 0.01),
    ("cskd", "MobileNetV2"): ("CSKD.md 4: ShuffleNet/MobileNet students", 480, 0.01),
}


@pytest.mark.parametrize("recipe, student", sorted(PUBLISHED))
def test_each_recipe_trains_at_the_published_rate(recipe, student):
    from pipeline.study import recipe_settings

    source, epochs, lr = PUBLISHED[recipe, student]
    settings = recipe_settings(recipe, student)
    assert (settings["epochs"], settings["lr"]) == (epochs, lr), source
    assert (settings["milestones"], settings["gamma"], settings["weight_decay"], settings["momentum"]) == (
        [150, 180, 210], 0.1, 5.0e-4, 0.9), source
