#include "packing.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <utility>

namespace erl {
namespace {

// A subset is a linked list of sequence indices (through `next`) and the sum of their costs.
struct Subset {
  double sum;
  int64_t head;
  int64_t tail;
};

// A k-way partition waiting to be merged: its k subsets live at pool[slot * k], largest sum first.
struct Entry {
  double spread;  // largest sum minus smallest
  int64_t id;     // tie-break: singletons by sorted position, then merges in creation order
  int64_t slot;
};

bool before(double spread_a, int64_t id_a, double spread_b, int64_t id_b) {
  return spread_a > spread_b || (spread_a == spread_b && id_a < id_b);
}

Subset join(const Subset& x, const Subset& y, std::vector<int64_t>& next) {
  if (x.head < 0) return {x.sum + y.sum, y.head, y.tail};
  if (y.head < 0) return {x.sum + y.sum, x.head, x.tail};
  next[x.tail] = y.head;
  return {x.sum + y.sum, x.head, y.tail};
}

// Indices ordered by key, largest first, ties by index: a stable LSD radix sort, one byte a pass,
// skipping passes where every key has the same byte (most of them for integer lengths).
std::vector<int64_t> order_descending(const std::vector<uint64_t>& keys) {
  const size_t n = keys.size();
  std::vector<int64_t> order(n), spare(n);
  std::iota(order.begin(), order.end(), 0);
  for (int shift = 0; shift < 64; shift += 8) {
    std::array<size_t, 257> start{};
    for (int64_t i : order) ++start[256 - ((keys[i] >> shift) & 0xFF)];
    if (std::find(start.begin(), start.end(), n) != start.end()) continue;
    std::partial_sum(start.begin(), start.end(), start.begin());
    for (int64_t i : order) spare[start[255 - ((keys[i] >> shift) & 0xFF)]++] = i;
    order.swap(spare);
  }
  return order;
}

// Largest differencing: merge the two partitions of largest spread, largest subset of one with the
// smallest of the other, until one partition is left; returns each sequence's rank. Singletons enter
// lazily in `order` (cost descending, index ascending), and the subsets of merged-away partitions are
// reused, so memory follows the partitions alive at once.
std::vector<int> balance_ranks(const std::vector<double>& costs, const std::vector<int64_t>& order, int k) {
  const int64_t n = static_cast<int64_t>(costs.size());
  std::vector<int> rank_of(n);
  if (n == 0) return rank_of;
  std::vector<int64_t> next(n, -1);
  std::vector<Subset> pool;
  std::vector<int64_t> free_slots;
  auto new_slot = [&]() -> int64_t {
    if (free_slots.empty()) {
      pool.resize(pool.size() + k);
      return static_cast<int64_t>(pool.size() / k) - 1;
    }
    const int64_t slot = free_slots.back();
    free_slots.pop_back();
    return slot;
  };
  std::vector<Entry> heap;
  auto lower = [](const Entry& a, const Entry& b) { return before(b.spread, b.id, a.spread, a.id); };
  int64_t next_single = 0;
  auto pop = [&]() -> int64_t {
    if (next_single < n &&
        (heap.empty() || before(costs[order[next_single]], next_single, heap.front().spread, heap.front().id))) {
      const int64_t item = order[next_single++];
      const int64_t slot = new_slot();
      Subset* s = &pool[slot * k];
      s[0] = {costs[item], item, item};
      std::fill(s + 1, s + k, Subset{0.0, -1, -1});
      return slot;
    }
    std::pop_heap(heap.begin(), heap.end(), lower);
    const int64_t slot = heap.back().slot;
    heap.pop_back();
    return slot;
  };
  for (int64_t id = n; (n - next_single) + static_cast<int64_t>(heap.size()) > 1; ++id) {
    const int64_t a = pop(), b = pop(), merged = new_slot();  // pool is stable from here on
    const Subset* sa = &pool[a * k];
    const Subset* sb = &pool[b * k];
    Subset* sm = &pool[merged * k];
    // Stable insertion sort as the subsets are made: a's spread dominates b's, so few are out of order.
    for (int i = 0; i < k; ++i) {
      const Subset x = join(sa[i], sb[k - 1 - i], next);
      int j = i;
      for (; j > 0 && sm[j - 1].sum < x.sum; --j) sm[j] = sm[j - 1];
      sm[j] = x;
    }
    free_slots.push_back(a);
    free_slots.push_back(b);
    heap.push_back({sm[0].sum - sm[k - 1].sum, id, merged});
    std::push_heap(heap.begin(), heap.end(), lower);
  }
  const Subset* last = &pool[pop() * k];
  for (int r = 0; r < k; ++r)
    for (int64_t at = last[r].head; at >= 0; at = next[at]) rank_of[at] = r;
  return rank_of;
}

// Longest first into the least-filled of m micro-batches: the micro-batch of each of `items`, or
// false when a sequence does not fit. `least` is a binary min-heap of (tokens, micro-batch) packed into
// one integer, tokens << shift | micro-batch (both < 2^31), so the sift-down compares without branching;
// its top is updated in place, one sift-down per sequence.
bool fill(const std::vector<int64_t>& items, const std::vector<int64_t>& lengths, int64_t max_tokens, int64_t m,
          std::vector<int64_t>& bin_of) {
  int shift = 0;
  while ((int64_t{1} << shift) < m) ++shift;
  std::vector<uint64_t> least(m + 1, UINT64_MAX);  // least[m] is a sentinel, never the smaller child
  std::iota(least.begin(), least.end() - 1, uint64_t{0});
  const uint64_t limit = static_cast<uint64_t>(max_tokens + 1) << shift;
  bin_of.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const uint64_t top = least[0] + (static_cast<uint64_t>(lengths[items[i]]) << shift);
    if (top >= limit) return false;
    bin_of[i] = static_cast<int64_t>(least[0] & ((uint64_t{1} << shift) - 1));
    int64_t at = 0;
    for (int64_t child = 1; child < m; at = child, child = 2 * child + 1) {
      child += least[child + 1] < least[child];
      if (least[child] >= top) break;
      least[at] = least[child];
    }
    least[at] = top;
  }
  return true;
}

}  // namespace

