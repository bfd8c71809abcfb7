"""`train.trainable`: which parameters a session updates.

`ffn` is the continued pre-training of Skywork-MoE's Appendix C.2: a dense base model is trained on on one domain
(Chinese, English, code …) "updating only the FFN part", so that the specialised checkpoints differ from the base
only where the upcycled MoE's experts come from (`skyloom upcycle --expert-init`). Every other parameter is
frozen (`requires_grad = False`): it gets no gradient, is left out of the optimizer (so neither AdamW nor weight
decay touches it) and of the gradient norm, and stays bit-identical to the checkpoint it came from.
"""

from __future__ import annotations

from torch import nn

from skyloom.model.upcycle import is_ffn_parameter


def apply_trainable(model: nn.Module, trainable: str) -> int:
    """Freeze what `trainable` leaves out ("all": nothing); returns how many parameter tensors stay trainable.
    Call on the unwrapped model before the layout is applied (FSDP/DDP/pipelines keep `requires_grad`)."""
    if trainable == "all":
        return sum(1 for _ in model.parameters())
    if trainable != "ffn":
        raise ValueError(f"train.trainable must be 'all' or 'ffn', got {trainable!r}")
    kept = 0
    for name, param in model.named_parameters(remove_duplicate=False):
        train = is_ffn_parameter(name)
        param.requires_grad_(train)
        kept += train
    if not kept:
        raise ValueError("train.trainable: ffn, but the model has no FFN parameters (layers.N.ffn.*)")
    return kept
