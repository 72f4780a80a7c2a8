"""A `RolloutEngine` over one server speaking SGLang's native HTTP API (ours or SGLang's own)."""

from __future__ import annotations

import uuid
from typing import Iterable

import requests

from erl_mega.rollout.engine import Completion, GenerationRequest
from erl_mega.weights.buckets import NamedTensors


class ServerError(RuntimeError):
    """The server answered with an error status (4xx: the request is wrong; 5xx: the server is)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def request_body(request: GenerationRequest, rid: str) -> dict:
    """The `/generate` body SGLang expects for one tokenised request."""
    p = request.params
    sampling = {"max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p,
                "stop_token_ids": list(p.stop_token_ids), "skip_special_tokens": False, "no_stop_trim": True}
    if request.seed is not None:
        sampling["sampling_seed"] = request.seed
    return {"input_ids": list(request.prompt_ids), "sampling_params": sampling, "return_logprob": True, "rid": rid}


def completion(result: dict) -> Completion:
    """SGLang's response (output_ids, meta_info) back into a Completion; the weight version must be an int."""
    meta = result["meta_info"]
    finish = meta["finish_reason"]["type"] if meta.get("finish_reason") else "length"
    if finish == "abort":
        raise ServerError(503, f"request {meta.get('id')} was aborted")
    tokens = tuple(result["output_ids"])
    logprobs = tuple(float(lp) for lp, *_ in meta["output_token_logprobs"])
    return Completion(tokens, logprobs, "stop" if finish == "stop" else "length", int(meta.get("weight_version", 0)))


class ServerClient:
    """One server by URL; also a complete `RolloutEngine` when it is the only one (no router needed)."""

    def __init__(self, url: str, timeout: float = 600.0, transport=None) -> None:
        from erl_mega.weights.transport import TensorTransport

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.transport = transport or TensorTransport()
        self.weight_version = 0
        self.incarnation = 0  # the router bumps it when it restarts the server's process
        self._session = requests.Session()

    def post(self, path: str, body: dict | None = None, timeout: float | None = None) -> dict | list:
        """POST JSON and return the decoded answer; ServerError on a non-2xx status."""
        r = self._session.post(f"{self.url}{path}", json=body or {}, timeout=timeout or self.timeout)
        if r.status_code >= 400:
            raise ServerError(r.status_code, r.text[:500])
        return r.json()

    def get(self, path: str, timeout: float = 10.0) -> dict:
        r = self._session.get(f"{self.url}{path}", timeout=timeout)
        if r.status_code >= 400:
            raise ServerError(r.status_code, r.text[:500])
        return r.json()

    def generate_one(self, request: GenerationRequest, rid: str | None = None) -> Completion:
        return completion(self.post("/generate", request_body(request, rid or uuid.uuid4().hex)))

    def generate(self, requests_: list[GenerationRequest]) -> list[Completion]:
        """All requests in one batched `/generate` call, so the server batches them together."""
        if not requests_:
            return []
        bodies = [request_body(r, uuid.uuid4().hex) for r in requests_]
        batch = {key: [b[key] for b in bodies] for key in ("input_ids", "sampling_params", "rid")}
        return [completion(out) for out in self.post("/generate", {**batch, "return_logprob": True})]

    def update_weights(self, buckets: Iterable[NamedTensors], version: int) -> None:
        self.transport.push(buckets, version, [self])
        self.weight_version = version

    def release_memory(self, tags: tuple[str, ...] = ("weights", "kv_cache")) -> None:
        self.post("/release_memory_occupation", {"tags": list(tags)})

    def resume_memory(self, tags: tuple[str, ...] = ("weights", "kv_cache")) -> None:
        self.post("/resume_memory_occupation", {"tags": list(tags)})

    def health(self) -> bool:
        try:
            return self._session.get(f"{self.url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def checksum(self) -> str:
        return self.post("/weights_checker", {"action": "checksum"})["checksum"]

    def server_version(self) -> str:
        return self.get("/get_weight_version")["weight_version"]
