"""Rollout servers as child processes: started, health-checked, restarted and ended by process id."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One `erl-mega serve` (or any command that serves SGLang's API) owned by this process."""

    def __init__(self, command: list[str], port: int, log_path: Path | None = None, startup_timeout: float = 180.0) -> None:
        self.command, self.port, self.log_path = command, port, log_path
        self.startup_timeout = startup_timeout
        self.url = f"http://127.0.0.1:{port}"
        self.restarts = 0
        self._proc: subprocess.Popen | None = None

    @classmethod
    def embedded(cls, model_path: str, port: int | None = None, log_path: Path | None = None, **options) -> "ServerProcess":
        """Our embedded engine on `model_path`; `options` are serve's key=value settings."""
        port = port or free_port()
        args = [f"model.path={model_path}", f"port={port}", *(f"{k}={v}" for k, v in options.items())]
        return cls([sys.executable, "-m", "erl_mega", "serve", *args], port, log_path)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, wait: bool = True) -> "ServerProcess":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self._proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            try:
                self.wait_healthy()
            except RuntimeError:
                self.stop()  # a server that never became healthy is not left running
                raise
        return self

    def wait_healthy(self) -> None:
        """Block until `/health` answers 200; RuntimeError if the process exits or the timeout passes."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server on port {self.port} exited with {self._proc.returncode}; log: {self.log_path}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server on port {self.port} not healthy after {self.startup_timeout:.0f} s; log: {self.log_path}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def restart(self) -> None:
        """End (if needed) and start again on the same port: the router's answer to a dead server."""
        self.stop()
        self.restarts += 1
        self.start()

    def kill(self) -> None:
        """SIGKILL by pid (tests use it to simulate a crash)."""
        if self.alive():
            self._proc.kill()
            self._proc.wait()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM by pid, SIGKILL after `grace` seconds."""
        if not self.alive():
            return
        self._proc.terminate()
        try:
            self._proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
