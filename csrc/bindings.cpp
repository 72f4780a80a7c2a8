// erl_mega._native: a thin pybind11 layer over the plain functions of csrc/ (GIL released while they run).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "packing.h"
#include "sokoban.h"

namespace py = pybind11;

namespace {

py::array_t<int64_t> to_numpy(const std::vector<int64_t>& values) {
  return py::array_t<int64_t>(static_cast<py::ssize_t>(values.size()), values.data());
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "C++ core of erl-mega: Sokoban generation and solving, sequence packing.";

  m.def(
      "sokoban_generate",
      [](uint64_t seed, int size, int num_boxes, int max_moves) {
        erl::SokobanLevel level;
        {
          py::gil_scoped_release release;
          level = erl::sokoban_generate(seed, size, num_boxes, max_moves);
        }
        return py::make_tuple(level.rows, level.solution);
      },
      py::arg("seed"), py::arg("size"), py::arg("num_boxes"), py::arg("max_moves"),
      "(XSB rows, optimal plan) of the level of `seed`; the plan has 1..max_moves moves in 'UDLR'.");

  m.def("sokoban_solve", &erl::sokoban_solve, py::arg("rows"), py::arg("max_depth"),
        py::call_guard<py::gil_scoped_release>(),
        "A fewest-moves plan ('UDLR') of at most max_depth moves for XSB rows, or None.");

  m.def(
      "pack_sequences",
      [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths, int64_t max_tokens, int dp_size,
         double attention_weight) {
        std::vector<int64_t> values(lengths.data(), lengths.data() + lengths.size());
        erl::PackResult result;
        {
          py::gil_scoped_release release;
          result = erl::pack_sequences(values, max_tokens, dp_size, attention_weight);
        }
        return py::make_tuple(to_numpy(result.order), to_numpy(result.offsets), to_numpy(result.cu_seqlens));
      },
      py::arg("lengths"), py::arg("max_tokens"), py::arg("dp_size"), py::arg("attention_weight"),
      "(order, offsets, cu_seqlens) int64 arrays: micro-batch j holds order[offsets[j]:offsets[j+1]],\n"
      "rank r owns micro-batches [r * M, (r + 1) * M); see csrc/packing.h.");
}
