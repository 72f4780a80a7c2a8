"""Serve the gateway on its own: over the embedded engine, or in front of N rollout servers; or in a thread.

    python -m erl_mega.gateway.serve --model DIR [--port 8000]                  # the embedded engine on DIR
    python -m erl_mega.gateway.serve --model DIR --servers URL1,URL2 [--port N]  # a Router over SGLang-API servers

DIR is an HF checkpoint directory (ChatML tokenizer); with --servers only its tokenizer and config are
read, and one URL serves /v1/* for every server (an episode's calls stay on one server, its prefix cached).
The process prints `listening on http://127.0.0.1:PORT` once it accepts requests (port 0 picks a free one).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from transformers import AutoModelForCausalLM

from erl_mega.gateway.mount import ScheduledEngine
from erl_mega.gateway.routes import Gateway, mount_openai
from erl_mega.model.hf_io import load_hf_config, load_tokenizer
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import RolloutEngine
from erl_mega.rollout.client import ServerClient
from erl_mega.rollout.local import LocalEngine
from erl_mega.rollout.router import Router
from erl_mega.rollout.server.scheduler import Scheduler


class ServerThread:
    """A uvicorn server on 127.0.0.1 in a daemon thread, stopped by `close()`; `url` is its base URL."""

    def __init__(self, app: FastAPI, port: int = 0) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the gateway server did not start within 30 s")
            time.sleep(0.01)

    def wait(self) -> None:
        self._thread.join()

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def gateway_app(engine: RolloutEngine, chat: ChatFormat, model_name: str, max_context: int,
                concurrent: bool = False) -> tuple[FastAPI, Gateway]:
    """An app that serves only the gateway (`erl-mega serve` mounts the same router into its own app)."""
    app = FastAPI(title="erl-mega gateway")
    return app, mount_openai(app, engine, chat, model_name=model_name, max_context=max_context, concurrent=concurrent)


def embedded_engine(model: str | Path) -> ScheduledEngine:
    """The embedded engine on an HF checkpoint behind a Scheduler, so concurrent gateway calls share batches."""
    tokenizer = load_tokenizer(model)
    engine = LocalEngine(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), tokenizer.pad_token_id)
    return ScheduledEngine(Scheduler(engine))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF checkpoint directory")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="erl-mega", help="the model id clients ask for")
    parser.add_argument("--servers", default="", help="comma-separated rollout server URLs (SGLang's API): route to them")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    urls = [u for u in args.servers.split(",") if u]
    engine = Router([ServerClient(u) for u in urls]) if urls else embedded_engine(args.model)
    app, _ = gateway_app(engine, ChatFormat(load_tokenizer(args.model)), args.name,
                         load_hf_config(args.model).max_position_embeddings, concurrent=True)
    server = ServerThread(app, args.port)
    print(f"listening on {server.url.removesuffix('/v1')}", flush=True)
    server.wait()


if __name__ == "__main__":
    main()