PackResult pack_sequences(const std::vector<int64_t>& lengths, int64_t max_tokens, int dp_size,
                          double attention_weight) {
  std::vector<double> costs(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    const double len = static_cast<double>(lengths[i]);
    costs[i] = len + attention_weight * len * len;
  }
  std::vector<uint64_t> keys(costs.size());  // costs are >= 0, so their bit patterns sort as they do
  for (size_t i = 0; i < costs.size(); ++i) std::memcpy(&keys[i], &costs[i], sizeof(double));
  const std::vector<int64_t> order = order_descending(keys);
  const std::vector<int> rank_of = balance_ranks(costs, order, dp_size);
  // Each rank's sequences, longest first: cost grows with length, so `order` already is.
  std::vector<std::vector<int64_t>> ranks(dp_size);
  std::vector<int64_t> tokens(dp_size, 0);
  for (int64_t item : order) ranks[rank_of[item]].push_back(item), tokens[rank_of[item]] += lengths[item];
  int64_t lo = 0, hi = 0;
  for (int r = 0; r < dp_size; ++r) {
    lo = std::max(lo, (tokens[r] + max_tokens - 1) / max_tokens);
    hi = std::max(hi, static_cast<int64_t>(ranks[r].size()));
  }
  // Fewest micro-batches every rank fits in: `hi` (one sequence each) always does. Gallop up from the
  // lower bound `lo`, then bisect: the answer is usually a few above `lo`.
  std::vector<std::vector<int64_t>> bins(dp_size), trial(dp_size);
  auto fill_all = [&](int64_t m, std::vector<std::vector<int64_t>>& bin_of) {
    for (int r = 0; r < dp_size; ++r)
      if (!fill(ranks[r], lengths, max_tokens, m, bin_of[r])) return false;
    return true;
  };
  bool packed = fill_all(lo, bins);
  int64_t fails = lo, fits = lo;
  for (int64_t step = 1; !packed; step *= 2) {
    fails = fits;
    fits = std::min(fits + step, hi);
    packed = fill_all(fits, bins);
    if (!packed && fits == hi) throw std::invalid_argument("lengths: a sequence is longer than max_tokens");
  }
  while (fails + 1 < fits) {
    const int64_t mid = fails + (fits - fails) / 2;
    if (fill_all(mid, trial)) {
      fits = mid;
      bins.swap(trial);
    } else {
      fails = mid;
    }
  }
  PackResult out;
  out.order.reserve(lengths.size());
  out.cu_seqlens.reserve(lengths.size() + dp_size * fits);
  out.offsets.push_back(0);
  for (int r = 0; r < dp_size; ++r) {
    std::vector<int64_t> start(fits + 1, 0);  // counting sort of the rank's sequences by micro-batch
    for (int64_t bin : bins[r]) ++start[bin + 1];
    for (int64_t j = 0; j < fits; ++j) start[j + 1] += start[j];
    std::vector<int64_t> grouped(ranks[r].size());
    for (size_t i = 0; i < ranks[r].size(); ++i) grouped[start[bins[r][i]]++] = ranks[r][i];
    for (int64_t j = 0, at = 0; j < fits; ++j) {
      out.cu_seqlens.push_back(0);
      for (; at < start[j]; ++at) {
        out.order.push_back(grouped[at]);
        out.cu_seqlens.push_back(out.cu_seqlens.back() + lengths[grouped[at]]);
      }
      out.offsets.push_back(static_cast<int64_t>(out.order.size()));
    }
  }
  return out;
}

}  // namespace erl
