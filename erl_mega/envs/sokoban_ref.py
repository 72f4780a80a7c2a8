"""Plain-Python Sokoban reference: csrc/sokoban.cpp's generator mirrored draw for draw, and a plain BFS.

The BFS prunes nothing (the C++ one skips dead squares), so it is an independent check that the C++
plans are optimal; the generator lets the benchmark time the same work in both languages.
"""

from __future__ import annotations

from erl_mega.envs.sokoban import parse_xsb

MASK64 = (1 << 64) - 1
MAX_ATTEMPTS = 100_000
PLAN_LETTERS = "UDLR"
STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (row, column) step of U, D, L, R
MASKS = (  # floor patterns carved along the random walk, as gym-sokoban
    (0, 0, 0, 1, 1, 1, 0, 0, 0),
    (0, 1, 0, 0, 1, 0, 0, 1, 0),
    (0, 0, 0, 1, 1, 0, 0, 1, 0),
    (0, 0, 0, 1, 1, 0, 1, 1, 0),
    (0, 0, 0, 0, 1, 1, 0, 1, 0),
)


class SplitMix64:
    """The generator's random numbers, bit for bit as in C++."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def below(self, n: int) -> int:
        """A draw in [0, n)."""
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return (z ^ (z >> 31)) % n


def bfs(
    width: int, walls: frozenset[int], goals: frozenset[int], boxes: tuple[int, ...], player: int, max_depth: int
) -> str | None:
    """A fewest-moves plan of at most max_depth moves ('UDLR'), or None; every border cell must be a wall."""
    start = (player, tuple(sorted(boxes)))
    if set(start[1]) <= goals:
        return ""
    moves = tuple(zip((-width, width, -1, 1), PLAN_LETTERS))
    parents: dict[tuple[int, tuple[int, ...]], tuple] = {start: ()}
    frontier = [start]
    for _ in range(max_depth):
        next_frontier = []
        for state in frontier:
            at, placed = state
            for delta, letter in moves:
                target = at + delta
                if target in walls:
                    continue
                moved = placed
                if target in placed:
                    pushed_to = target + delta
                    if pushed_to in walls or pushed_to in placed:
                        continue
                    moved = tuple(sorted(pushed_to if box == target else box for box in placed))
                child = (target, moved)
                if child in parents:
                    continue
                parents[child] = (state, letter)
                if moved is not placed and set(moved) <= goals:
                    return _plan(parents, child)
                next_frontier.append(child)
        frontier = next_frontier
    return None


def _plan(parents: dict, state: tuple) -> str:
    letters = []
    while parents[state]:
        state, letter = parents[state]
        letters.append(letter)
    return "".join(reversed(letters))


def solve(rows: list[str], max_depth: int) -> str | None:
    """A fewest-moves plan for XSB rows, as `erl_mega.native.sokoban_solve`."""
    level = parse_xsb(rows)
    return bfs(level.width, level.walls, level.goals, tuple(level.boxes), level.player, max_depth)


def generate(seed: int, size: int, num_boxes: int, max_moves: int) -> tuple[list[str], str]:
    """(XSB rows, optimal plan) of the level of `seed`, as `erl_mega.native.sokoban_generate`."""
    rng = SplitMix64(seed)
    for _ in range(MAX_ATTEMPTS):
        walls = _carve_room(rng, size)
        free = [cell for cell in range(size * size) if cell not in walls]
        if len(free) < num_boxes + 2:
            continue
        goals = [free.pop(rng.below(len(free))) for _ in range(num_boxes)]
        player = free[rng.below(len(free))]
        boxes, player = _reverse_play(rng, size, walls, goals, player, 2 * size * size)
        player = _place_player(rng, size, walls, boxes, player)
        if set(boxes) <= set(goals):
            continue
        plan = bfs(size, walls, frozenset(goals), tuple(boxes), player, max_moves)
        if plan is not None:
            return _to_rows(size, walls, set(goals), set(boxes), player), plan
    raise RuntimeError(f"no level found in {MAX_ATTEMPTS} attempts; raise max_moves or lower num_boxes")


def _carve_room(rng: SplitMix64, size: int) -> frozenset[int]:
    floor = set()
    row, col = 1 + rng.below(size - 2), 1 + rng.below(size - 2)
    direction = rng.below(4)
    for _ in range(3 * size):
        if rng.below(100) < 35:
            direction = rng.below(4)
        row = min(max(row + STEPS[direction][0], 1), size - 2)
        col = min(max(col + STEPS[direction][1], 1), size - 2)
        mask = MASKS[rng.below(5)]
        for i in range(9):
            r, c = row + i // 3 - 1, col + i % 3 - 1
            if mask[i] and 1 <= r <= size - 2 and 1 <= c <= size - 2:
                floor.add(r * size + c)
    return frozenset(range(size * size)) - floor


def _reverse_play(
    rng: SplitMix64, size: int, walls: frozenset[int], goals: list[int], player: int, steps: int
) -> tuple[list[int], int]:
    deltas = (-size, size, -1, 1)
    boxes, best_boxes, best_player = list(goals), list(goals), player
    swaps, last_pulled, best = 0, -1, 0
    for _ in range(steps):
        delta = deltas[rng.below(4)]
        target = player + delta
        if target in walls or target in boxes:
            continue
        behind = player - delta
        player = target
        if behind not in boxes:
            continue
        pulled = boxes.index(behind)
        boxes[pulled] = player - delta
        swaps += pulled != last_pulled
        last_pulled = pulled
        distance = sum(abs(b // size - g // size) + abs(b % size - g % size) for b, g in zip(boxes, goals))
        if swaps * distance > best:
            best, best_boxes, best_player = swaps * distance, list(boxes), player
    return best_boxes, best_player


def _place_player(rng: SplitMix64, size: int, walls: frozenset[int], boxes: list[int], player: int) -> int:
    seen, todo = set(boxes) | {player}, [player]
    reach = []
    while todo:
        cell = todo.pop()
        reach.append(cell)
        for delta in (-size, size, -1, 1):
            if cell + delta not in walls and cell + delta not in seen:
                seen.add(cell + delta)
                todo.append(cell + delta)
    reach.sort()
    return reach[rng.below(len(reach))]


def _to_rows(size: int, walls: frozenset[int], goals: set[int], boxes: set[int], player: int) -> list[str]:
    rows = []
    for row in range(size):
        line = ""
        for cell in range(row * size, (row + 1) * size):
            ch = "#" if cell in walls else "." if cell in goals else " "
            if cell in boxes:
                ch = "*" if cell in goals else "$"
            if cell == player:
                ch = "+" if cell in goals else "@"
            line += ch
        rows.append(line)
    return rows
