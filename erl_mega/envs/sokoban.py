"""Sokoban as a multi-turn text game, on levels generated and optimally solved in C++ (csrc/sokoban.cpp).

Symbols are remapped so the rules are not given away by the letters (no XSB "#", "$", "."): `%` wall,
`.` floor, `*` target, `o` box, `Q` box on a target, `@` the agent, `&` the agent on a target. Which
symbol is the box and which the target (`box`, `target`: the task's hidden facts) is not in the initial
prompt; the feedback names them ("every box (o) is on a target (*)"), so a failed attempt reveals them. One move
per turn, answered as `<action>up</action>` (up/down/left/right), exactly as in FrozenLake; a reply
without a valid move, or a move into a wall or a box that cannot be pushed, uses the turn and says so.
Reward 1 when every box is on a target. The episode ends solved, at the step limit, or stuck: a box
pushed into a corner that is not a target can never move again, so nothing is left to play for.
As the reference: rooms of side 6-8 drawn per seed, 1 box, an optimal solution of at most `max_moves` (8)
moves, 8 steps. `solution` holds one optimal plan. Held-out levels are disjoint from training levels by
content (`content_split`), not only by seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import random

from erl_mega.envs.base import Observation, StepResult, check_symbols, content_split, register_env, split_of
from erl_mega.envs.frozenlake import ACTION_FORMAT, parse_action
from erl_mega.native import sokoban_generate

SYMBOLS = {"#": "%", " ": ".", ".": "*", "$": "o", "*": "Q", "@": "@", "+": "&"}  # XSB -> shown (default facts)
FIXED = "%.Q@&"  # wall, floor, box on target, agent, agent on target: never a hidden fact's symbol
FACT_ROLES = ("box", "target")
PLAN_ACTIONS = {"U": "up", "D": "down", "L": "left", "R": "right"}  # solver plan letters -> action words


@dataclass(frozen=True)
class Level:
    """XSB rows parsed onto a grid framed by one more ring of walls; cells are row * width + column."""

    width: int
    height: int
    walls: frozenset[int]
    goals: frozenset[int]
    boxes: frozenset[int]
    player: int

    def offset(self, move: str) -> int:
        """The flat-index offset of one move ('up', 'down', 'left' or 'right')."""
        return {"up": -self.width, "down": self.width, "left": -1, "right": 1}[move]

    def position(self, cell: int) -> tuple[int, int]:
        """(row, column) of a cell in the unframed rows."""
        row, col = divmod(cell, self.width)
        return row - 1, col - 1


def parse_xsb(rows: list[str]) -> Level:
    """Parse XSB rows ('#' wall, ' ' floor, '.' goal, '$' box, '*' box on goal, '@' / '+' player)."""
    width = max(map(len, rows), default=0) + 2
    framed = ["#" * width] + ["#" + row.ljust(width - 2, "#") + "#" for row in rows] + ["#" * width]
    cells = {i * width + j: ch for i, row in enumerate(framed) for j, ch in enumerate(row)}
    players = [c for c, ch in cells.items() if ch in "@+"]
    if len(players) != 1 or set(cells.values()) - set(SYMBOLS):
        raise ValueError(f"rows={rows!r}: an XSB level has one player and only the characters # .$*@+")
    return Level(
        width=width,
        height=len(framed),
        walls=frozenset(c for c, ch in cells.items() if ch == "#"),
        goals=frozenset(c for c, ch in cells.items() if ch in ".*+"),
        boxes=frozenset(c for c, ch in cells.items() if ch in "$*"),
        player=players[0],
    )


class Sokoban:
    """A generated level per seed; reward 1 when solved; feedback tells solved, stuck and step limit apart."""

    name = "sokoban"
    action_format = ACTION_FORMAT
    parse_action = staticmethod(parse_action)

    def __init__(self, *, max_turns: int = 8, min_room_size: int = 6, max_room_size: int = 8, num_boxes: int = 1,
                 max_moves: int = 8, box: str = "o", target: str = "*") -> None:
        check_symbols({"box": box, "target": target}, reserved=FIXED)
        if max_turns < 1:
            raise ValueError(f"env.max_turns={max_turns}; must be >= 1")
        if not 5 <= min_room_size <= max_room_size <= 10:
            raise ValueError(f"env.options.min_room_size={min_room_size}, max_room_size={max_room_size}; "
                             "need 5 <= min <= max <= 10 (walls included)")
        if not 1 <= num_boxes <= 4:
            raise ValueError(f"env.options.num_boxes={num_boxes}; must be in [1, 4]")
        if max_moves < 1:
            raise ValueError(f"env.options.max_moves={max_moves}; must be >= 1")
        self.max_turns, self.room_sizes, self.num_boxes, self.max_moves = (
            max_turns, (min_room_size, max_room_size), num_boxes, max_moves)
        self.facts = {"box": box, "target": target}
        self.symbols = SYMBOLS | {"$": box, ".": target}
        self.level: Level | None = None
        self.solution = ""  # one optimal plan of the current level, as 'UDLR' letters
        self.boxes: set[int] = set()
        self.player = 0
        self.turns = 0
        self.done = True

    def reset(self, seed: int) -> Observation:
        """Start the episode of `seed`: the level is a pure function of it and of the options."""
        if seed < 0:
            raise ValueError(f"seed={seed}; must be >= 0")
        for attempt in range(10_000):  # redraw until the level's content belongs to the seed's split
            draw = random.Random(f"sokoban:{seed}:{attempt}")
            rows, self.solution = sokoban_generate(draw.randrange(2**63), draw.randint(*self.room_sizes),
                                                   self.num_boxes, self.max_moves)
            if content_split("\n".join(rows)) == split_of(seed):
                break
        self.level = parse_xsb(rows)
        self.boxes, self.player = set(self.level.boxes), self.level.player
        self.turns, self.done = 0, False
        return Observation(self.render())

    def render(self) -> str:
        """The room as text rows in the remapped symbols."""
        level, shown = self.level, []
        for row in range(1, level.height - 1):
            line = ""
            for cell in range(row * level.width + 1, (row + 1) * level.width - 1):
                xsb = "#" if cell in level.walls else " "
                if cell in self.boxes:
                    xsb = "$"
                if cell == self.player:
                    xsb = "@"
                if cell in level.goals:
                    xsb = {" ": ".", "$": "*", "@": "+"}[xsb]
                line += self.symbols[xsb]
            shown.append(line)
        return "\n".join(shown)

    def step(self, action: str) -> StepResult:
        """Apply one reply; never raises on agent text."""
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset(seed) first")
        self.turns += 1
        move = parse_action(action)
        note, cornered = (f"Invalid move. {ACTION_FORMAT}", None) if move is None else self._move(move)
        if self.boxes <= self.level.goals:
            return self._end(1.0, f"Success: every box ({self.facts['box']}) is on a target ({self.facts['target']}) "
                                  f"after {self.turns} steps.")
        if cornered is not None:
            row, col = self.level.position(cornered)
            return self._end(
                0.0,
                f"Failure: stuck; the box ({self.facts['box']}) pushed to row {row}, column {col} is in a corner it can "
                f"never leave, "
                f"after {self.turns} steps.",
            )
        if self.turns >= self.max_turns:
            placed = len(self.boxes & self.level.goals)
            return self._end(
                0.0,
                f"Failure: step limit of {self.max_turns} reached with {placed} of {len(self.boxes)} boxes "
                f"({self.facts['box']}) on targets ({self.facts['target']}).",
            )
        return StepResult(Observation(f"{note}\n{self.render()}"), 0.0, False, note)

    def _move(self, move: str) -> tuple[str, int | None]:
        """Play one move: (what happened, the cell of a box just pushed into a dead corner or None)."""
        walls, delta = self.level.walls, self.level.offset(move)
        target = self.player + delta
        if target in walls:
            return f"No effect: a wall blocks {move}.", None
        if target not in self.boxes:
            self.player = target
            return f"You moved {move}.", None
        pushed_to = target + delta
        if pushed_to in walls or pushed_to in self.boxes:
            return f"No effect: the box cannot be pushed {move}.", None
        self.boxes.remove(target)
        self.boxes.add(pushed_to)
        self.player = target
        width = self.level.width
        cornered = (pushed_to - width in walls or pushed_to + width in walls) and (
            pushed_to - 1 in walls or pushed_to + 1 in walls
        )
        return f"You pushed a box {move}.", pushed_to if cornered and pushed_to not in self.level.goals else None

    def expert_move(self, believed: dict[str, str]) -> str | None:
        """First move of a fewest-moves plan for a player who believes the roles are drawn as `believed` (None
        when that belief sees no plan within the turns left): the demonstrator of the embedded warm-up."""
        from erl_mega.envs.sokoban_ref import bfs

        level, shown = self.level, {}
        for row, line in enumerate(self.render().splitlines(), 1):
            shown |= {row * level.width + col: ch for col, ch in enumerate(line, 1)}
        boxes = tuple(c for c, ch in shown.items() if ch in (believed["box"], "Q"))
        goals = frozenset(c for c, ch in shown.items() if ch in (believed["target"], "Q", "&"))
        plan = bfs(level.width, level.walls, goals, boxes, self.player, self.max_turns - self.turns)
        return PLAN_ACTIONS[plan[0]] if plan else None

    def _end(self, reward: float, feedback: str) -> StepResult:
        self.done = True
        return StepResult(Observation(feedback), reward, True, feedback)


register_env("sokoban")(Sokoban)
