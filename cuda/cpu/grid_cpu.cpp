// CPU launchers of the grid family (entry points: cuda/csrc/grid.cpp).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "nerfaccel/launch.h"
#include "parallel.h"

NA_NAMESPACE_BEGIN

void ray_aabb_intersect_launch(const Tensor& rays_o, const Tensor& rays_d, const Tensor& aabbs, double near_plane,
                               double far_plane, double miss_value, Tensor& t_mins, Tensor& t_maxs, Tensor& hits) {
  const int64_t m = aabbs.size(0);
  AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "ray_aabb_intersect", [&] {
    const scalar_t* o = rays_o.data_ptr<scalar_t>();
    const scalar_t* d = rays_d.data_ptr<scalar_t>();
    const scalar_t* b = aabbs.data_ptr<scalar_t>();
    scalar_t* tmin = t_mins.data_ptr<scalar_t>();
    scalar_t* tmax = t_maxs.data_ptr<scalar_t>();
    bool* hit = hits.data_ptr<bool>();
    parallel_elems(t_mins.numel(), [&](int64_t i) {
      const int64_t r = i / m, j = i % m;
      ray_aabb_pair<scalar_t>(o + 3 * r, d + 3 * r, b + 6 * j, static_cast<scalar_t>(near_plane),
                              static_cast<scalar_t>(far_plane), static_cast<scalar_t>(miss_value), tmin[i], tmax[i],
                              hit[i]);
    });
  });
}

namespace {
// Stages the kept samples of a block of rays as spans [k0, k1) of lattice indices (a run of occupied cells is one
// span; consecutive single samples extend it) and counts the samples of each ray; the samples' t are recomputed
// from k afterwards (the same TravLattice::t the march used, so the same values). The CPU march is single-pass:
// no count pass to disagree with.
template <typename T>
struct StageEmit {
  std::vector<int32_t>* spans;  // k0, k1 pairs
  int32_t count = 0;
  bool open = false;  // the last span is this ray's (created per ray)
  void range(const TravLattice<T>&, int32_t k0, int32_t k1) { add(k0, k1); }
  void operator()(int32_t k, T, T) { add(k, k + 1); }
  void add(int32_t k0, int32_t k1) {
    if (k1 <= k0) return;
    count += k1 - k0;
    if (open && spans->back() == k0) {
      spans->back() = k1;
      return;
    }
    spans->push_back(k0);
    spans->push_back(k1);
    open = true;
  }
};

// The coarse blocks of TravGrid (coarse_block_any per block), in parallel.
std::vector<uint8_t> coarse_blocks(const Tensor& binaries) {
  const int32_t levels = static_cast<int32_t>(binaries.size(0));
  const int32_t res[3] = {static_cast<int32_t>(binaries.size(1)), static_cast<int32_t>(binaries.size(2)),
                          static_cast<int32_t>(binaries.size(3))};
  const int32_t cx = (res[0] + kCoarse - 1) / kCoarse, cy = (res[1] + kCoarse - 1) / kCoarse;
  const int32_t cz = (res[2] + kCoarse - 1) / kCoarse;
  std::vector<uint8_t> coarse(static_cast<size_t>(levels) * cx * cy * cz);
  const bool* b = binaries.data_ptr<bool>();
  parallel_blocks(static_cast<int64_t>(levels) * cx, binaries.numel() > (1 << 20), [&](int64_t li) {
    const int32_t l = static_cast<int32_t>(li / cx), bi = static_cast<int32_t>(li % cx);
    for (int32_t bj = 0; bj < cy; ++bj) {
      for (int32_t bk = 0; bk < cz; ++bk) coarse[(li * cy + bj) * cz + bk] = coarse_block_any(b, res, l, bi, bj, bk);
    }
  });
  return coarse;
}

// The CPU march skips runs (traverse.h: coarse blocks and runs of occupied cells); NERFACCEL_TRAVERSE_RUNS=0 makes
// it march as the CUDA kernel does (every occupied sample looked up, cell-by-cell DDA), so the CPU tests cover that
// configuration of the shared code too.
bool skip_runs() {
  const char* v = std::getenv("NERFACCEL_TRAVERSE_RUNS");
  return v == nullptr || std::string(v) != "0";
}

// The march configuration (skip_runs) and its coarse blocks, built once per call.
struct MarchConfig {
  bool runs;
  std::vector<uint8_t> coarse;
  explicit MarchConfig(const Tensor& binaries)
      : runs(skip_runs()), coarse(runs ? coarse_blocks(binaries) : std::vector<uint8_t>()) {}
};

// Marches ray r (traverse.h) over the call's rays, grid and lattice, with the configuration chosen by skip_runs().
template <typename T>
struct RayMarch {
  bool runs;
  TravGrid<T> grid;
  const T *o, *d, *nearp, *farp;
  T step, cone;

