"""FrozenLake as a multi-turn text game, on gymnasium's non-slippery FrozenLake.

Symbols are remapped so the rules are not given away by the letters (no "H" for hole, "G" for goal):
the agent must learn from feedback which cells end the episode. One action per turn, answered as
`<action>up</action>` (up/down/left/right); anything else is an invalid move that uses the turn.
"""

from __future__ import annotations

import re

import gymnasium as gym
from gymnasium.envs.toy_text.frozen_lake import generate_random_map

from erl_mega.envs.base import Observation, StepResult, register_env

SYMBOLS = {"S": ".", "F": ".", "H": "x", "G": "*"}  # start and frozen look alike; x = hole, * = goal
AGENT = "@"
ACTIONS = {"left": 0, "down": 1, "right": 2, "up": 3}  # gymnasium's action ids
ACTION_RE = re.compile(r"<action>\s*(\w+)\s*</action>", re.IGNORECASE)
ACTION_FORMAT = "Answer with one move as <action>up</action>, <action>down</action>, <action>left</action> or <action>right</action>."


def parse_action(text: str) -> str | None:
    """The move named by the last `<action>` tag, or None when there is no valid one."""
    found = ACTION_RE.findall(text)
    if not found:
        return None
    move = found[-1].lower()
    return move if move in ACTIONS else None


class FrozenLake:
    """A random solvable map per seed; reward 1 on the goal; feedback tells goal, hole and step limit apart."""

    name = "frozenlake"
    action_format = ACTION_FORMAT

    def __init__(self, *, max_turns: int = 8, size: int = 4, frozen_prob: float = 0.8) -> None:
        if max_turns < 1:
            raise ValueError(f"env.max_turns={max_turns}; must be >= 1")
        if not 2 <= size <= 12:
            raise ValueError(f"env.options.size={size}; must be in [2, 12]")
        if not 0 < frozen_prob <= 1:
            raise ValueError(f"env.options.frozen_prob={frozen_prob}; must be in (0, 1]")
        self.max_turns, self.size, self.frozen_prob = max_turns, size, frozen_prob
        self._env: gym.Env | None = None
        self.desc: list[str] = []
        self.turns = 0
        self.done = True

    def reset(self, seed: int) -> Observation:
        """Start the episode of `seed`: the map and the start are a pure function of it."""
        self.desc = generate_random_map(size=self.size, p=self.frozen_prob, seed=seed)
        self._env = gym.make("FrozenLake-v1", desc=self.desc, is_slippery=False)
        self._env.reset(seed=seed)
        self.turns, self.done = 0, False
        return Observation(self.render())

    @property
    def position(self) -> tuple[int, int]:
        """(row, column) of the agent."""
        return divmod(int(self._env.unwrapped.s), self.size)

    def render(self) -> str:
        """The map as text rows, the agent drawn over its cell."""
        row, col = self.position
        rows = ["".join(SYMBOLS[c] for c in line) for line in self.desc]
        rows[row] = rows[row][:col] + AGENT + rows[row][col + 1 :]
        return "\n".join(rows)

    def step(self, action: str) -> StepResult:
        """Apply one reply; never raises on agent text."""
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset(seed) first")
        self.turns += 1
        move = parse_action(action)
        reward, fell = 0.0, False
        if move is None:
            note = "Invalid move: no <action> tag with up, down, left or right."
        else:
            _, reward, terminated, _, _ = self._env.step(ACTIONS[move])
            fell = terminated and reward == 0
            note = f"You moved {move}."
        row, col = self.position
        if reward >= 1:
            return self._end(1.0, f"Success: reached the goal in {self.turns} steps.")
        if fell:
            return self._end(0.0, f"Failure: fell into a hole at row {row}, column {col} after {self.turns} steps.")
        if self.turns >= self.max_turns:
            return self._end(0.0, f"Failure: step limit of {self.max_turns} reached without reaching the goal.")
        return StepResult(Observation(f"{note}\n{self.render()}"), 0.0, False, note)

    def _end(self, reward: float, feedback: str) -> StepResult:
        self.done = True
        return StepResult(Observation(feedback), reward, True, feedback)


register_env("frozenlake")(FrozenLake)
