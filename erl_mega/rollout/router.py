"""A `RolloutEngine` over N rollout servers: least outstanding tokens, sticky sessions, retries, restarts.

Each request goes to one server on its own thread, so the servers batch whatever arrives together. A
server that fails (connection refused, 5xx, timeout) is marked dead, its request retried on another,
and, when we own its process, restarted; a restarted server holds stale weights and takes no request
until the next weight push reaches it.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import requests

from erl_mega.rollout.client import ServerClient, ServerError
from erl_mega.rollout.engine import Completion, GenerationRequest
from erl_mega.rollout.server.process import ServerProcess
from erl_mega.weights.buckets import NamedTensors


@dataclass
class _Server:
    client: ServerClient
    process: ServerProcess | None
    slots: threading.Semaphore
    outstanding_tokens: int = 0
    live: bool = True
    version: int = 0  # the weight version this server holds
    metrics: dict = field(default_factory=lambda: {"requests": 0, "failures": 0, "tokens": 0, "seconds": 0.0, "restarts": 0})


class Router:
    """Spreads requests over servers; `update_weights` pushes through one transport to all live servers."""

    def __init__(self, clients: list[ServerClient], processes: list[ServerProcess | None] | None = None,
                 transport=None, max_inflight_per_server: int = 64, sticky_sessions: int = 65536,
                 wait_seconds: float = 600.0) -> None:
        if not clients:
            raise ValueError("Router needs at least one server")
        from erl_mega.weights.transport import TensorTransport

        processes = processes or [None] * len(clients)
        self._servers = [_Server(c, p, threading.Semaphore(max_inflight_per_server)) for c, p in zip(clients, processes)]
        self.transport = transport or TensorTransport()
        self.weight_version = 0
        self._lock = threading.Lock()
        self._sticky: dict[str, int] = {}
        self._sticky_limit = sticky_sessions
        self._restarting: set[int] = set()
        self.wait_seconds = wait_seconds  # how long a request waits for a server holding the current weights

    def generate(self, requests_: list[GenerationRequest]) -> list[Completion]:
        """One completion per request, in order; each may run on a different server."""
        if not requests_:
            return []
        with ThreadPoolExecutor(min(len(requests_), 256)) as pool:
            return list(pool.map(self.generate_one, requests_))

    def generate_one(self, request: GenerationRequest) -> Completion:
        """Run one request, retrying on another server when one dies; 4xx errors are the caller's and raise."""
        rid, cost = uuid.uuid4().hex, len(request.prompt_ids) + request.params.max_new_tokens
        deadline = time.monotonic() + self.wait_seconds
        while True:
            index = self._pick(request.session, cost)
            server = self._servers[index]
            with server.slots:
                start = time.perf_counter()
                try:
                    out = server.client.generate_one(request, rid)
                except ServerError as err:
                    if err.status < 500:
                        raise
                    self._failed(index)
                except requests.RequestException:
                    self._failed(index)
                else:
                    self._done(server, cost, len(out.token_ids), time.perf_counter() - start)
                    return out
                finally:
                    with self._lock:
                        server.outstanding_tokens -= cost
            if time.monotonic() > deadline:
                raise RuntimeError(f"Router: no server answered within {self.wait_seconds:.0f} s")

    def _pick(self, session: str | None, cost: int) -> int:
        """The sticky server of `session` if usable, else the usable one with the fewest outstanding tokens."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            with self._lock:
                usable = [i for i, s in enumerate(self._servers) if s.live and s.version == self.weight_version]
                if usable:
                    index = self._sticky.get(session) if session is not None else None
                    if index not in usable:
                        index = min(usable, key=lambda i: self._servers[i].outstanding_tokens)
                        if session is not None:
                            if len(self._sticky) >= self._sticky_limit:
                                self._sticky.pop(next(iter(self._sticky)))
                            self._sticky[session] = index
                    self._servers[index].outstanding_tokens += cost
                    return index
                stale = [s.client.url for s in self._servers if s.live and s.version != self.weight_version]
            if time.monotonic() > deadline:  # never a silent hang: the run ends in one line and resumes from its checkpoint
                raise RuntimeError(
                    f"Router: no server holds weight version {self.weight_version} after {self.wait_seconds:.0f} s "
                    f"(restarted, waiting for the next weight push: {stale or 'none'}; the others are dead or restarting)")
            time.sleep(0.2)  # every server is dead or restarting: wait for one

    def _done(self, server: _Server, cost: int, tokens: int, seconds: float) -> None:
        with self._lock:
            server.metrics["requests"] += 1
            server.metrics["tokens"] += tokens
            server.metrics["seconds"] += seconds

    def _failed(self, index: int) -> None:
        """Mark a server dead; restart it in the background if we own its process."""
        server = self._servers[index]
        with self._lock:
            server.metrics["failures"] += 1
            if not server.live:
                return
            server.live = False
            if server.process is None or index in self._restarting:
                return
            self._restarting.add(index)
        threading.Thread(target=self._restart, args=(index,), daemon=True).start()

    def _restart(self, index: int) -> None:
        server = self._servers[index]
        server.process.restart()
        with self._lock:
            server.client.incarnation += 1  # a fresh process: a broadcast transport must regroup
            server.metrics["restarts"] += 1
            server.version = 0  # fresh process: the checkpoint it was started from
            server.live = True
            self._restarting.discard(index)

    def update_weights(self, buckets: Iterable[NamedTensors], version: int) -> None:
        """Push to every live server (restarted ones included, which makes them usable again)."""
        live = [s for s in self._servers if s.live]
        self.transport.push(buckets, version, [s.client for s in live])
        with self._lock:
            for s in live:
                s.version = version
            self.weight_version = version

    def release_memory(self, tags: tuple[str, ...] = ("weights", "kv_cache")) -> None:
        for s in self._servers:
            s.client.release_memory(tags)

    def resume_memory(self, tags: tuple[str, ...] = ("weights", "kv_cache")) -> None:
        for s in self._servers:
            s.client.resume_memory(tags)

    def health(self) -> bool:
        return any(s.live and s.client.health() for s in self._servers)

    def metrics(self) -> list[dict]:
        """Per-server counters plus what is in flight now."""
        with self._lock:
            return [{"url": s.client.url, "live": s.live, "version": s.version,
                     "outstanding_tokens": s.outstanding_tokens, **s.metrics} for s in self._servers]

    @property
    def clients(self) -> list[ServerClient]:
        return [s.client for s in self._servers]
