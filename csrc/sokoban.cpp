#include "sokoban.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>

namespace erl {
namespace {

constexpr int kMaxCells = 256;  // a state key holds each position in one byte
constexpr int kMaxBoxes = 7;    // the player and seven boxes fill a 64-bit key
constexpr int kMaxAttempts = 100000;
constexpr char kMoveNames[4] = {'U', 'D', 'L', 'R'};
constexpr int kSteps[4][2] = {{-1, 0}, {1, 0}, {0, -1}, {0, 1}};  // (row, column) step of each move
// Floor patterns carved along the random walk, as gym-sokoban's room topology generation.
constexpr int kMasks[5][9] = {{0, 0, 0, 1, 1, 1, 0, 0, 0},
                              {0, 1, 0, 0, 1, 0, 0, 1, 0},
                              {0, 0, 0, 1, 1, 0, 0, 1, 0},
                              {0, 0, 0, 1, 1, 0, 1, 1, 0},
                              {0, 0, 0, 0, 1, 1, 0, 1, 0}};

// SplitMix64: tiny, fast and trivially mirrored in Python, unlike std's distributions.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
};

// Cells are flat indices row * width + column; every border cell is a wall, so a step never leaves.
struct Board {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> wall, goal;
  int player = 0;
  std::vector<int> boxes;
};

int find_box(const uint8_t* boxes, int n, int cell) {
  for (int i = 0; i < n; ++i)
    if (boxes[i] == cell) return i;
  return -1;
}

uint64_t encode(int player, const uint8_t* boxes, int n) {
  uint64_t key = static_cast<uint64_t>(player);
  for (int i = 0; i < n; ++i) key |= static_cast<uint64_t>(boxes[i]) << (8 * (i + 1));
  return key;
}

// Open-addressing set of state keys; key 0 never occurs (cell 0 is a border wall).
class StateSet {
 public:
  bool insert(uint64_t key) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    if (!place(slots_, key)) return false;
    ++size_;
    return true;
  }

 private:
  static bool place(std::vector<uint64_t>& slots, uint64_t key) {
    const size_t mask = slots.size() - 1;
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    for (size_t i = (h ^ (h >> 32)) & mask;; i = (i + 1) & mask) {
      if (slots[i] == key) return false;
      if (slots[i] == 0) {
        slots[i] = key;
        return true;
      }
    }
  }
  void grow() {
    std::vector<uint64_t> bigger(std::max<size_t>(1024, 2 * slots_.size()), 0);
    for (uint64_t key : slots_)
      if (key != 0) place(bigger, key);
    slots_.swap(bigger);
  }
  std::vector<uint64_t> slots_;
  size_t size_ = 0;
};

// Cells from which no box can ever reach a goal (found by pulling a box away from every goal).
std::vector<uint8_t> dead_cells(const Board& b) {
  const int delta[4] = {-b.width, b.width, -1, 1};
  std::vector<uint8_t> live(b.wall.size(), 0);
  std::vector<int> todo;
  for (size_t c = 0; c < b.goal.size(); ++c)
    if (b.goal[c]) live[c] = 1, todo.push_back(static_cast<int>(c));
  while (!todo.empty()) {
    const int cell = todo.back();
    todo.pop_back();
    for (int d : delta) {
      const int to = cell + d;
      if (b.wall[to] || b.wall[to + d] || live[to]) continue;
      live[to] = 1;
      todo.push_back(to);
    }
  }
  std::vector<uint8_t> dead(b.wall.size(), 0);
  for (size_t c = 0; c < dead.size(); ++c) dead[c] = !b.wall[c] && !live[c];
  return dead;
}

