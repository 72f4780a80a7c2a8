"""The embedded engine behind SGLang's native HTTP API (srt/entrypoints/http_server.py), route for route.

`create_app(engine)` is the factory other layers mount onto (the OpenAI-compatible gateway adds routes
to the returned FastAPI app). Bad requests get a 400 naming the field; the process never dies of one.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from erl_mega.rollout.engine import GenerationRequest, SamplingParams
from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.server import protocol as p
from erl_mega.rollout.server.generate import aborted, response, split_batch
from erl_mega.rollout.server.loading import WeightLoader
from erl_mega.rollout.server.scheduler import Aborted, Scheduler
from erl_mega.weights.checksum import weights_checksum

MEMORY_TAGS = ("weights", "kv_cache")


class ServerState:
    """What the routes share: the scheduler (which owns the engine), the weight loader and released tags."""

    def __init__(self, engine: LocalEngine, model_path: str, continuous: bool = True) -> None:
        self.scheduler = Scheduler(engine, continuous)
        self.loader = WeightLoader(engine)
        self.model_path = model_path
        self.released: set[str] = set()

    @property
    def engine(self) -> LocalEngine:
        return self.scheduler.engine

    def set_version(self, version: str | None) -> int:
        """Record the new weight version (a string, as SGLang's); the engine's completions carry its int form."""
        if version is not None:
            self.scheduler.weight_version = version
        text = self.scheduler.weight_version
        return int(text) if text.lstrip("-").isdigit() else self.engine.weight_version


def _field_error(_: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0]
    # pydantic puts union members ("SamplingParamsIn", "list[int]") in the path; keep only the field names
    field = ".".join(str(x) for x in first["loc"][1:] if not (isinstance(x, str) and (x[:1].isupper() or "[" in x)))
    return JSONResponse({"error": {"message": f"{field or 'body'}: {first['msg']}", "field": field}}, status_code=400)


def _value_error(_: Request, err: ValueError) -> JSONResponse:
    return JSONResponse({"error": {"message": str(err)}}, status_code=400)


def _ok(message: str = "Success", **extra) -> dict:
    return {"success": True, "message": message, **extra}


def create_app(engine: LocalEngine, model_path: str = "", continuous: bool = True) -> FastAPI:
    """A FastAPI app serving `engine` over SGLang's native API; `app.state.server` holds the ServerState.

    `continuous=False` batches per request group instead (a batch admits only when empty), for comparison.
    """
    app = FastAPI(title="erl-mega rollout server")
    state = ServerState(engine, model_path, continuous)
    app.state.server = state
    app.add_exception_handler(RequestValidationError, _field_error)
    app.add_exception_handler(ValueError, _value_error)
    _generation_routes(app, state)
    _weight_routes(app, state)
    _control_routes(app, state)
    return app


async def generate_one(state: ServerState, rid: str, request: GenerationRequest, logprob: bool) -> dict:
    """Run one request through the scheduler and shape its SGLang response."""
    try:
        done = await asyncio.wrap_future(state.scheduler.submit(rid, request))
    except Aborted:
        return aborted(rid, request, state.scheduler.weight_version)
    # the version that sampled it: a push may have landed between the batch's end and this reply
    return response(rid, request, done.completion, logprob, str(done.completion.weight_version), done.cached_tokens)


def _generation_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/generate")
    async def generate(body: p.GenerateReqInput):
        if body.stream:
            raise ValueError("stream: streaming is not supported by this server; send stream=false")
        if state.released:
            return JSONResponse({"error": {"message": f"memory released ({sorted(state.released)}); resume first"}},
                                status_code=503)
        rids, requests, logprobs, batched = split_batch(body)
        vocab = state.engine._vocab_size
        for i, r in enumerate(requests):
            if max(r.prompt_ids) >= vocab or min(r.prompt_ids) < 0:
                raise ValueError(f"input_ids{f'[{i}]' if batched else ''}: token outside [0, {vocab})")
        outs = await asyncio.gather(*(generate_one(state, *args) for args in zip(rids, requests, logprobs)))
        return list(outs) if batched else outs[0]

    @app.get("/health")
    async def health():
        return JSONResponse({}, status_code=200 if not state.released else 503)

    @app.get("/health_generate")
    async def health_generate():
        if state.released:
            return JSONResponse({"error": {"message": "memory released"}}, status_code=503)
        probe = GenerationRequest((0,), SamplingParams(max_new_tokens=1, temperature=0.0))
        await generate_one(state, "health_generate", probe, False)
        return {}

    @app.post("/abort_request")
    async def abort_request(body: p.AbortReq):
        return _ok(aborted=state.scheduler.abort(None if body.abort_all else body.rid))


def _weight_routes(app: FastAPI, state: ServerState) -> None:
    def update(load, body, version: str | None) -> dict:
        def run():
            if getattr(body, "abort_all_requests", False):
                state.scheduler.abort(None)
            load(body, state.set_version(version))
        state.scheduler.exclusive(run)
        return _ok(weight_version=state.scheduler.weight_version)

    @app.post("/update_weights_from_tensor")
    def update_weights_from_tensor(body: p.UpdateWeightsFromTensorReqInput):
        return update(state.loader.from_tensor, body, body.weight_version)

    @app.post("/init_weights_update_group")
    def init_weights_update_group(body: p.InitWeightsUpdateGroupReqInput):
        state.loader.init_group(body, body.rank_offset)
        return _ok()

    @app.post("/update_weights_from_distributed")
    def update_weights_from_distributed(body: p.UpdateWeightsFromDistributedReqInput):
        return update(state.loader.from_distributed, body, body.weight_version)

    @app.post("/update_weights_from_disk")
    def update_weights_from_disk(body: p.UpdateWeightsFromDiskReqInput):
        return update(state.loader.from_disk, body, body.weight_version)

    @app.post("/weights_checker")
    def weights_checker(body: p.WeightsCheckerReqInput):
        if body.action != "checksum":
            raise ValueError(f"action={body.action!r}; choose 'checksum'")
        named = state.scheduler.exclusive(lambda: list(state.engine.model.named_parameters()))
        return _ok(checksum=weights_checksum(named), weight_version=state.scheduler.weight_version)

    @app.get("/get_weight_version")
    async def get_weight_version():
        return {"weight_version": state.scheduler.weight_version}


def _control_routes(app: FastAPI, state: ServerState) -> None:
    def tags_of(body: p.MemoryOccupationReqInput) -> set[str]:
        tags = set(body.tags or MEMORY_TAGS)
        if not tags <= set(MEMORY_TAGS):
            raise ValueError(f"tags: {sorted(tags - set(MEMORY_TAGS))} unknown; choose from {list(MEMORY_TAGS)}")
        return tags

    @app.post("/release_memory_occupation")
    def release_memory_occupation(body: p.MemoryOccupationReqInput):
        tags = tags_of(body)
        if "weights" in tags and "weights" not in state.released:
            state.scheduler.exclusive(state.engine.release_memory)
        state.released |= tags
        return _ok()

    @app.post("/resume_memory_occupation")
    def resume_memory_occupation(body: p.MemoryOccupationReqInput):
        tags = tags_of(body)
        if "weights" in tags and "weights" in state.released:
            state.scheduler.exclusive(state.engine.resume_memory)
        state.released -= tags
        return _ok()

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    def flush_cache():
        state.scheduler.exclusive(state.engine.flush_cache)
        return _ok("Cache flushed.")

    @app.post("/pause_generation")
    async def pause_generation(body: p.PauseGenerationReqInput):
        if body.mode not in ("abort", "retract", "in_place"):
            raise ValueError(f"mode={body.mode!r}; choose 'abort', 'retract' or 'in_place'")
        state.scheduler.pause()
        if body.mode == "abort":
            state.scheduler.abort(None)
        return _ok()

    @app.post("/continue_generation")
    async def continue_generation():
        state.scheduler.resume()
        return _ok()

    @app.get("/get_model_info")
    async def get_model_info():
        return {"model_path": state.model_path, "tokenizer_path": state.model_path, "is_generation": True,
                "preferred_sampling_params": None, "weight_version": state.scheduler.weight_version,
                "has_image_understanding": False, "has_audio_understanding": False, "model_type": state.engine.model.config.model_type}

    @app.get("/get_server_info")
    async def get_server_info():
        cache = state.engine.prefix_cache
        return {"version": "erl-mega", "paused": state.scheduler.paused, "released": sorted(state.released),
                "max_batch_size": state.engine.max_batch_size,
                "batching": "continuous" if state.scheduler.continuous else "request", **state.scheduler.stats,
                "prefix_cache": {"entries": len(cache), "bytes": cache.nbytes, "max_bytes": cache.max_bytes,
                                 **cache.stats} if cache else None}
