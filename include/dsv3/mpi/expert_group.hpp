// dsv3/mpi/expert_group.hpp — expert parallelism over MPI (experts.hpp).
//
// Each rank of MPI_COMM_WORLD owns a contiguous block of routed experts; the
// expert outputs of a MoE layer travel with one MPI_Allgatherv of raw bytes in
// rank order (= ascending expert order), so every rank sums each token's terms
// exactly as one process does. Needs <mpi.h> (Open MPI: libopenmpi-dev); built
// into the CLI with the CMake option DSV3_MPI.
#pragma once

#include <mpi.h>

#include <climits>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "../error.hpp"
#include "../experts.hpp"

namespace dsv3 {

class MpiExpertGroup : public ExpertGroup {
 public:
  explicit MpiExpertGroup(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allgather(const std::vector<unsigned char>& mine, const std::vector<std::size_t>& counts,
                 std::vector<unsigned char>& all) const override {
    std::vector<int> cnt(static_cast<std::size_t>(size_)), displ(static_cast<std::size_t>(size_));
    std::size_t total = 0;
    for (int r = 0; r < size_; ++r) {
      if (counts[std::size_t(r)] > std::size_t(INT_MAX) || total > std::size_t(INT_MAX))
        fail("expert parallelism: one MoE layer exchanges more than 2 GiB; run the prompt in chunks (--chunk)");
      cnt[std::size_t(r)] = int(counts[std::size_t(r)]);
      displ[std::size_t(r)] = int(total);
      total += counts[std::size_t(r)];
    }
    if (mine.size() != counts[std::size_t(rank_)])
      fail("expert parallelism: rank ", rank_, " computed ", mine.size(), " bytes of expert outputs, expected ",
           counts[std::size_t(rank_)]);
    all.resize(total);
    MPI_Allgatherv(mine.data(), cnt[std::size_t(rank_)], MPI_BYTE, all.data(), cnt.data(), displ.data(), MPI_BYTE,
                   comm_);
    bytes_sent += mine.size() * std::size_t(size_ - 1);
    bytes_received += total - mine.size();
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

// FNV-1a over a file's bytes (0 if absent): what every rank must agree on.
inline uint64_t fnv1a_file(const std::string& path, uint64_t h = 1469598103934665603ull) {
  std::ifstream f(path, std::ios::binary);
  char buf[65536];
  while (f) {
    f.read(buf, sizeof buf);
    const std::streamsize got = f.gcount();
    if (got <= 0) break;
    for (std::streamsize i = 0; i < got; ++i) h = (h ^ uint64_t(static_cast<unsigned char>(buf[i]))) * 1099511628211ull;
  }
  return h;
}

// Fails on every rank, naming the first rank that differs from rank 0, when
// the ranks run different binaries or checkpoints (config.json and the shard
// index are compared by checksum).
inline void check_ranks_agree(const std::string& model_dir, MPI_Comm comm = MPI_COMM_WORLD) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const uint64_t mine[2] = {fnv1a_file("/proc/self/exe"),
                            fnv1a_file(model_dir + "/model.safetensors.index.json", fnv1a_file(model_dir + "/config.json"))};
  std::vector<uint64_t> all(std::size_t(2 * size));
  MPI_Allgather(mine, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, comm);
  for (int r = 1; r < size; ++r) {
    if (all[std::size_t(2 * r)] != all[0])
      fail("rank ", r, " runs another dsv3 binary than rank 0 (every rank must run the same build)");
    if (all[std::size_t(2 * r + 1)] != all[1])
      fail("rank ", r, " sees another checkpoint than rank 0 in '", model_dir,
           "' (config.json / model.safetensors.index.json differ)");
  }
}

}  // namespace dsv3
