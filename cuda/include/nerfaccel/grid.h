// grid family math: ray / box geometry (geometry.h) and the occupancy-grid traversal (traverse.h: the march in the
// rays' own precision, float32 for float32 rays, with empty-cell skipping; the old float64 traversal is gone).
//
// Written once for the host and the device (NA_HD). Semantics follow the pure-PyTorch reference in
// nerfaccel_plugin/_torch_impl.py, which is the source of truth (docs/traversal.md: how far float32 may differ).
#pragma once

#include "common.h"
#include "geometry.h"
#include "traverse.h"
