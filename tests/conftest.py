"""Shared fixtures: tiny manifests in a temporary working directory, the shared data folder."""

from __future__ import annotations

import contextlib
import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The stand-in for a download on this workplace's machines; tests that need it skip elsewhere.
SHARED_DATA = REPO.parent / "shared" / "data"


TINY_MANIFEST = """
name: tiny
store: .cskd
data:
  name: digits
  val_fraction: 0.1
teacher:
  model: resnet8
  train: {epochs: 2, batch_size: 128, lr: 0.05, schedule: cosine, augment: {crop_padding: 1, flip: false}}
student:
  model: resnet8
  loss: {kind: cskd, preset: core}
  train: {epochs: 2, batch_size: 128, lr: 0.05, schedule: cosine, augment: {crop_padding: 1, flip: false}}
export: {opset: 18}
gate: {max_drop: 100.0, min_onnx_agreement: 99.0}
ship: {dir: shipped}
"""


def edited(text: str = TINY_MANIFEST, **changes) -> str:
    """The manifest with fields replaced; ``student__train__epochs=3`` sets student.train.epochs."""
    import yaml

    data = yaml.safe_load(textwrap.dedent(text))
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return yaml.safe_dump(data, sort_keys=False)


def write_manifest(folder: Path, text: str = TINY_MANIFEST, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@contextlib.contextmanager
def working_dir(folder: Path):
    """Run the block in ``folder`` (module-scoped fixtures cannot use monkeypatch.chdir)."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(cwd)


def write_distribution(root: Path, name: str, version: str, modules: dict[str, str], entry_points: str) -> Path:
    """An installed distribution as pip leaves one on ``root`` (a ``sys.path`` entry): the package
    ``name`` (with ``-`` as ``_``) holding ``modules`` (module name -> source), and its ``.dist-info``
    with METADATA and ``entry_points.txt``. For the plug-in tests."""
    package = root / name.replace("-", "_")
    package.mkdir()
    for module, text in {"__init__": "", **modules}.items():
        (package / f"{module}.py").write_text(textwrap.dedent(text))
    info = root / f"{package.name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip())
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A temporary working directory (stores and ship folders are relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_manifest(workdir) -> Path:
    return write_manifest(workdir)


@pytest.fixture
def tiny_trained(shipped_run, workdir) -> Path:
    """The tiny manifest in a working directory whose store holds the tiny run's artifacts (a copy):
    for a test whose subject comes after training, the run computes only what its edits change."""
    import shutil

    shutil.copytree(shipped_run[0] / ".cskd", workdir / ".cskd", symlinks=True)
    return write_manifest(workdir)


@pytest.fixture
def fashion_root() -> Path:
    root = SHARED_DATA / "fashion-mnist"
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST files not found in {root} (the shared data folder of this workplace)")
    return root


# The exporter's own tests export for real every time; the other tests' exports are a dependency.
EXPORTER_TESTS = ("tests/exports/test_exports.py::",)


@pytest.fixture(scope="session", autouse=True)
def _shared_exports():
    """Under `make test`, an ONNX export of a network already exported with the same weights, sample
    and settings (by any of its processes) is read back instead of exported again (issue 39).

    Training is deterministic, so tests running the tiny manifest in their own folders export the
    very same student: 74 exports in one `make test`, 40 of them repeats, about a third of its CPU
    time. The exporter's output is a function of what the key holds (test_exports.py shows it
    byte-identical from one export to the next); its own tests and plain `pytest` export every time.
    """
    shared = os.environ.get("CSKD_TEST_SHARED")
    if not shared:
        yield
        return
    import torch

    real = torch.onnx.export
    folder = Path(shared) / "onnx"
    folder.mkdir(exist_ok=True)

    def export(model, args, **options):
        if os.environ.get("PYTEST_CURRENT_TEST", "").startswith(EXPORTER_TESTS) or not options.get("dynamo"):
            return real(model, args, **options)
        path = folder / f"{_export_key(model, args, options)}.onnx"
        if not path.is_file():
            made = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            real(model, args, **options).save(str(made))
            made.replace(path)  # whole or absent for the other processes
        return _ExportedFile(path)

    torch.onnx.export = export
    try:
        yield
    finally:
        torch.onnx.export = real


class _ExportedFile:
    """What the export returns, as far as `exports.onnx_export` uses it: ``save(path)``."""

    def __init__(self, path: Path):
        self.path = path

    def save(self, destination: str) -> None:
        Path(destination).write_bytes(self.path.read_bytes())


def _export_key(model, args, options) -> str:
    """Everything the exported file follows from: each module's class and plain settings (the
    printed network, a traced graph's code), every parameter and buffer's bytes, the sample's
    shape and type, the export options, and torch's version."""
    import hashlib

    import torch

    digest = hashlib.sha256(f"{torch.__version__}|{model}|{sorted(options.items(), key=str)}".encode())
    for name, module in model.named_modules():
        plain = {k: v for k, v in vars(module).items() if isinstance(v, (bool, int, float, str, tuple, type(None)))}
        digest.update(f"{name}|{type(module).__module__}.{type(module).__qualname__}|{sorted(plain.items())}".encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for sample in args:
        digest.update(f"{sample.dtype}|{tuple(sample.shape)}".encode())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def shipped_run(tmp_path_factory):
    """One full run of the tiny manifest (digits), shared by the tests that read its results.

    Yields (folder, manifest path, exit code, output); the run's store, report and
    ship folder are relative to ``folder``.
    """
    folder = tmp_path_factory.mktemp("run")
    shared = os.environ.get("CSKD_TEST_SHARED")
    if shared:  # `make test`: its pytest processes make the run once and each works on a copy
        code, output = _shared_run(Path(shared) / "shipped_run", folder)
    else:
        code, output = _tiny_run(folder)
    with working_dir(folder):
        yield folder, folder / "tiny.yaml", code, output


def _tiny_run(folder: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from pipeline.cli import main

    with working_dir(folder):
        manifest = write_manifest(folder)
        result = CliRunner().invoke(main, ["run", "-m", str(manifest), "--quiet"], catch_exceptions=False)
    return result.exit_code, result.output


def _shared_run(source: Path, folder: Path) -> tuple[int, str]:
    """The tiny run made once for every process of ``make test`` (a folder the Makefile makes and
    removes): the first process to get here runs it, under a lock; each copies it into its own folder.
    Nothing in a run's folders names the folder itself (its paths are relative), so a copy is the run."""
    import json
    import shutil

    from filelock import FileLock

    with FileLock(f"{source}.lock"):
        if not source.is_dir():
            made = source.with_name(f"{source.name}.tmp-{os.getpid()}")
            made.mkdir()
            code, output = _tiny_run(made)
            (made / "result.json").write_text(json.dumps({"code": code, "output": output}))
            made.rename(source)
    shutil.copytree(source, folder, symlinks=True, dirs_exist_ok=True)
    result = json.loads((folder / "result.json").read_text())
    (folder / "result.json").unlink()
    return result["code"], result["output"]
