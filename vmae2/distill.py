"""Distillation, the third task of the one training loop: a frozen classifier teaches a student classifier.

The procedure the paper cites for its ViT-S/B students (spec §7, Beyer et al. 2022, "a good teacher is
patient and consistent"): function matching. The teacher sees exactly the augmented clip the student
sees, and the student's softmax at temperature T is pulled towards the teacher's:

    loss = T² · KL(softmax(teacher / T) ‖ softmax(student / T))

The teacher stays in eval mode under no_grad, in bf16 on a GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), mean over the batch, in fp32.

    T² keeps the gradient's scale independent of T (Hinton et al. 2015), so T can change without
    retuning the learning rate.
    """
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    return kl * temperature ** 2


def freeze_teacher(teacher: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The teacher as it runs: eval mode (no dropout or drop path), no gradients, bf16 weights on a GPU.

    Only the parameters go to bf16 on a GPU (half the memory, the dtype autocast computes in anyway);
    the fixed position table stays fp32, as it is in the student.
    """
    teacher.eval().requires_grad_(False)
    teacher.to(device)
    if device.type == "cuda":
        for param in teacher.parameters():
            param.data = param.data.to(torch.bfloat16)
    return teacher
