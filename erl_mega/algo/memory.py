"""Reflection memory: the reflections whose second attempt succeeded, newest last, persisted as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path


class ReflectionMemory:
    """A bounded store of useful reflections; the newest is what the next reflection builds on."""

    def __init__(self, capacity: int = 16) -> None:
        if capacity < 1:
            raise ValueError(f"memory capacity={capacity}; must be >= 1")
        self.capacity = capacity
        self.entries: list[str] = []

    def add(self, reflection: str) -> None:
        """Remember a reflection that led to success (a repeat moves to the newest place)."""
        if reflection in self.entries:
            self.entries.remove(reflection)
        self.entries.append(reflection)
        del self.entries[: -self.capacity]

    def current(self, initial_prompt: str) -> str:
        """The prompt the next reflection starts from: the newest memory, else the initial prompt."""
        return self.entries[-1] if self.entries else initial_prompt

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file, then rename)."""
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps({"capacity": self.capacity, "entries": self.entries}, indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "ReflectionMemory":
        data = json.loads(Path(path).read_text())
        memory = cls(data["capacity"])
        memory.entries = list(data["entries"])
        return memory
