"""Training objectives: a student (and optional frozen teacher) plus loss weights.

Each objective is a module whose ``forward(images, labels, *, strong, epoch)``
returns ``{"loss": scalar, "output": student logits [B, C], <term>: scalar, ...}``
so logging needs no per-method code. ``images`` is the weak view ``[B, C, H, W]``
in [0, 1]; ``strong`` the strong view of the same samples (only objectives with
``needs_strong_view`` read it); ``epoch`` a 0-d float tensor, 1-based.
The teacher is frozen and always in eval mode (mdistiller's pattern).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cskd import losses


class Objective(nn.Module):
    needs_strong_view = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        # Under data parallelism: a function that concatenates a tensor's rows from every
        # replica (with gradient), so batch-wise losses see the global batch. None: local batch.
        self.gather = None
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> Objective:
        self.training = mode
        self.student.train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher(images).float()

    def batch_view(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors over the batch the batch-wise losses see (gathered across replicas if
        set)."""
        return tensors if self.gather is None else tuple(self.gather(t) for t in tensors)


class CrossEntropy(Objective):
    """Plain supervised training: teachers, and the no-distillation baseline."""

    def forward(self, images, labels, *, strong=None, epoch=None):
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        return {"loss": ce, "output": logits, "ce": ce}


class KD(Objective):
    def __init__(
        self, student, teacher, *, temperature=4.0, ce_weight=0.1, kd_weight=0.9, standardize=False
    ):
        super().__init__(student, teacher)
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight
        self.standardize = standardize

    def forward(self, images, labels, *, strong=None, epoch=None):
        zs = self.student(images)
        zt = self.teacher_logits(images)
        ce = self.ce_weight * F.cross_entropy(zs, labels)
        kd = self.kd_weight * losses.kd_loss(
            zs.float(), zt, temperature=self.temperature, standardize=self.standardize
        )
        return {"loss": ce + kd, "output": zs, "ce": ce, "kd": kd}


class DKD(Objective):
    def __init__(
        self,
        student,
        teacher,
        *,
        alpha=1.0,
        beta=8.0,
        temperature=4.0,
        ce_weight=1.0,
        warmup_epochs=20,
    ):
        super().__init__(student, teacher)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.ce_weight, self.warmup_epochs = ce_weight, warmup_epochs

    def forward(self, images, labels, *, strong=None, epoch=None):
        zs = self.student(images)
        zt = self.teacher_logits(images)
        ce = self.ce_weight * F.cross_entropy(zs, labels)
        # Linear warm-up of the KD weight over the first epochs (mdistiller).
        ramp = (
            torch.clamp(epoch / max(self.warmup_epochs, 1), max=1.0) if epoch is not None else 1.0
        )
        dkd = ramp * losses.dkd_loss(
            zs.float(), zt, labels, alpha=self.alpha, beta=self.beta, temperature=self.temperature
        )
        return {"loss": ce + dkd, "output": zs, "ce": ce, "dkd": dkd}


class DIST(Objective):
    def __init__(self, student, teacher, *, tau=4.0, weight=2.0, ce_weight=1.0):
        super().__init__(student, teacher)
        self.tau, self.weight, self.ce_weight = tau, weight, ce_weight

    def forward(self, images, labels, *, strong=None, epoch=None):
        zs = self.student(images)
        zt = self.teacher_logits(images)
        ce = self.ce_weight * F.cross_entropy(zs, labels)
        dist = self.weight * losses.dist_loss(zs.float(), zt, tau=self.tau)
        return {"loss": ce + dist, "output": zs, "ce": ce, "dist": dist}


