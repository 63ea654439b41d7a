"""`cskd-pipeline run --nproc 2`: the training stages run in 2 gloo processes (DDP) and the
pipeline completes; the process count is part of the training stages' recipe. Two machines
(two launchers, one rendezvous endpoint) train the same weights as one machine with two
processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch

from pipeline.manifest_io import manifest_from_text
from pipeline.orchestrator import plan
from tests.conftest import edited, write_manifest


def _weights(folder, kind):
    from safetensors.torch import load_file

    (path,) = (folder / ".cskd" / "artifacts" / kind).glob("*/model.safetensors")
    return load_file(str(path))


@pytest.mark.slow  # three elastic launches of two processes each: about 40 s on 2 cores
def test_run_with_two_processes(workdir, tmp_path_factory):
    text = edited(teacher__train__epochs=1, student__train__epochs=1)
    manifest = write_manifest(workdir, text)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "-m", str(manifest), "--quiet", "--nproc", "2"],
                          cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "[distill ] ran" in proc.stdout
    card = json.loads((workdir / "shipped" / "tiny" / "latest" / "model_card.json").read_text())
    assert card["metrics"]["onnx_agreement"] >= 99.0
    history = next((workdir / ".cskd" / "artifacts" / "distill").glob("*/metrics.jsonl")).read_text().splitlines()
    assert len(history) == 1  # one writer (rank 0)
    single = {p.kind: p.id for p in plan(manifest_from_text(text))}
    double = {p.kind: p.id for p in plan(manifest_from_text(edited(text, distributed={"nproc": 2})))}
    assert single["teacher"] != double["teacher"] and single["distill"] != double["distill"]
    assert double["distill"] in card["artifacts"]["distill"]

    # The same training on two "machines" (two launchers on localhost, one process each, sharing
    # the store as a cluster file system would): node 0 hosts the rendezvous and ships, node 1
    # trains with it and stops after the last training stage.
    nodes = tmp_path_factory.mktemp("two-nodes")
    # The teacher the two processes above trained, loaded as a checkpoint (two launches fewer); the
    # two nodes train the student with it, a training stage like the teacher's.
    (teacher,) = (workdir / ".cskd" / "artifacts" / "teacher").glob("*/model.safetensors")
    write_manifest(nodes, edited(text, teacher__train=None, teacher__checkpoint={"path": str(teacher)}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launchers = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "-m", "tiny.yaml", "--quiet",
                                   "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}"],
                                  cwd=nodes, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for rank in (1, 0)]  # node 1 first: it must wait for node 0's rendezvous
    outs = [p.communicate(timeout=600) for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], outs
    assert "node 1: training done" in outs[0][0] and "shipped" in outs[1][0]
    assert not (nodes / "shipped" / "tiny" / "latest" / "model_card.json").read_text() == ""
    assert "[distill ] ran" in outs[1][0]
    one_machine, two_machines = _weights(workdir, "distill"), _weights(nodes, "distill")
    assert one_machine.keys() == two_machines.keys()  # every tensor, BatchNorm statistics included
    assert all(torch.equal(one_machine[k], two_machines[k]) for k in one_machine)