// Breadth-first over (player, boxes): the first solved state found is one with the fewest moves.
std::optional<std::string> bfs(const Board& b, int max_depth) {
  const int n = static_cast<int>(b.boxes.size());
  const int delta[4] = {-b.width, b.width, -1, 1};
  const std::vector<uint8_t> dead = dead_cells(b);
  auto solved = [&](const uint8_t* boxes) {
    for (int i = 0; i < n; ++i)
      if (!b.goal[boxes[i]]) return false;
    return true;
  };
  struct Node {
    uint64_t key;
    int32_t parent;
    int32_t depth;
    char move;
  };
  uint8_t boxes[kMaxBoxes];
  for (int i = 0; i < n; ++i) boxes[i] = static_cast<uint8_t>(b.boxes[i]);
  std::sort(boxes, boxes + n);
  if (solved(boxes)) return std::string();

  std::vector<Node> nodes{{encode(b.player, boxes, n), -1, 0, 0}};
  StateSet seen;
  seen.insert(nodes[0].key);
  for (size_t i = 0; i < nodes.size() && nodes[i].depth < max_depth; ++i) {
    const Node node = nodes[i];
    const int player = static_cast<int>(node.key & 0xFF);
    for (int k = 0; k < n; ++k) boxes[k] = static_cast<uint8_t>(node.key >> (8 * (k + 1)));
    for (int d = 0; d < 4; ++d) {
      const int next = player + delta[d];
      if (b.wall[next]) continue;
      uint8_t moved[kMaxBoxes];
      std::copy(boxes, boxes + n, moved);
      const int hit = find_box(boxes, n, next);
      if (hit >= 0) {
        const int to = next + delta[d];
        if (b.wall[to] || dead[to] || find_box(boxes, n, to) >= 0) continue;
        moved[hit] = static_cast<uint8_t>(to);
        std::sort(moved, moved + n);
      }
      const uint64_t key = encode(next, moved, n);
      if (!seen.insert(key)) continue;
      nodes.push_back({key, static_cast<int32_t>(i), node.depth + 1, kMoveNames[d]});
      if (hit >= 0 && solved(moved)) {
        std::string plan;
        for (int32_t at = static_cast<int32_t>(nodes.size()) - 1; at > 0; at = nodes[at].parent)
          plan.push_back(nodes[at].move);
        std::reverse(plan.begin(), plan.end());
        return plan;
      }
    }
  }
  return std::nullopt;
}

// XSB rows into a board framed by one extra ring of walls, so arbitrary rows are safe to search.
Board parse_rows(const std::vector<std::string>& rows) {
  size_t longest = 0;
  for (const auto& row : rows) longest = std::max(longest, row.size());
  Board b;
  b.width = static_cast<int>(longest) + 2;
  b.height = static_cast<int>(rows.size()) + 2;
  if (b.width * b.height > kMaxCells)
    throw std::invalid_argument("rows: level too large; (rows + 2) * (longest row + 2) must be <= 256");
  b.wall.assign(b.width * b.height, 1);
  b.goal.assign(b.width * b.height, 0);
  int players = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const char ch = rows[r][c];
      const int cell = static_cast<int>(r + 1) * b.width + static_cast<int>(c + 1);
      if (std::string("# .$*@+").find(ch) == std::string::npos)
        throw std::invalid_argument("rows[" + std::to_string(r) + "]: unknown level character '" +
                                    std::string(1, ch) + "'; XSB uses # . $ * @ + and space");
      b.wall[cell] = ch == '#';
      b.goal[cell] = ch == '.' || ch == '*' || ch == '+';
      if (ch == '$' || ch == '*') b.boxes.push_back(cell);
      if (ch == '@' || ch == '+') b.player = cell, ++players;
    }
  }
  const auto goals = std::count(b.goal.begin(), b.goal.end(), 1);
  if (players != 1) throw std::invalid_argument("rows: a level has exactly one player ('@' or '+')");
  if (b.boxes.empty() || static_cast<int>(b.boxes.size()) > kMaxBoxes || goals != static_cast<long>(b.boxes.size()))
    throw std::invalid_argument("rows: a level has 1 to 7 boxes and as many goals");
  return b;
}

std::vector<std::string> to_rows(const Board& b) {
  std::vector<std::string> rows(b.height, std::string(b.width, ' '));
  for (int cell = 0; cell < b.width * b.height; ++cell) {
    const bool box = std::find(b.boxes.begin(), b.boxes.end(), cell) != b.boxes.end();
    char ch = b.wall[cell] ? '#' : b.goal[cell] ? '.' : ' ';
    if (box) ch = b.goal[cell] ? '*' : '$';
    if (cell == b.player) ch = b.goal[cell] ? '+' : '@';
    rows[cell / b.width][cell % b.width] = ch;
  }
  return rows;
}

// Walls everywhere, then floor carved along a random walk inside the border.
Board carve_room(SplitMix64& rng, int size) {
  Board b;
  b.width = b.height = size;
  b.wall.assign(size * size, 1);
  b.goal.assign(size * size, 0);
  int row = 1 + rng.below(size - 2), col = 1 + rng.below(size - 2);
  int dir = rng.below(4);
  for (int step = 0; step < 3 * size; ++step) {
    if (rng.below(100) < 35) dir = rng.below(4);
    row = std::clamp(row + kSteps[dir][0], 1, size - 2);
    col = std::clamp(col + kSteps[dir][1], 1, size - 2);
    const int* mask = kMasks[rng.below(5)];
    for (int i = 0; i < 9; ++i) {
      const int r = row + i / 3 - 1, c = col + i % 3 - 1;
      if (mask[i] && r >= 1 && r <= size - 2 && c >= 1 && c <= size - 2) b.wall[r * size + c] = 0;
    }
  }
  return b;
}

