"""Triton kernels with PyTorch references; `erl_mega.kernels.dispatch` picks one per device (CUDA: Triton)."""

from erl_mega.kernels.dispatch import fused_policy_loss, fused_token_logprobs, group_advantages, packed_distill_loss
from erl_mega.kernels.results import PolicyLossOutput

__all__ = ["PolicyLossOutput", "fused_policy_loss", "fused_token_logprobs", "group_advantages", "packed_distill_loss"]