  RayMarch(const MarchConfig& cfg, const Tensor& o_t, const Tensor& d_t, const Tensor& near_planes,
           const Tensor& far_planes, const Tensor& binaries, const Tensor& aabbs, double step_size, double cone_angle)
      : runs(cfg.runs),
        grid{binaries.data_ptr<bool>(), aabbs.data_ptr<T>(), static_cast<int32_t>(binaries.size(0)),
             {static_cast<int32_t>(binaries.size(1)), static_cast<int32_t>(binaries.size(2)),
              static_cast<int32_t>(binaries.size(3))},
             cfg.coarse.empty() ? nullptr : reinterpret_cast<const bool*>(cfg.coarse.data())},
        o(o_t.data_ptr<T>()),
        d(d_t.data_ptr<T>()),
        nearp(near_planes.data_ptr<T>()),
        farp(far_planes.data_ptr<T>()),
        step(static_cast<T>(step_size)),
        cone(static_cast<T>(cone_angle)) {}

  template <typename Emit, typename Stats>
  void operator()(int64_t r, Emit& emit, Stats& stats) const {
    if (runs) {
      traverse_ray<true>(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, step, cone, emit, stats);
    } else {
      traverse_ray<false>(o + 3 * r, d + 3 * r, nearp[r], farp[r], grid, step, cone, emit, stats);
    }
  }
};
}  // namespace

// One march per ray (traverse.h), in the rays' precision, single pass: contiguous blocks of rays each stage their
// samples' lattice indices, then every block writes its samples at its offset (output sorted by ray, then t).
Tensors3 traverse_grids_launch(const Tensor& o_t, const Tensor& d_t, const Tensor& near_planes,
                               const Tensor& far_planes, const Tensor& binaries, const Tensor& aabbs,
                               double step_size, double cone_angle, const at::TensorOptions& out_opts) {
  const int64_t n = o_t.size(0);
  Tensor ray_indices, t_starts, t_ends;
  const MarchConfig cfg(binaries);
  AT_DISPATCH_FLOATING_TYPES(o_t.scalar_type(), "traverse_grids", [&] {
    using T = scalar_t;
    const RayMarch<T> march(cfg, o_t, d_t, near_planes, far_planes, binaries, aabbs, step_size, cone_angle);
    const int64_t n_blocks = std::min<int64_t>(n, static_cast<int64_t>(n_threads()) * 16);
    const int64_t per_block = n_blocks > 0 ? (n + n_blocks - 1) / n_blocks : 0;
    std::vector<std::vector<int32_t>> block_spans(n_blocks);
    std::vector<int32_t> counts(n);
    parallel_blocks(n_blocks, n > 256, [&](int64_t blk) {
      NoStats stats;
      const int64_t r1 = std::min(n, (blk + 1) * per_block);
      for (int64_t r = blk * per_block; r < r1; ++r) {
        StageEmit<T> emit{&block_spans[blk]};
        march(r, emit, stats);
        counts[r] = emit.count;
      }
    });
    std::vector<int64_t> offsets(n_blocks + 1, 0);
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      int64_t c = 0;
      for (int64_t r = blk * per_block, r1 = std::min(n, (blk + 1) * per_block); r < r1; ++r) c += counts[r];
      offsets[blk + 1] = offsets[blk] + c;
    }
    const int64_t total = offsets[n_blocks];
    ray_indices = at::empty({total}, out_opts.dtype(at::kLong));
    t_starts = at::empty({total}, out_opts);
    t_ends = at::empty({total}, out_opts);
    int64_t* ri = ray_indices.data_ptr<int64_t>();
    T* ts = t_starts.data_ptr<T>();
    T* te = t_ends.data_ptr<T>();
    parallel_blocks(n_blocks, total > kParallelGrain, [&](int64_t blk) {
      int64_t pos = offsets[blk];
      const int32_t* span = block_spans[blk].data();
      const int64_t r1 = std::min(n, (blk + 1) * per_block);
      for (int64_t r = blk * per_block; r < r1; ++r) {
        if (counts[r] == 0) continue;
        const TravLattice<T> lat(march.nearp[r], march.step, march.cone);
        for (int64_t left = counts[r]; left > 0; span += 2) {
          T t0 = lat.t(span[0]);
          for (int32_t k = span[0]; k < span[1]; ++k, ++pos) {
            const T t1 = lat.t(k + 1);
            ri[pos] = r;
            ts[pos] = t0;
            te[pos] = t1;
            t0 = t1;
          }
          left -= span[1] - span[0];
        }
      }
    });
  });
  return {ray_indices, t_starts, t_ends};
}

