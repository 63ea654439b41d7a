"""The fast training step: the whole step (teacher forward, student forward and
backward, loss, SGD update) as one CUDA graph on a GPU; the same code, uncaptured,
on the CPU.

Nothing in the step synchronises with the host: the objectives keep medians and
extrema as tensors, the learning rate and epoch live in device tensors (so the
schedule needs no recapture), and the SGD update is the same arithmetic as
``torch.optim.SGD`` (dampening 0) written with foreach ops on the optimizer's own
momentum buffers, so checkpoints are shared with the classic engine.
"""

from __future__ import annotations

import torch

from cskd.objectives import Objective


class FastStep:
    """``step(weak, labels, strong, epoch) -> {term: 0-d tensor}``; updates the student in place."""

    def __init__(self, objective: Objective, optimizer: torch.optim.SGD, *, device: torch.device,
                 bf16: bool, use_graph: bool | None = None):
        self.objective, self.optimizer = objective, optimizer
        group = optimizer.param_groups[0]
        self.params = [p for p in group["params"] if p.requires_grad]
        self.momentum, self.weight_decay, self.nesterov = (
            group["momentum"],
            group["weight_decay"],
            group["nesterov"],
        )
        # zeros buffer == torch's first-step clone of the gradient (dampening 0)
        for p in self.params:
            optimizer.state[p].setdefault(
                "momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format)
            )
        self.buffers = [optimizer.state[p]["momentum_buffer"] for p in self.params]
        self.device = device
        self.lr = torch.zeros((), device=device)
        self.epoch = torch.zeros((), device=device)
        self.autocast = torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"
        )
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict[str, torch.Tensor | None] = {}
        self.outputs: dict[str, torch.Tensor] = {}

    def _compute(self, weak, labels, strong) -> dict[str, torch.Tensor]:
        with self.autocast:
            out = self.objective(weak, labels, strong=strong, epoch=self.epoch)
        out["loss"].backward()
        self._sgd_update()
        return {k: v.detach().float() for k, v in out.items() if k != "output"}

    @torch.no_grad()
    def _sgd_update(self) -> None:
        grads = [p.grad for p in self.params]
        if self.weight_decay:
            torch._foreach_add_(grads, self.params, alpha=self.weight_decay)
        torch._foreach_mul_(self.buffers, self.momentum)
        torch._foreach_add_(self.buffers, grads)
        if self.nesterov:
            torch._foreach_add_(grads, self.buffers, alpha=self.momentum)
            update = grads
        else:
            update = self.buffers
        torch._foreach_add_(self.params, torch._foreach_mul(update, -self.lr))
        for p in self.params:
            if self.use_graph:  # the captured graph owns these gradient tensors: keep them, zeroed
                p.grad.zero_()
            else:
                p.grad = None

    def __call__(self, weak, labels, strong, *, lr: float, epoch: int) -> dict[str, torch.Tensor]:
        self.lr.fill_(lr)
        self.epoch.fill_(float(epoch))
        if not self.use_graph:
            return self._compute(weak, labels, strong)
        if self.graph is None:
            self._capture(weak, labels, strong)
        # the last partial batch (drop_last: false): eager
        if weak.shape != self.static["weak"].shape:
            return self._compute(weak, labels, strong)
        self.static["weak"].copy_(weak)
        self.static["labels"].copy_(labels)
        if strong is not None:
            self.static["strong"].copy_(strong)
        self.graph.replay()
        return self.outputs

    def _capture(self, weak, labels, strong) -> None:
        """Warm up on a side stream (restoring every weight after), then capture one step."""
        self.static = {
            "weak": weak.clone(),
            "labels": labels.clone(),
            "strong": strong.clone() if strong is not None else None,
        }
        module = self.objective.student
        snapshot = {k: v.clone() for k, v in module.state_dict().items()}
        buffers = [b.clone() for b in self.buffers]
        for p in self.params:
            p.grad = torch.zeros_like(p)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._compute(self.static["weak"], self.static["labels"], self.static["strong"])
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # warm-up steps must not count: restore the exact pre-warm-up state
            module.load_state_dict(snapshot)
            for b, saved in zip(self.buffers, buffers, strict=True):
                b.copy_(saved)
            for p in self.params:
                p.grad.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._compute(
                self.static["weak"], self.static["labels"], self.static["strong"]
            )
