"""Permutohedral-lattice Gaussian filtering as sparse matrices, for the dense CRF.

The dense CRF's bilateral kernel couples every pixel with every other one; the
permutohedral lattice (Adams, Baek & Davis 2010, as used by Krähenbühl &
Koltun's densecrf) makes it linear in the number of pixels: splat each point
onto the d+1 vertices of its enclosing simplex, blur along the d+1 lattice
axes with a [1/2, 1, 1/2] kernel, slice back with the same barycentric weights.

Everything that depends only on the image (vertices, barycentric weights,
blur neighbours) is computed once per frame here, with vectorised numpy, as
sparse CSR matrices and index arrays; each mean-field iteration is then two
sparse-dense products and a few gathers, with torch on the CPU or the GPU.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Csr:
    """A sparse matrix in CSR form (numpy arrays), converted to torch where it is used."""

    crow: np.ndarray  # rows + 1 offsets (int32 or int64, same as col)
    col: np.ndarray  # nnz column indices
    val: np.ndarray  # float32, nnz
    shape: tuple[int, int]

    def to_torch(self, device):
        # Once per process: "sparse CSR support is in beta" (tested here).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.from_numpy(self.crow),
                torch.from_numpy(self.col),
                torch.from_numpy(self.val),
                size=self.shape,
                device=device,
                check_invariants=False,
            )


@dataclass(frozen=True)
class LatticeFilter:
    """K = slice · blur_d ··· blur_0 · splat, as sparse matrices and neighbour indices.

    blur_j(V)[i] = V[i] + (V[n1] + V[n2]) / 2 over vertex i's two neighbours along lattice axis j
    (index num_vertices where there is none).
    """

    splat: Csr  # vertices × points
    neighbours: np.ndarray  # (d+1) × 2 × vertices, int64
    slice: Csr  # points × vertices
    num_vertices: int


def sort_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (order, codes[order]) for a stable sort of int64 codes >= 0.

    Packs the index into the low bits and sorts once when the codes leave room for it (about 3x
    faster than a stable argsort here).
    """
    index_bits = max(1, int(codes.size - 1).bit_length())
    if int(codes.max()) < 2 ** (62 - index_bits):
        packed = np.sort((codes << index_bits) | np.arange(codes.size, dtype=np.int64))
        return packed & ((1 << index_bits) - 1), packed >> index_bits
    order = np.argsort(codes, kind="stable")
    return order, codes[order]


def _elevate(features: np.ndarray) -> np.ndarray:
    """Lift d×N features to (d+1)×N coordinates in the hyperplane sum(x) = 0.

    Scaled so the lattice blur approximates a unit-variance Gaussian (Adams et al., densecrf):
    e[0] = sum_k s_k f_k, e[j] = sum_{k>=j} s_k f_k - j s_{j-1} f_{j-1}.
    """
    d = features.shape[0]
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    scale = np.array([inv_std / math.sqrt((k + 2) * (k + 1)) for k in range(d)], np.float32)
    scaled = features.astype(np.float32) * scale[:, None]
    elevated = np.zeros((d + 1, features.shape[1]), np.float32)
    np.cumsum(
        scaled[::-1], axis=0, out=elevated[d - 1 :: -1]
    )  # elevated[j] = sum_{k>=j} scaled[k], j < d
    elevated[1:] -= np.arange(1, d + 1, dtype=np.float32)[:, None] * scaled
    return elevated


