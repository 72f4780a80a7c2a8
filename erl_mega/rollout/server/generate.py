"""`/generate` in SGLang's shape: request bodies to GenerationRequests, Completions to `output_ids` + `meta_info`."""

from __future__ import annotations

import uuid

from erl_mega.rollout.engine import Completion, GenerationRequest, SamplingParams
from erl_mega.rollout.server.protocol import GenerateReqInput, SamplingParamsIn


def split_batch(body: GenerateReqInput) -> tuple[list[str], list[GenerationRequest], list[bool], bool]:
    """(rids, requests, return_logprob per request, whether the body was a batch); ValueError names the field."""
    batched = bool(body.input_ids) and isinstance(body.input_ids[0], list)
    prompts = body.input_ids if batched else [body.input_ids]
    n = len(prompts)
    if n == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("input_ids: must hold at least one token per prompt")
    params = _per_request(body.sampling_params, n, "sampling_params") or [SamplingParamsIn()] * n
    logprob = _per_request(body.return_logprob, n, "return_logprob")
    rids = _per_request(body.rid, n, "rid") or [uuid.uuid4().hex for _ in range(n)]
    requests = [GenerationRequest(tuple(p), _sampling(sp, f"sampling_params[{i}]" if batched else "sampling_params"), sp.sampling_seed)
                for i, (p, sp) in enumerate(zip(prompts, params))]
    return list(rids), requests, list(logprob), batched


def _per_request(value, n: int, field: str) -> list | None:
    """A scalar broadcast to n requests, or a list that must have length n."""
    if value is None:
        return None
    if not isinstance(value, list):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"{field}: has {len(value)} entries for {n} prompts")
    return value


def _sampling(sp: SamplingParamsIn, field: str) -> SamplingParams:
    if sp.top_k not in (-1, 0):
        raise ValueError(f"{field}.top_k={sp.top_k}; only -1 (disabled) is supported")
    stops = () if sp.ignore_eos else tuple(sp.stop_token_ids or ())
    return SamplingParams(sp.max_new_tokens, sp.temperature, sp.top_p, stops)


def response(rid: str, request: GenerationRequest, out: Completion, logprob: bool, version: str,
             cached_tokens: int) -> dict:
    """One result as SGLang returns it (no text: this server is token-in, token-out); `cached_tokens` as SGLang
    counts prompt tokens served from its prefix cache."""
    if out.finish_reason == "stop":
        finish = {"type": "stop", "matched": out.token_ids[-1]}
    else:
        finish = {"type": "length", "length": len(out.token_ids)}
    meta = {
        "id": rid,
        "finish_reason": finish,
        "prompt_tokens": len(request.prompt_ids),
        "completion_tokens": len(out.token_ids),
        "cached_tokens": cached_tokens,
        "weight_version": version,
    }
    if logprob:
        meta["output_token_logprobs"] = [[lp, t, None] for lp, t in zip(out.logprobs, out.token_ids)]
        meta["input_token_logprobs"] = []
    return {"text": "", "output_ids": list(out.token_ids), "meta_info": meta}


def aborted(rid: str, request: GenerationRequest, version: str) -> dict:
    meta = {"id": rid, "finish_reason": {"type": "abort", "message": "aborted"}, "prompt_tokens": len(request.prompt_ids),
            "completion_tokens": 0, "weight_version": version, "output_token_logprobs": []}
    return {"text": "", "output_ids": [], "meta_info": meta}
