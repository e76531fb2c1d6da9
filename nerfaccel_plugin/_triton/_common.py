"""Shared pieces of the sample-parallel Triton kernels: layout flags, segmented combines, tile carries.

Decomposition (see docs/triton.md): the samples are cut into tiles of ``BLOCK`` consecutive samples, one program
per tile. Every segmented scan here is a scan of affine maps ``S -> a * S + b`` tagged with a reset flag ``f``
(``f = 1``: a new segment starts at this element, so everything before it is dropped). Sums only use ``b``
(``a = 1``), products only ``a`` (``b = 0``); the backward of products and of ``render_weight_from_alpha`` use both.
Rays that cross a tile edge get the missing prefix from a carry computed in three phases:

1. every tile scans its elements and stores its aggregate (the composed map of its last segment and whether the
   tile holds a reset);
2. one program scans the tile aggregates (again a segmented scan) into an exclusive carry per tile;
3. every tile scans again, composes the carry in front of its elements (up to the tile's first reset) and writes.

With a single tile, phases 1 and 2 are skipped. Backward kernels scan in reverse: a tile is read in descending
order and the tile order of the carry is reversed, so the same machinery serves both directions.

Layouts. ``packed``: rows ``(start, count)`` of ``packed_info`` may leave samples outside every chunk. A pre-pass
over the rays writes ``end = start + count`` at each non-empty chunk's start (``endmark``, zero elsewhere) and the
largest such end per tile; an exclusive running max over the tiles (``tile_end``) then lets every program compute,
for each sample ``i``, ``runmax(i)`` = the largest chunk end among chunks starting at or before ``i``. Chunks do not
overlap, so ``i`` is covered iff ``runmax(i) > i``, starts a chunk iff ``endmark[i] != 0`` and ends one iff
``runmax(i) == i + 1``. A sample outside every chunk is its own segment (head and tail) and its outputs are masked.
``batched``: ``(n_rays, n)`` contiguous, head iff ``i % n == 0``. No host syncs anywhere: sizes come from shapes.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

DEFAULT_BLOCK = int(os.environ.get("NERFACCEL_TRITON_BLOCK", "1024"))
_state = {"block": DEFAULT_BLOCK}


def set_block_size(block: int) -> int:
    """Sets the tile size (a power of two >= 2) of every kernel; returns the previous one (tests use small tiles)."""
    if block < 2 or block & (block - 1):
        raise ValueError(f"block size must be a power of two >= 2, got {block}")
    prev = _state["block"]
    _state["block"] = int(block)
    return prev


def block_size() -> int:
    """The tile size in use."""
    return _state["block"]


def num_warps(block: int) -> int:
    return max(1, min(8, block // 128))


# ---------------------------------------------------------------------------------------------
# Combines
# ---------------------------------------------------------------------------------------------
@triton.jit
def _max_combine(x, y):
    return tl.maximum(x, y)


@triton.jit
def _seg_add(b1, f1, b2, f2):
    return tl.where(f2 != 0, b2, b1 + b2), tl.maximum(f1, f2)


@triton.jit
def _seg_mul(a1, f1, a2, f2):
    return tl.where(f2 != 0, a2, a1 * a2), tl.maximum(f1, f2)


@triton.jit
def _seg_affine(a1, b1, f1, a2, b2, f2):
    # (a2, b2) after (a1, b1): S -> a2 * (a1 * S + b1) + b2
    reset = f2 != 0
    return tl.where(reset, a2, a1 * a2), tl.where(reset, b2, a2 * b1 + b2), tl.maximum(f1, f2)


@triton.jit
def seg_scan(a, b, f, KIND: tl.constexpr):
    """Inclusive segmented scan along axis 0. KIND 0: sums (b), 1: products (a), 2: affine maps (a, b)."""
    if KIND == 0:
        b, f = tl.associative_scan((b, f), 0, _seg_add)
    elif KIND == 1:
        a, f = tl.associative_scan((a, f), 0, _seg_mul)
    else:
        a, b, f = tl.associative_scan((a, b, f), 0, _seg_affine)
    return a, b, f


@triton.jit
def apply_carry(a, b, f, ca, cb, KIND: tl.constexpr):
    """Composes the carry map ``(ca, cb)`` in front of the scanned elements that have seen no reset yet."""
    reset = f != 0
    if KIND == 0:
        b = tl.where(reset, b, cb + b)
    elif KIND == 1:
        a = tl.where(reset, a, ca * a)
    else:
        b = tl.where(reset, b, a * cb + b)
        a = tl.where(reset, a, ca * a)
    return a, b


@triton.jit
def last_of(x, ar, BLOCK: tl.constexpr):
    """The last element of a 1-D tile (exact: every other lane contributes an exact zero)."""
    return tl.sum(tl.where(ar == BLOCK - 1, x, tl.zeros_like(x)), axis=0)


@triton.jit
def store_tile_aggregate(a, b, f, ar, sidx, ta_ptr, tb_ptr, tf_ptr, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """Phase 1: stores the tile's aggregate at scan-order tile index ``sidx``."""
    if KIND != 0:
        tl.store(ta_ptr + sidx, last_of(a, ar, BLOCK))
    if KIND != 1:
        tl.store(tb_ptr + sidx, last_of(b, ar, BLOCK))
    tl.store(tf_ptr + sidx, last_of(f, ar, BLOCK))


