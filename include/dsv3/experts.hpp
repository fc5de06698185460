// dsv3/experts.hpp — expert parallelism: which process computes which routed
// experts, and how their outputs reach every process.
//
// Every process of a group runs the whole model except the routed experts:
// attention, dense layers, router, shared experts, embedding and head are
// replicated (the same inputs and code give the same bits on every process).
// At each MoE layer every process knows every token's routing; it runs only
// the routed experts it owns, and the outputs are exchanged so that every
// process holds every active expert's output. Each token then sums its terms
// in ascending expert id, as one process does: the logits are byte-identical
// to a single process for any group size (docs/parallel.md).
//
// Ownership is contiguous: expert e of E belongs to rank floor(e·N/E), so the
// owners of ascending experts are ascending ranks and the exchange, in rank
// order, yields the outputs in ascending expert order. This header carries
// no MPI: mpi/expert_group.hpp implements the exchange with MPI_Allgatherv.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv3 {

class ExpertGroup {
 public:
  virtual ~ExpertGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  int owner(int64_t expert, int64_t n_experts) const { return int((expert * size()) / n_experts); }
  bool owns(int64_t expert, int64_t n_experts) const { return owner(expert, n_experts) == rank(); }

  // Every rank passes the bytes it computed (`mine`, whose size must equal
  // counts[rank()]) and receives all ranks' bytes concatenated in rank order.
  virtual void allgather(const std::vector<unsigned char>& mine, const std::vector<std::size_t>& counts,
                         std::vector<unsigned char>& all) const = 0;

  // Bytes this process sent and received in exchanges (accounting).
  mutable std::size_t bytes_sent = 0, bytes_received = 0;
};

}  // namespace dsv3
