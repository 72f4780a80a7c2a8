// Sequence packing for training: split sequences across data-parallel ranks with balanced cost
// (Karmarkar-Karp largest differencing), then pack each rank's share into the same number of
// micro-batches under a token budget (largest first, into the least-filled micro-batch).
// erl_mega/train/packing.py mirrors this in plain Python, tie for tie.
#pragma once

#include <cstdint>
#include <vector>

namespace erl {

struct PackResult {
  std::vector<int64_t> order;       // [n] sequence indices, rank by rank, micro-batch by micro-batch
  std::vector<int64_t> offsets;     // [dp_size * num_micro_batches + 1] where each micro-batch starts in order
  std::vector<int64_t> cu_seqlens;  // [n + dp_size * num_micro_batches] each micro-batch's 0, l0, l0 + l1, ...
};

// Balance cost len + attention_weight * len^2 across dp_size ranks, then give every rank the same,
// smallest found, number of micro-batches of at most max_tokens tokens each.
// Expects 1 <= lengths[i] <= max_tokens < 2^31, fewer than 2^31 lengths, dp_size >= 1, attention_weight >= 0.
PackResult pack_sequences(const std::vector<int64_t>& lengths, int64_t max_tokens, int dp_size,
                          double attention_weight);

}  // namespace erl