@triton.jit
def load_carry(sidx, ca_ptr, cb_ptr, KIND: tl.constexpr):
    if KIND != 0:
        ca = tl.load(ca_ptr + sidx)
    else:
        ca = tl.load(cb_ptr + sidx) * 0 + 1
    if KIND != 1:
        cb = tl.load(cb_ptr + sidx)
    else:
        cb = tl.load(ca_ptr + sidx) * 0
    return ca, cb


@triton.jit
def layout_flags(offs, mask, em_ptr, te_ptr, tile, n_per_row, PACKED: tl.constexpr, REVERSE: tl.constexpr):
    """(covered, head, tail) of the samples ``offs`` of one tile (int1 tensors).

    ``head``/``tail``: the sample starts/ends its segment; samples outside every chunk are both, padding lanes
    (``mask`` false) are both too. ``REVERSE``: ``offs`` runs in descending order within the tile.
    """
    if PACKED:
        em = tl.load(em_ptr + offs, mask=mask, other=0).to(tl.int64)
        rm = tl.associative_scan(em, 0, _max_combine, reverse=REVERSE)
        rm = tl.maximum(rm, tl.load(te_ptr + tile).to(tl.int64))
        covered = (rm > offs) & mask
        head = (em != 0) | (covered == 0)
        tail = (covered == 0) | (rm == offs + 1)
    else:
        pos = offs % n_per_row
        covered = mask
        head = (pos == 0) | (mask == 0)
        tail = (pos == n_per_row - 1) | (mask == 0)
    return covered, head, tail


@triton.jit
def phase_mask(use, reset, ar, PHASE: tl.constexpr):
    """Phase 1 needs only the tile's last segment (in scan order): the elements from its last reset on. Loads of
    the others are masked off, so for rays shorter than a tile phase 1 reads little more than the layout."""
    if PHASE == 1:
        last = tl.max(tl.where(reset, ar, -1), axis=0)
        use = use & (ar >= last)
    return use


@triton.jit
def tile_offsets(tile, BLOCK: tl.constexpr, REVERSE: tl.constexpr):
    ar = tl.arange(0, BLOCK)
    base = tile.to(tl.int64) * BLOCK
    if REVERSE:
        offs = base + (BLOCK - 1 - ar)
    else:
        offs = base + ar
    return ar, offs