def build_lattice_filter(features: np.ndarray, sorted_columns: bool = False) -> LatticeFilter:
    """Build the lattice for N points with d×N `features`.

    Each row is one dimension, already divided by the kernel's standard deviation along it.

    sorted_columns=True sorts the column indices inside each row of the slice matrix
    (cuSPARSE assumes sorted CSR; MKL on the CPU does not need it).
    """
    d, num_points = features.shape
    if num_points == 0:
        raise ValueError("the lattice needs at least one point")
    d1 = d + 1
    points = np.arange(num_points)
    elevated = _elevate(features)

    # Closest remainder-0 lattice point (in units of d+1) and the simplex around the point:
    # rank[i] = how many coordinates of elevated - rem0 exceed coordinate i
    # (ties: lower index first).
    rem0 = np.rint(elevated * np.float32(1.0 / d1))
    diff = elevated - d1 * rem0
    rank = np.zeros((d1, num_points), np.int8)
    for i in range(d):
        for j in range(i + 1, d1):
            smaller = diff[i] < diff[j]
            rank[i] += smaller
            rank[j] += ~smaller
    rank += rem0.sum(axis=0).astype(
        np.int8
    )  # |sum| <= d+1: the point is brought back to the plane
    wrap = (rank < 0).view(np.int8) - (rank > d).view(np.int8)
    rank += np.int8(d1) * wrap
    rem0 += wrap

    # Barycentric weights: with the offsets sorted ascending into u,
    # w[k] = u[k] - u[k-1], w[0] = 1 + u[0] - u[d].
    offsets = (elevated - d1 * rem0) * np.float32(1.0 / d1)
    ordered = np.empty((d1, num_points), np.float32)
    np.put(ordered, (d - rank).astype(np.intp) * num_points + points, offsets)
    weights = np.empty((num_points, d1), np.float32)  # point-major
    weights[:, 1:] = (ordered[1:] - ordered[:-1]).T
    weights[:, 0] = 1.0 + ordered[0] - ordered[d]

    # Vertex keys as mixed-radix integers. Vertex r of a simplex is rem0 + c(r) with c_i(r) = r
    # where rank_i <= d - r, else r - (d+1), so
    # code(r) = code(r-1) + sum(mult) - (d+1) * mult[i: rank_i = d+1-r].
    # The digit ranges leave room for the blur's neighbours (offset up to d) so codes never alias.
    keys = rem0[:d].astype(np.int64)
    low, high = keys.min(axis=1), keys.max(axis=1)
    key_min = d1 * low - 2 * d
    span = d1 * (high - low) + 4 * d + 1
    if math.prod(int(s) for s in span) >= 2**62:
        raise ValueError(
            "the feature range is too large for the lattice "
            "(kernel widths too small for the image)"
        )
    mult = np.ones(d, np.int64)
    for j in range(d - 2, -1, -1):
        mult[j] = mult[j + 1] * span[j + 1]
    digit = np.zeros((d1, num_points), np.int64)  # digit[k] = mult of the coordinate with rank k
    np.put(digit, rank[:d].astype(np.intp) * num_points + points, np.repeat(mult, num_points))
    codes = np.empty((num_points, d1), np.int64)  # point-major: entry e = point * (d+1) + r
    code = (((d1 * keys) - key_min[:, None]) * mult[:, None]).sum(axis=0)
    codes[:, 0] = code
    for r in range(1, d1):
        code += int(mult.sum())
        code -= d1 * digit[d1 - r]
        codes[:, r] = code
    codes = codes.ravel()

    # Sort the entries by vertex code (ties by entry): numbers the vertices, gives the splat rows.
    num_entries = codes.size
    order, sorted_codes = sort_codes(codes)
    first = np.empty(num_entries, bool)
    first[0] = True
    np.not_equal(sorted_codes[1:], sorted_codes[:-1], out=first[1:])
    vertex_of_sorted = np.cumsum(first) - 1
    unique_codes = sorted_codes[first]
    num_vertices = unique_codes.size
    vertex = np.empty(num_entries, np.int64)
    vertex[order] = vertex_of_sorted
    flat_weights = weights.ravel()

    splat = Csr(
        np.append(np.flatnonzero(first), num_entries).astype(np.int64),
        order // d1,
        flat_weights[order],
        (num_vertices, num_points),
    )
    slice_col, slice_val = vertex, flat_weights
    if sorted_columns:
        by_vertex = np.argsort(vertex.reshape(num_points, d1), axis=1)
        rows = np.arange(num_points)[:, None]
        slice_col = vertex.reshape(num_points, d1)[rows, by_vertex].ravel()
        slice_val = flat_weights.reshape(num_points, d1)[rows, by_vertex].ravel()
    slice_ = Csr(
        np.arange(0, num_entries + 1, d1, dtype=np.int64),
        slice_col,
        slice_val,
        (num_points, num_vertices),
    )

    # Blur along each lattice axis j: the neighbours differ by -1 in every coordinate but j (+d).
    neighbours = np.empty((d1, 2, num_vertices), np.int64)
    for j in range(d1):
        step = -int(mult.sum()) + (d1 * int(mult[j]) if j < d else 0)
        for side, neighbour_codes in enumerate((unique_codes - step, unique_codes + step)):
            pos = np.minimum(np.searchsorted(unique_codes, neighbour_codes), num_vertices - 1)
            neighbours[j, side] = np.where(unique_codes[pos] == neighbour_codes, pos, num_vertices)
    return LatticeFilter(splat, neighbours, slice_, num_vertices)


class LatticeKernel:
    """A LatticeFilter on one torch device: ``filter(values)`` = K · values, unnormalised."""

    def __init__(self, lattice: LatticeFilter, device):
        self.splat = lattice.splat.to_torch(device)
        self.slice = lattice.slice.to_torch(device)
        self.neighbours = torch.from_numpy(lattice.neighbours).to(device)

    def filter(self, values):
        """Permutohedral filtering of points × channels values."""
        vertices = self.splat @ values
        num_vertices = vertices.shape[0]
        # One extra row stands for "no neighbour".
        padded = torch.cat([vertices, vertices.new_zeros(1, vertices.shape[1])])
        for lower, upper in self.neighbours:
            neighbours = padded.index_select(0, lower)
            neighbours += padded.index_select(0, upper)
            neighbours *= 0.5
            padded[:num_vertices] += neighbours
        return self.slice @ padded[:num_vertices]
