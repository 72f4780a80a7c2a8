"""Next-token sampling shared by every embedded decode path: greedy or nucleus, with the policy's log-prob."""

from __future__ import annotations

import torch

# Top-p looks for the nucleus among this many most likely tokens first (widened x8 until it fits): at a
# 152k vocab on 2 CPU cores topk(256) took ~15 ms against ~600 ms for a full sort.
_NUCLEUS_CANDIDATES = 256


def sample_tokens(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, uniform: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row (argmax where temperature is 0, else nucleus sampling) and its untruncated log-prob.

    Shapes: logits `[batch, vocab]`, temperature / top_p / uniform `[batch]`. The log-prob is
    log_softmax(logits / T) in fp32 with T = 1 for greedy rows, taken before top-p truncation: the
    policy's own log-prob, which is what the trainer recomputes.
    """
    greedy = temperature == 0
    scale = torch.where(greedy, torch.ones_like(temperature), temperature)
    logits = logits.float()
    logp = torch.log_softmax(logits / scale[:, None], dim=-1)
    token = logits.argmax(-1)  # on raw logits, as HF greedy does: log_softmax can round near-ties together
    full = ~greedy & (top_p >= 1)
    if bool(full.any()):
        token[full] = _inverse_cdf(logp[full].exp(), uniform[full])
    nucleus = ~greedy & (top_p < 1)
    if bool(nucleus.any()):
        probs, ids = _nucleus(logp[nucleus].exp(), top_p[nucleus])
        token[nucleus] = ids.gather(-1, _inverse_cdf(probs, uniform[nucleus])[:, None]).squeeze(1)
    return token, logp.gather(-1, token[:, None]).squeeze(1)


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Column index per row drawn in proportion to `weights` `[rows, n]` (unnormalised, >= 0) by its uniform."""
    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    # u * total can round up to total; keep it strictly below so a zero-weight tail is never picked
    target = torch.minimum(uniform[:, None].to(cdf.dtype) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's smallest most-likely token set with mass >= top_p: `[rows, k]` probs (0 outside) and token ids."""
    k = min(_NUCLEUS_CANDIDATES, probs.shape[-1])
    while True:
        top, ids = probs.topk(k, dim=-1)  # most likely first
        if k == probs.shape[-1] or bool((top.sum(-1) >= top_p).all()):
            break
        k = min(8 * k, probs.shape[-1])
    keep = top.cumsum(-1) - top < top_p[:, None]
    return top * keep, ids