# ---------------------------------------------------------------------------------------------
# Layout pre-pass and the tile-carry scan (phase 2)
# ---------------------------------------------------------------------------------------------
@triton.jit
def mark_chunks_kernel(pi_ptr, em_ptr, tm_ptr, R, N, TILE: tl.constexpr, BLOCK_R: tl.constexpr):
    """endmark[start] = start + count for non-empty chunks; tile_max[start // TILE] = max of those ends."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = r < R
    start = tl.load(pi_ptr + 2 * r, mask=m, other=0).to(tl.int64)
    count = tl.load(pi_ptr + 2 * r + 1, mask=m, other=0).to(tl.int64)
    ok = m & (count > 0) & (start >= 0) & (start < N)
    end = tl.minimum(start + count, N)
    safe = tl.where(ok, start, 0)
    tl.store(em_ptr + safe, end.to(em_ptr.dtype.element_ty), mask=ok)
    tl.atomic_max(tm_ptr + safe // TILE, end.to(tm_ptr.dtype.element_ty), mask=ok, sem="relaxed")


@triton.jit
def tile_carry_kernel(ta_ptr, tb_ptr, tf_ptr, ca_ptr, cb_ptr, T, KIND: tl.constexpr, BLOCK_T: tl.constexpr):
    """Phase 2 (one program): exclusive segmented scan of the T tile aggregates, in scan order."""
    ar = tl.arange(0, BLOCK_T)
    if KIND != 0:
        run_a = tl.load(ta_ptr) * 0 + 1
        tl.store(ca_ptr, run_a)
    else:
        run_a = tl.load(tb_ptr) * 0 + 1
    if KIND != 1:
        run_b = tl.load(tb_ptr) * 0
        tl.store(cb_ptr, run_b)
    else:
        run_b = tl.load(ta_ptr) * 0
    for start in range(0, T, BLOCK_T):
        offs = start + ar
        m = offs < T
        if KIND != 0:
            a = tl.load(ta_ptr + offs, mask=m, other=1)
        else:
            a = tl.zeros([BLOCK_T], dtype=run_a.dtype) + 1
        if KIND != 1:
            b = tl.load(tb_ptr + offs, mask=m, other=0)
        else:
            b = tl.zeros([BLOCK_T], dtype=run_b.dtype)
        f = tl.load(tf_ptr + offs, mask=m, other=0)
        a, b, f = seg_scan(a, b, f, KIND)
        a, b = apply_carry(a, b, f, run_a, run_b, KIND)
        out = m & (offs + 1 < T)
        if KIND != 0:
            tl.store(ca_ptr + offs + 1, a, mask=out)
            run_a = last_of(a, ar, BLOCK_T)
        if KIND != 1:
            tl.store(cb_ptr + offs + 1, b, mask=out)
            run_b = last_of(b, ar, BLOCK_T)


# ---------------------------------------------------------------------------------------------
# Host helpers
# ---------------------------------------------------------------------------------------------
class Layout:
    """Host-side description of a sample layout for one launch (no device syncs)."""

    def __init__(self, n: int, packed_info: torch.Tensor | None, n_per_row: int, device, block: int):
        self.n = n
        self.block = block
        self.tiles = triton.cdiv(n, block) if n > 0 else 0
        self.packed = packed_info is not None
        self.n_per_row = max(int(n_per_row), 1)
        idx_dtype = torch.int32 if n < 2**31 - 1 else torch.int64
        if self.packed:
            pi = packed_info.contiguous()
            self.endmark = torch.zeros(n, dtype=idx_dtype, device=device)
            tile_max = torch.zeros(self.tiles, dtype=idx_dtype, device=device)
            r = pi.shape[0]
            if r > 0 and n > 0:
                block_r = 256
                mark_chunks_kernel[(triton.cdiv(r, block_r),)](
                    pi, self.endmark, tile_max, r, n, TILE=block, BLOCK_R=block_r
                )
            run = torch.cummax(tile_max, 0).values
            self.tile_end = torch.cat([tile_max.new_zeros(1), run[:-1]])
        else:
            dummy = torch.zeros(1, dtype=idx_dtype, device=device)
            self.endmark = dummy
            self.tile_end = dummy


def tile_buffers(tiles: int, dtype, device):
    """Aggregates and carries of the tiles (phase 1 output, phase 2 output)."""
    ta = torch.empty(tiles, dtype=dtype, device=device)
    tb = torch.empty(tiles, dtype=dtype, device=device)
    tf = torch.empty(tiles, dtype=torch.int32, device=device)
    ca = torch.empty(tiles, dtype=dtype, device=device)
    cb = torch.empty(tiles, dtype=dtype, device=device)
    return ta, tb, tf, ca, cb


def run_three_phase(launch, tiles: int, dtype, device, kind: int) -> None:
    """Runs ``launch(phase, ta, tb, tf, ca, cb)`` as phases 1 and 3 around the tile-carry scan (or phase 3 alone
    with no carry for a single tile)."""
    if tiles == 0:
        return
    ta, tb, tf, ca, cb = tile_buffers(tiles, dtype, device)
    if tiles == 1:
        launch(3, False, ta, tb, tf, ca, cb)
        return
    launch(1, False, ta, tb, tf, ca, cb)
    tile_carry_kernel[(1,)](ta, tb, tf, ca, cb, tiles, KIND=kind, BLOCK_T=1024, num_warps=4)
    launch(3, True, ta, tb, tf, ca, cb)