class CSKDCore(Objective):
    """CS-KD, core preset: ``CE + L_cs(T) + L_cs(CSWT)`` on one view."""

    def __init__(
        self,
        student,
        teacher,
        *,
        temperature=4.0,
        alpha=2.0,
        low=2.0,
        high=6.0,
        ce_weight=1.0,
        kd_weight=1.0,
    ):
        super().__init__(student, teacher)
        self.temperature, self.alpha, self.low, self.high = temperature, alpha, low, high
        self.ce_weight, self.kd_weight = ce_weight, kd_weight

    def forward(self, images, labels, *, strong=None, epoch=None):
        zs = self.student(images)
        zs32, zt = self.batch_view(zs.float(), self.teacher_logits(images))
        t_i = losses.cswt_temperatures(zs32, zt, low=self.low, high=self.high)
        ce = self.ce_weight * F.cross_entropy(zs, labels)
        cs = self.kd_weight * losses.cs_loss(
            zs32, zt, temperature=self.temperature, alpha=self.alpha
        )
        cswt = self.kd_weight * losses.cs_loss(zs32, zt, temperature=t_i, alpha=self.alpha)
        return {
            "loss": ce + cs + cswt,
            "output": zs,
            "ce": ce,
            "cs": cs,
            "cs_cswt": cswt,
            "mean_temperature": t_i.mean(),
        }


def _median(x: torch.Tensor) -> torch.Tensor:
    """NumPy's ``percentile(x, 50)``: linear interpolation (torch.median takes the lower middle)."""
    return torch.quantile(x, 0.5)


class CSKDPaper(CSKDCore):
    """CS-KD, paper preset: the authors' full objective (CSKD.md section 3).

    ``CE(weak) + CE(strong)
      + frac(mask_B) * [L_cs(weak; T) + L_cs(weak; T_i)]
      + [L_cs(strong; T) + L_cs(strong; T_i)]
      + frac(mask_C) * [L_cc(weak; T) + L_cc(weak; T_i)]
      + frac(mask_B) * [L_bc(weak; T) + L_bc(weak; T_i)]``
    with ``T_i`` from the weak view, reused for the strong view. ``mask_B``: teacher's
    weak max-probability <= its batch median; ``mask_C``: per-class column sum of
    teacher probabilities <= its median over classes. The authors multiply scalar
    losses by a mask and take the mean, which is scaling by the mask's true-fraction.
    """

    needs_strong_view = True

    def forward(self, images, labels, *, strong=None, epoch=None):
        if strong is None:
            raise ValueError("the CS-KD paper objective needs the strong view")
        zs_w = self.student(images)
        zs_s = self.student(strong)
        zt_w = self.teacher_logits(images)
        zt_s = self.teacher_logits(strong)
        sw, ss, zt_w, zt_s = self.batch_view(zs_w.float(), zs_s.float(), zt_w, zt_s)
        t_fixed, alpha = self.temperature, self.alpha
        t_i = losses.cswt_temperatures(sw, zt_w, low=self.low, high=self.high)

        pt_w = F.softmax(zt_w, dim=1)
        confidence = pt_w.max(dim=1).values
        frac_b = (confidence <= _median(confidence)).float().mean()
        class_mass = pt_w.sum(dim=0)
        frac_c = (class_mass <= _median(class_mass)).float().mean()

        ce = self.ce_weight * (F.cross_entropy(zs_w, labels) + F.cross_entropy(zs_s, labels))
        cs_weak = losses.cs_loss(sw, zt_w, temperature=t_fixed, alpha=alpha) + losses.cs_loss(
            sw, zt_w, temperature=t_i, alpha=alpha
        )
        cs_strong = losses.cs_loss(ss, zt_s, temperature=t_fixed, alpha=alpha) + losses.cs_loss(
            ss, zt_s, temperature=t_i, alpha=alpha
        )
        cc = losses.class_correlation_loss(
            sw, zt_w, temperature=t_fixed
        ) + losses.class_correlation_loss(sw, zt_w, temperature=t_i)
        bc = losses.batch_correlation_loss(
            sw, zt_w, temperature=t_fixed
        ) + losses.batch_correlation_loss(sw, zt_w, temperature=t_i)
        w = self.kd_weight
        terms = {
            "ce": ce,
            "cs_weak": w * frac_b * cs_weak,
            "cs_strong": w * cs_strong,
            "cc_weak": w * frac_c * cc,
            "bc_weak": w * frac_b * bc,
        }
        loss = (
            terms["ce"]
            + terms["cs_weak"]
            + terms["cs_strong"]
            + terms["cc_weak"]
            + terms["bc_weak"]
        )
        return {
            "loss": loss,
            "output": zs_w,
            **terms,
            "mean_temperature": t_i.mean(),
            "frac_mask_b": frac_b,
            "frac_mask_c": frac_c,
        }
