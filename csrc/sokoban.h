// Sokoban: a seeded level generator (reverse play) and an optimal solver (breadth-first, fewest moves).
// Levels travel as XSB rows: '#' wall, ' ' floor, '.' goal, '$' box, '*' box on goal, '@' player,
// '+' player on goal. Plans are strings of moves 'U' 'D' 'L' 'R'.
// erl_mega/envs/sokoban_ref.py mirrors both functions in plain Python, draw for draw.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace erl {

struct SokobanLevel {
  std::vector<std::string> rows;  // XSB rows, the room's border included
  std::string solution;           // an optimal plan
};

// A plan with the fewest moves, of at most max_depth moves; nullopt when there is none.
std::optional<std::string> sokoban_solve(const std::vector<std::string>& rows, int max_depth);

// The level of `seed` in a size x size room (walls included) with num_boxes boxes whose optimal plan
// has between 1 and max_moves moves. Throws std::invalid_argument on bad sizes.
SokobanLevel sokoban_generate(uint64_t seed, int size, int num_boxes, int max_moves);

}  // namespace erl