// Play backwards from the solved position: the player walks and pulls any box it walks away from.
// Keeps the position of best score (box swaps x total box distance from its goal, as gym-sokoban),
// so levels need real pushing rather than undoing a random walk.
void reverse_play(SplitMix64& rng, Board& b, int steps) {
  const int delta[4] = {-b.width, b.width, -1, 1};
  const std::vector<int> goals = b.boxes;
  std::vector<int> boxes = b.boxes;
  int player = b.player, swaps = 0, last_pulled = -1, best = 0;
  for (int step = 0; step < steps; ++step) {
    const int d = delta[rng.below(4)];
    const int next = player + d;
    if (b.wall[next] || std::find(boxes.begin(), boxes.end(), next) != boxes.end()) continue;
    const int pulled = static_cast<int>(std::find(boxes.begin(), boxes.end(), player - d) - boxes.begin());
    player = next;
    if (pulled == static_cast<int>(boxes.size())) continue;
    boxes[pulled] = player - d;
    swaps += pulled != last_pulled;
    last_pulled = pulled;
    int distance = 0;
    for (size_t i = 0; i < boxes.size(); ++i)
      distance += std::abs(boxes[i] / b.width - goals[i] / b.width) + std::abs(boxes[i] % b.width - goals[i] % b.width);
    if (swaps * distance > best) best = swaps * distance, b.boxes = boxes, b.player = player;
  }
}

// Move the player to a random cell it can walk to without pushing, so a level starts with a walk.
void place_player(SplitMix64& rng, Board& b) {
  const int delta[4] = {-b.width, b.width, -1, 1};
  std::vector<uint8_t> seen(b.wall.size(), 0);
  for (int box : b.boxes) seen[box] = 1;
  std::vector<int> todo{b.player};
  seen[b.player] = 1;
  std::vector<int> reach;
  while (!todo.empty()) {
    const int cell = todo.back();
    todo.pop_back();
    reach.push_back(cell);
    for (int d : delta)
      if (!b.wall[cell + d] && !seen[cell + d]) seen[cell + d] = 1, todo.push_back(cell + d);
  }
  std::sort(reach.begin(), reach.end());
  b.player = reach[rng.below(static_cast<int>(reach.size()))];
}

}  // namespace

std::optional<std::string> sokoban_solve(const std::vector<std::string>& rows, int max_depth) {
  return bfs(parse_rows(rows), max_depth);
}

SokobanLevel sokoban_generate(uint64_t seed, int size, int num_boxes, int max_moves) {
  if (size < 5 || size * size > kMaxCells) throw std::invalid_argument("size must be in [5, 16]");
  if (num_boxes < 1 || num_boxes > kMaxBoxes) throw std::invalid_argument("num_boxes must be in [1, 7]");
  if (max_moves < 1) throw std::invalid_argument("max_moves must be >= 1");
  SplitMix64 rng{seed};
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    Board b = carve_room(rng, size);
    std::vector<int> free_cells;
    for (int cell = 0; cell < size * size; ++cell)
      if (!b.wall[cell]) free_cells.push_back(cell);
    if (static_cast<int>(free_cells.size()) < num_boxes + 2) continue;
    for (int k = 0; k < num_boxes; ++k) {
      const auto pick = free_cells.begin() + rng.below(static_cast<int>(free_cells.size()));
      b.goal[*pick] = 1;
      b.boxes.push_back(*pick);
      free_cells.erase(pick);
    }
    b.player = free_cells[rng.below(static_cast<int>(free_cells.size()))];
    reverse_play(rng, b, 2 * size * size);
    place_player(rng, b);
    if (std::all_of(b.boxes.begin(), b.boxes.end(), [&](int cell) { return b.goal[cell]; })) continue;
    std::optional<std::string> plan = bfs(b, max_moves);
    if (plan) return {to_rows(b), *plan};
  }
  throw std::runtime_error("no level found in 100000 attempts; raise max_moves or lower num_boxes");
}

}  // namespace erl
