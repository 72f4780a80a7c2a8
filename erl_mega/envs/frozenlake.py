"""FrozenLake as a multi-turn text game, on gymnasium's non-slippery FrozenLake.

As the reference: one map per seed, side 2-9, frozen probability ~ U(0.6, 0.85), checked solvable within
the step limit. Symbols are remapped so the rules are not given away by the letters (no "H" for hole,
"G" for goal): which symbol is a hole and which the goal (`hole`, `goal`: the task's hidden facts) is
not in the initial prompt; the feedback names them ("fell into a hole (x)"), so they are discoverable
from a failed attempt, as the reference's remapped symbols are. One action per turn,
answered as `<action>up</action>` (up/down/left/right); anything else is an invalid move that uses the turn.
Held-out maps are disjoint from training maps by content (`content_split`), not only by seed.
"""

from __future__ import annotations

import random
import re
from collections import deque

import gymnasium as gym
from gymnasium.envs.toy_text.frozen_lake import generate_random_map

from erl_mega.envs.base import Observation, StepResult, check_symbols, content_split, register_env, split_of

FLOOR, AGENT = ".", "@"  # start and frozen cells look alike
FACT_ROLES = ("hole", "goal")  # the hidden facts: the symbol each role is drawn with
ACTIONS = {"left": 0, "down": 1, "right": 2, "up": 3}  # gymnasium's action ids
MOVES = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
ACTION_RE = re.compile(r"<action>\s*(\w+)\s*</action>", re.IGNORECASE)
ACTION_FORMAT = "Answer with one move as <action>up</action>, <action>down</action>, <action>left</action> or <action>right</action>."


def parse_action(text: str) -> str | None:
    """The move named by the last `<action>` tag, or None when there is no valid one."""
    found = ACTION_RE.findall(text)
    if not found:
        return None
    move = found[-1].lower()
    return move if move in ACTIONS else None


def shortest_path(desc: list[str], start: tuple[int, int]) -> list[str] | None:
    """The moves of a shortest hole-free path from `start` to the goal (BFS), or None when there is none."""
    size = len(desc)
    parent: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if desc[cell[0]][cell[1]] == "G":
            path = []
            while parent[cell] is not None:
                cell, move = parent[cell]
                path.append(move)
            return path[::-1]
        for move, (dr, dc) in MOVES.items():
            nxt = (cell[0] + dr, cell[1] + dc)
            if 0 <= nxt[0] < size and 0 <= nxt[1] < size and nxt not in parent and desc[nxt[0]][nxt[1]] != "H":
                parent[nxt] = (cell, move)
                queue.append(nxt)
    return None


def draw_map(seed: int, sizes: tuple[int, int], probs: tuple[float, float], max_turns: int) -> list[str]:
    """The map of `seed`: redrawn until solvable within `max_turns` and of the seed's split by content."""
    for attempt in range(10_000):
        draw = random.Random(f"frozenlake:{seed}:{attempt}")
        size, p = draw.randint(*sizes), draw.uniform(*probs)
        desc = generate_random_map(size=size, p=p, seed=draw.randrange(2**31))
        path = shortest_path(desc, (0, 0))
        if path is not None and len(path) <= max_turns and content_split("\n".join(desc)) == split_of(seed):
            return desc
    raise RuntimeError(f"no {split_of(seed)} map of size {sizes[0]}-{sizes[1]} is solvable within {max_turns} moves "
                       f"(seed {seed}, 10000 draws)")


class FrozenLake:
    """A random solvable map per seed; reward 1 on the goal; feedback tells goal, hole and step limit apart."""

    name = "frozenlake"
    action_format = ACTION_FORMAT
    parse_action = staticmethod(parse_action)

    def __init__(self, *, max_turns: int = 8, min_size: int = 2, max_size: int = 9, min_frozen_prob: float = 0.6,
                 max_frozen_prob: float = 0.85, hole: str = "x", goal: str = "*") -> None:
        check_symbols({"hole": hole, "goal": goal}, reserved=FLOOR + AGENT)
        if max_turns < 1:
            raise ValueError(f"env.max_turns={max_turns}; must be >= 1")
        if not 2 <= min_size <= max_size <= 12:
            raise ValueError(f"env.options.min_size={min_size}, max_size={max_size}; need 2 <= min <= max <= 12")
        if not 0 < min_frozen_prob <= max_frozen_prob <= 1:
            raise ValueError(f"env.options.min_frozen_prob={min_frozen_prob}, max_frozen_prob={max_frozen_prob}; "
                             "need 0 < min <= max <= 1")
        self.max_turns = max_turns
        self.facts = {"hole": hole, "goal": goal}
        self.symbols = {"S": FLOOR, "F": FLOOR, "H": hole, "G": goal}
        self.sizes, self.probs = (min_size, max_size), (min_frozen_prob, max_frozen_prob)
        self._env: gym.Env | None = None
        self.desc: list[str] = []
        self.turns = 0
        self.done = True

    @property
    def size(self) -> int:
        return len(self.desc)

    def reset(self, seed: int) -> Observation:
        """Start the episode of `seed`: the map and the start are a pure function of it."""
        self.desc = draw_map(seed, self.sizes, self.probs, self.max_turns)
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
        rows = ["".join(self.symbols[c] for c in line) for line in self.desc]
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
            before = self.position
            _, reward, terminated, _, _ = self._env.step(ACTIONS[move])
            fell = terminated and reward == 0
            note = f"You moved {move}." if self.position != before else f"You did not move: {move} is off the map."
        row, col = self.position
        if reward >= 1:
            return self._end(1.0, f"Success: reached the goal ({self.facts['goal']}) in {self.turns} steps.")
        if fell:
            return self._end(0.0, f"Failure: fell into a hole ({self.facts['hole']}) at row {row}, column {col} "
                                  f"after {self.turns} steps.")
        if self.turns >= self.max_turns:
            return self._end(0.0, f"Failure: step limit of {self.max_turns} reached without reaching the goal "
                                  f"({self.facts['goal']}).")
        return StepResult(Observation(f"{note}\n{self.render()}"), 0.0, False, note)

    def expert_move(self, believed: dict[str, str]) -> str | None:
        """First move of a shortest path to the goal for a player who believes the roles are drawn as `believed`
        (None when that belief sees no path): the demonstrator of the embedded warm-up."""
        letter = {believed["hole"]: "H", believed["goal"]: "G"}
        rows = ["".join(letter.get(self.symbols[c], "F") for c in line) for line in self.desc]
        path = shortest_path(rows, self.position)
        return path[0] if path else None

    def _end(self, reward: float, feedback: str) -> StepResult:
        self.done = True
        return StepResult(Observation(feedback), reward, True, feedback)


register_env("frozenlake")(FrozenLake)
