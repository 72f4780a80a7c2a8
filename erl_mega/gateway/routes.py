"""The OpenAI-compatible gateway as a FastAPI router over any RolloutEngine; `mount_openai` adds it to an app.

    POST /v1/chat/completions, /v1/completions   OpenAI's schema, streaming or not
    GET  /v1/models
    POST /v1/episodes {episode_id, system_prompt?, seed?, temperature?, top_p?, max_tokens?}   start an episode (the SDK does this)
    GET  /v1/episodes/{id}, DELETE /v1/episodes/{id}      its token-level trace

Calls join an episode by the `X-Episode-Id` header or else the `user` field; calls with neither are
served but not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from erl_mega.gateway.protocol import ChatRequest, CompletionRequest, GatewayError, parse, to_messages, tool_specs
from erl_mega.gateway.responses import chat_body, chat_chunks, text_body, text_chunks
from erl_mega.gateway.sampling import Sampler, call_spec, record
from erl_mega.gateway.template import parse_reply, render_system
from erl_mega.gateway.traces import EpisodeSampling, EpisodeTrace, TraceStore
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import RolloutEngine

EPISODE_HEADER = "X-Episode-Id"


class EpisodeStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episode_id: str
    system_prompt: str | None = None
    seed: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=100.0)  # with top_p and max_tokens: the episode's sampling
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)

    def sampling(self) -> EpisodeSampling | None:
        return None if self.temperature is None else EpisodeSampling(self.temperature, self.top_p, self.max_tokens)


@dataclass
class Gateway:
    """The gateway's state: the engine's sampler, the chat format and the episodes' traces."""

    sampler: Sampler
    chat: ChatFormat
    model_name: str
    store: TraceStore

    def _episode(self, episode_id: str | None) -> EpisodeTrace:
        return self.store.episode(episode_id) if episode_id else EpisodeTrace()

    def chat_completion(self, req: ChatRequest, episode_id: str | None) -> Response:
        system, messages = to_messages(req)
        tools, names = tool_specs(req)
        stops = req.stops()
        with self.store.lock:
            episode = self._episode(episode_id)
            system = episode.system_prompt if episode.system_prompt is not None else system
            head = render_system(system or "", tools) if system is not None or tools else ""
            prompt = episode.chat_prompt(self.chat, head, messages)
            spec = call_spec(prompt, req.n, req.temperature, req.top_p, req.budget(), stops, req.seed, episode, episode_id)
        choices = self.sampler.sample(spec)
        parsed = [parse_reply(c.text, names) for c in choices]
        with self.store.lock:
            for c, p in zip(choices, parsed):
                record(episode, spec, c, head, messages, p.message(), "", self.chat)
        body = chat_body(req.model, len(prompt.ids), choices, parsed, req.logprobs, self.chat)
        headers = _headers(episode_id, prompt.origin, choices[0].weight_version)
        if req.stream:
            return StreamingResponse(chat_chunks(body, choices, parsed, self.chat), media_type="text/event-stream",
                                     headers=headers)
        return JSONResponse(body, headers=headers)

    def text_completion(self, req: CompletionRequest, episode_id: str | None) -> Response:
        if not isinstance(req.prompt, str) and not req.prompt:
            raise GatewayError("prompt: must not be empty", "prompt")
        stops = req.stops()
        with self.store.lock:
            episode = self._episode(episode_id)
            prompt = episode.text_prompt(self.chat, req.prompt)
            spec = call_spec(prompt, req.n, req.temperature, req.top_p, req.budget(), stops, req.seed, episode, episode_id)
        choices = self.sampler.sample(spec)
        prompt_text = req.prompt if isinstance(req.prompt, str) else ""
        with self.store.lock:
            for c in choices:
                record(episode, spec, c, "", None, None, prompt_text, self.chat)
        body = text_body(req.model, len(prompt.ids), choices, req.logprobs is not None, self.chat)
        headers = _headers(episode_id, prompt.origin, choices[0].weight_version)
        if req.stream:
            return StreamingResponse(text_chunks(body, choices, self.chat), media_type="text/event-stream", headers=headers)
        return JSONResponse(body, headers=headers)


def _headers(episode_id: str | None, origin: str, version: int) -> dict[str, str]:
    """Each response says which episode it joined, how its prompt was made and which weights sampled it."""
    return {EPISODE_HEADER: episode_id or "", "X-Prompt-Origin": origin, "X-Weight-Version": str(version)}


def _episode_id(request: Request, user: str | None) -> str | None:
    return request.headers.get(EPISODE_HEADER) or user or None


def openai_router(gateway: Gateway) -> APIRouter:
    """The gateway's routes; every refusal is OpenAI's error object with a 4xx status."""
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            req = parse(ChatRequest, await request.body())
            return await run_in_threadpool(gateway.chat_completion, req, _episode_id(request, req.user))
        except GatewayError as err:
            return err.response()

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            req = parse(CompletionRequest, await request.body())
            return await run_in_threadpool(gateway.text_completion, req, _episode_id(request, req.user))
        except GatewayError as err:
            return err.response()

    @router.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": gateway.model_name, "object": "model", "owned_by": "erl-mega"}]}

    @router.post("/v1/episodes")
    async def start_episode(request: Request) -> Response:
        try:
            start = parse(EpisodeStart, await request.body())
        except GatewayError as err:
            return err.response()
        with gateway.store.lock:
            gateway.store.register(start.episode_id, start.system_prompt, start.seed, start.sampling())
        return JSONResponse({"episode_id": start.episode_id})

    @router.get("/v1/episodes/{episode_id}")
    async def get_episode(episode_id: str) -> Response:
        with gateway.store.lock:
            episode = gateway.store.get(episode_id)
            body = None if episode is None else episode.to_json()
        if body is None:
            return GatewayError(f"no episode {episode_id!r}", "episode_id", 404).response()
        return JSONResponse(body | {"episode_id": episode_id})

    @router.delete("/v1/episodes/{episode_id}")
    async def drop_episode(episode_id: str) -> Response:
        with gateway.store.lock:
            gone = gateway.store.pop(episode_id) is not None
        return JSONResponse({"episode_id": episode_id, "deleted": gone})

    return router


def mount_openai(app: FastAPI, engine: RolloutEngine, chat: ChatFormat, *, model_name: str, max_context: int,
                 default_max_tokens: int = 256, concurrent: bool = False) -> Gateway:
    """Serve the OpenAI-compatible gateway from `app` over `engine`; returns its state (traces included).

    `concurrent`: the engine takes calls from many threads at once (a Scheduler, a Router); else one at a time.
    """
    gateway = Gateway(Sampler(engine, chat, max_context, default_max_tokens, concurrent), chat, model_name, TraceStore())
    app.include_router(openai_router(gateway))
    return gateway