void traverse_grids_visits_launch(const Tensor& o_t, const Tensor& d_t, const Tensor& near_planes,
                                  const Tensor& far_planes, const Tensor& binaries, const Tensor& aabbs,
                                  double step_size, double cone_angle, Tensor& visits) {
  const int64_t n = o_t.size(0);
  int64_t* v = visits.data_ptr<int64_t>();
  const MarchConfig cfg(binaries);
  AT_DISPATCH_FLOATING_TYPES(o_t.scalar_type(), "traverse_grids_visits", [&] {
    using T = scalar_t;
    const RayMarch<T> march(cfg, o_t, d_t, near_planes, far_planes, binaries, aabbs, step_size, cone_angle);
    parallel_rays(n, [&](int64_t r) {
      SlotEmit<T> emit{nullptr, nullptr, nullptr, 0, 0, r, false};  // count only
      VisitStats stats;
      march(r, emit, stats);
      v[r] = stats.visits;
    });
  });
}

void grid_ema_update_launch(const Tensor& occs, const Tensor& cell_ids, const Tensor& values, double ema_decay,
                            Tensor& out) {
  const int64_t k = cell_ids.size(0), c = occs.size(0);
  const int64_t* ids = cell_ids.data_ptr<int64_t>();
  int64_t bad = -1;
  AT_DISPATCH_FLOATING_TYPES(occs.scalar_type(), "grid_ema_update", [&] {
    const scalar_t* o = occs.data_ptr<scalar_t>();
    const scalar_t* v = values.data_ptr<scalar_t>();
    scalar_t* n = out.data_ptr<scalar_t>();
    const scalar_t decay = static_cast<scalar_t>(ema_decay);
    for (int64_t i = 0; i < k; ++i) {  // decay every visible sampled cell once
      const int64_t id = ids[i];
      if (id < 0 || id >= c) {
        bad = i;
        return;
      }
      if (o[id] >= scalar_t(0)) n[id] = o[id] * decay;
    }
    for (int64_t i = 0; i < k; ++i) {  // then a deterministic scatter-max
      const int64_t id = ids[i];
      if (o[id] >= scalar_t(0)) n[id] = nan_max(n[id], v[i]);
    }
  });
  TORCH_CHECK_VALUE(bad < 0, "nerfaccel: cell_ids[", bad, "] = ", bad >= 0 ? ids[bad] : 0, " is outside [0, ", c, ")");
}

NA_NAMESPACE_END
