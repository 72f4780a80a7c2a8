"""The gateway on a rollout server's side: over the embedded server's scheduler, or in front of a Router.

`mount_on_server(app, model_path)` is the one call `erl-mega serve` makes: /v1/* then shares the server's
scheduler, so gateway calls batch with /generate requests and wait out weight updates like them.
"""

from __future__ import annotations

import sys
import uuid
from fastapi import FastAPI

from erl_mega.gateway.protocol import GatewayError
from erl_mega.gateway.routes import Gateway, mount_openai
from erl_mega.model.hf_io import load_hf_config, load_tokenizer
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import Completion, GenerationRequest
from erl_mega.rollout.server.scheduler import Aborted, Scheduler


class ScheduledEngine:
    """What the gateway needs of an engine (`generate`, `weight_version`) over a Scheduler: concurrent callers share
    batches. Weight updates and memory moves stay with the scheduler's owner (the server's routes, the trainer)."""

    def __init__(self, scheduler: Scheduler, released: set[str] | None = None) -> None:
        self.scheduler = scheduler
        self._released = released if released is not None else set()  # the server's released memory tags

    @property
    def weight_version(self) -> int:
        return self.scheduler.engine.weight_version

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        if self._released:
            raise GatewayError(f"the server's memory is released ({sorted(self._released)}); retry later", status=503)
        futures = [self.scheduler.submit(f"gateway-{uuid.uuid4().hex}", r) for r in requests]
        try:
            return [f.result().completion for f in futures]  # the scheduler hands back a batcher.Finished
        except Aborted:
            raise GatewayError("the request was aborted by the server", status=503) from None


def mount_on_server(app: FastAPI, model_path: str, model_name: str = "erl-mega") -> Gateway | None:
    """Serve /v1/* from an `erl-mega serve` app (its `app.state.server`).

    A checkpoint without a ChatML tokenizer serves SGLang's API alone: said in one line, not an error.
    """
    try:
        chat = ChatFormat(load_tokenizer(model_path))
    except (ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"erl-mega serve: /v1/* (the OpenAI-compatible gateway) not served: {reason}", file=sys.stderr)
        return None
    state = app.state.server
    engine = ScheduledEngine(state.scheduler, state.released)
    return mount_openai(app, engine, chat, model_name=model_name,
                        max_context=load_hf_config(model_path).max_position_embeddings, concurrent=True)
