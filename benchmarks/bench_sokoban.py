"""python benchmarks/bench_sokoban.py

Sokoban levels generated and optimally solved per second on one core: the C++ core (csrc/sokoban.cpp)
against the plain-Python reference (erl_mega/envs/sokoban_ref.py). Both make the identical levels for
the same seeds (same random draws, same BFS order; checked below), so the ratio prices the same work;
the C++ search also skips dead squares, which the plain BFS does not. Times are CPU seconds
(time.process_time), the best of three runs, so other load on the machine distorts them less.
"""

from __future__ import annotations

import json
import time

from erl_mega import native
from erl_mega.envs import sokoban_ref

CONFIGS = [(6, 1, 20), (8, 2, 30), (8, 3, 40), (10, 2, 40)]  # (room size, boxes, max moves)
LEVELS = {"cpp": 2000, "python": 100}


def levels_per_second(generate, config: tuple[int, int, int], count: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for seed in range(count):
            generate(seed, *config)
        best = min(best, time.process_time() - start)
    return count / best


def main() -> None:
    rows = []
    print(f"{'room':>5} {'boxes':>5} {'max moves':>9} {'C++ levels/s':>13} {'Python levels/s':>16} {'C++ / Python':>13}")
    for config in CONFIGS:
        for seed in range(20):
            assert native.sokoban_generate(seed, *config) == sokoban_ref.generate(seed, *config), (seed, config)
        cpp = levels_per_second(native.sokoban_generate, config, LEVELS["cpp"])
        python = levels_per_second(sokoban_ref.generate, config, LEVELS["python"])
        rows.append({"room_size": config[0], "num_boxes": config[1], "max_moves": config[2],
                     "cpp_levels_per_s": round(cpp), "python_levels_per_s": round(python, 1),
                     "speedup": round(cpp / python, 1)})
        print(f"{config[0]:>5} {config[1]:>5} {config[2]:>9} {cpp:>13.0f} {python:>16.1f} {cpp / python:>12.1f}x")
    print(json.dumps({"bench": "sokoban", "rows": rows}))


if __name__ == "__main__":
    main()
