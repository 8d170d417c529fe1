"""Numba kernels for ACSF values and analytic gradients (private).

The wrapper in :mod:`kernelpot.descriptors.acsf` validates every input; these
functions take plain typed arrays, write into preallocated outputs and raise
nothing. Feature order and formulas follow DScribe's ``ACSF`` exactly:

* per neighbour species ``s`` (sorted atomic numbers), a block of
  ``1 + n_g2 + n_g3`` radial features ``[G1, G2..., G3...]``;
* then per unordered species pair ``(s, t)``, ``s >= t``, at index
  ``s (s + 1) / 2 + t``, a block ``[G4..., G5...]``.

With the cosine cutoff ``fc(r) = (cos(π r / r_c) + 1) / 2`` for ``r < r_c``:

* ``G1 = Σ_j fc(r_ij)``
* ``G2 = Σ_j exp(-η (r_ij - R_s)²) fc(r_ij)``
* ``G3 = Σ_j cos(κ r_ij) fc(r_ij)``
* ``G4 = 2^(1-ζ) Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(-η (r_ij² + r_ik² + r_jk²))
  fc(r_ij) fc(r_ik) fc(r_jk)``
* ``G5`` as ``G4`` without the ``r_jk`` terms.
"""

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _cosine_cutoff(r, r_cut):
    """Return ``fc(r)`` and ``dfc/dr``."""
    if r >= r_cut:
        return 0.0, 0.0
    x = np.pi * r / r_cut
    return 0.5 * (np.cos(x) + 1.0), -0.5 * np.pi / r_cut * np.sin(x)


@njit(cache=True, inline="always")
def _power(x, exponent):
    """Return ``x ** exponent`` for ``x >= 0``, by squaring for small integer exponents."""
    n = int(exponent)
    if n == exponent and 0 <= n <= 64:
        result = 1.0
        while n > 0:
            if n & 1:
                result *= x
            x *= x
            n >>= 1
        return result
    return x ** exponent


@njit(cache=True, inline="always")
def _add_radial(features, gradients, i, p_i, p_j, f, value, dvalue, ux, uy, uz):
    """Add ``value`` of one pair term and its derivative along ``u = (r_j - r_i)/r``."""
    features[i, f] += value
    gx = dvalue * ux
    gy = dvalue * uy
    gz = dvalue * uz
    gradients[p_j, 0, f] += gx
    gradients[p_j, 1, f] += gy
    gradients[p_j, 2, f] += gz
    gradients[p_i, 0, f] -= gx
    gradients[p_i, 1, f] -= gy
    gradients[p_i, 2, f] -= gz


# complexity: one loop nest per function family (radial G1-G3, angular G4/G5) in one
# compiled pass over the neighbour list; splitting it adds calls in the innermost loops
# long: one compiled pass; radial and angular blocks share each atom's neighbour slice
@njit(cache=True)
def acsf_compute(  # noqa: C901
        species_index: np.ndarray, starts: np.ndarray, neighbor_j: np.ndarray,
        vectors: np.ndarray, distances: np.ndarray, neighbor_pair: np.ndarray,
        self_pair: np.ndarray, n_species: int, r_cut: float, g2_params: np.ndarray,
        g3_params: np.ndarray, g4_params: np.ndarray, g5_params: np.ndarray,
        features: np.ndarray, gradients: np.ndarray) -> None:
    """Accumulate ACSF features and their gradients for every atom.

    Parameters
    ----------
    species_index : int64 (n_atoms,)
        Position of each atom's element in the sorted species list.
    starts : int64 (n_atoms + 1,)
        Neighbours of atom ``i`` are rows ``starts[i]:starts[i + 1]``.
    neighbor_j : int64 (n_neighbors,)
        Folded neighbour indices.
    vectors : float64 (n_neighbors, 3)
        ``r_j - r_i`` (image positions) in Å.
    distances : float64 (n_neighbors,)
        Norms of ``vectors`` in Å.
    neighbor_pair : int64 (n_neighbors,)
        Gradient row of pair ``(i, j)`` for each neighbour entry.
    self_pair : int64 (n_atoms,)
        Gradient row of ``(i, i)``.
    n_species : int
        Number of elements of the descriptor.
    r_cut : float
        Cutoff radius in Å.
    g2_params : float64 (n_g2, 2) of (η, R_s)
        Radial G2 parameters, η in Å⁻², R_s in Å.
    g3_params : float64 (n_g3,) of κ
        Radial G3 frequencies in Å⁻¹.
    g4_params, g5_params : float64 (n, 3) of (η, ζ, λ)
        Angular parameters, η in Å⁻², ζ >= 1, λ in [-1, 1].
    features : float64 (n_atoms, n_features), zero on entry
        Features, accumulated into in place.
    gradients : float64 (n_pairs, 3, n_features), zero on entry
        ``∂features[i]/∂r_j`` per pair row, accumulated into in place.
    """
    n_atoms = starts.shape[0] - 1
    n_g2 = g2_params.shape[0]
    n_g3 = g3_params.shape[0]
    n_g4 = g4_params.shape[0]
    n_g5 = g5_params.shape[0]
    radial_block = 1 + n_g2 + n_g3
    norm4 = np.empty(n_g4)
    for q in range(n_g4):
        norm4[q] = 2.0 ** (1.0 - g4_params[q, 1])
    norm5 = np.empty(n_g5)
    for q in range(n_g5):
        norm5[q] = 2.0 ** (1.0 - g5_params[q, 1])
    angular_start = n_species * radial_block
    angular_block = n_g4 + n_g5
    for i in range(n_atoms):
        p_i = self_pair[i]
        first = starts[i]
        last = starts[i + 1]
        # ---- radial terms: G1, G2, G3 ------------------------------------------
        for a in range(first, last):
            r = distances[a]
            if r >= r_cut or r == 0.0:
                continue
            ux = vectors[a, 0] / r
            uy = vectors[a, 1] / r
            uz = vectors[a, 2] / r
            fc, dfc = _cosine_cutoff(r, r_cut)
            p_j = neighbor_pair[a]
            f = species_index[neighbor_j[a]] * radial_block
            _add_radial(features, gradients, i, p_i, p_j, f, fc, dfc, ux, uy, uz)
            f += 1
            for q in range(n_g2):
                eta = g2_params[q, 0]
                shift = r - g2_params[q, 1]
                gauss = np.exp(-eta * shift * shift)
                _add_radial(features, gradients, i, p_i, p_j, f, gauss * fc,
                            gauss * (dfc - 2.0 * eta * shift * fc), ux, uy, uz)
                f += 1
            for q in range(n_g3):
                kappa = g3_params[q]
                c = np.cos(kappa * r)
                _add_radial(features, gradients, i, p_i, p_j, f, c * fc,
                            c * dfc - kappa * np.sin(kappa * r) * fc, ux, uy, uz)
                f += 1
        if angular_block == 0:
            continue
        # ---- angular terms: G4, G5 over unordered neighbour pairs ----------------
        for a in range(first, last):
            ra = distances[a]
            if ra >= r_cut or ra == 0.0:
                continue
            fa, dfa = _cosine_cutoff(ra, r_cut)
            sa = species_index[neighbor_j[a]]
            p_a = neighbor_pair[a]
            uax = vectors[a, 0]
            uay = vectors[a, 1]
            uaz = vectors[a, 2]
            for b in range(a + 1, last):
                rb = distances[b]
                if rb >= r_cut or rb == 0.0:
                    continue
                fb, dfb = _cosine_cutoff(rb, r_cut)
                sb = species_index[neighbor_j[b]]
                p_b = neighbor_pair[b]
                vbx = vectors[b, 0]
                vby = vectors[b, 1]
                vbz = vectors[b, 2]
                wx = vbx - uax
                wy = vby - uay
                wz = vbz - uaz
                rw = np.sqrt(wx * wx + wy * wy + wz * wz)
                rab = ra * rb
                cos_t = (uax * vbx + uay * vby + uaz * vbz) / rab
                # d cos / d u and d cos / d v
                dcu_x = vbx / rab - cos_t * uax / (ra * ra)
                dcu_y = vby / rab - cos_t * uay / (ra * ra)
                dcu_z = vbz / rab - cos_t * uaz / (ra * ra)
                dcv_x = uax / rab - cos_t * vbx / (rb * rb)
                dcv_y = uay / rab - cos_t * vby / (rb * rb)
                dcv_z = uaz / rab - cos_t * vbz / (rb * rb)
                if sa >= sb:
                    pair_index = sa * (sa + 1) // 2 + sb
                else:
                    pair_index = sb * (sb + 1) // 2 + sa
                f0 = angular_start + pair_index * angular_block
                if rw < r_cut and rw > 0.0:
                    fw, dfw = _cosine_cutoff(rw, r_cut)
                    for q in range(n_g4):
                        _add_angular(features, gradients, i, p_i, p_a, p_b, f0 + q,
                                     g4_params[q, 0], g4_params[q, 1], g4_params[q, 2],
                                     norm4[q],
                                     cos_t, ra, rb, rw, fa, dfa, fb, dfb, fw, dfw, True,
                                     uax, uay, uaz, vbx, vby, vbz, wx, wy, wz,
                                     dcu_x, dcu_y, dcu_z, dcv_x, dcv_y, dcv_z)
                for q in range(n_g5):
                    _add_angular(features, gradients, i, p_i, p_a, p_b, f0 + n_g4 + q,
                                 g5_params[q, 0], g5_params[q, 1], g5_params[q, 2],
                                 norm5[q],
                                 cos_t, ra, rb, 1.0, fa, dfa, fb, dfb, 1.0, 0.0, False,
                                 uax, uay, uaz, vbx, vby, vbz, wx, wy, wz,
                                 dcu_x, dcu_y, dcu_z, dcv_x, dcv_y, dcv_z)


@njit(cache=True)
def _add_angular(features, gradients, i, p_i, p_a, p_b, f, eta, zeta, lam, norm, cos_t,
                 ra, rb, rw, fa, dfa, fb, dfb, fw, dfw, with_jk,
                 ux, uy, uz, vx, vy, vz, wx, wy, wz,
                 dcu_x, dcu_y, dcu_z, dcv_x, dcv_y, dcv_z):
    """Add one G4 (``with_jk``) or G5 triplet term and its gradients.

    ``u = r_j - r_i``, ``v = r_k - r_i``, ``w = v - u = r_k - r_j``;
    ``norm = 2^(1-ζ)``.
    """
    base = 1.0 + lam * cos_t
    if base < 0.0:  # round-off below zero at cos θ = ∓1
        base = 0.0
    power = _power(base, zeta - 1.0)  # base^(ζ-1)
    angular = norm * power * base
    dangular = norm * zeta * lam * power
    if with_jk:
        gauss = np.exp(-eta * (ra * ra + rb * rb + rw * rw))
        radial = gauss * fa * fb * fw
        d_ra = gauss * fb * fw * (dfa - 2.0 * eta * ra * fa)
        d_rb = gauss * fa * fw * (dfb - 2.0 * eta * rb * fb)
        d_rw = gauss * fa * fb * (dfw - 2.0 * eta * rw * fw) / rw
    else:
        gauss = np.exp(-eta * (ra * ra + rb * rb))
        radial = gauss * fa * fb
        d_ra = gauss * fb * (dfa - 2.0 * eta * ra * fa)
        d_rb = gauss * fa * (dfb - 2.0 * eta * rb * fb)
        d_rw = 0.0
    features[i, f] += angular * radial
    c_cos = dangular * radial
    c_a = angular * d_ra / ra
    c_b = angular * d_rb / rb
    c_w = angular * d_rw
    gu_x = c_cos * dcu_x + c_a * ux - c_w * wx
    gu_y = c_cos * dcu_y + c_a * uy - c_w * wy
    gu_z = c_cos * dcu_z + c_a * uz - c_w * wz
    gv_x = c_cos * dcv_x + c_b * vx + c_w * wx
    gv_y = c_cos * dcv_y + c_b * vy + c_w * wy
    gv_z = c_cos * dcv_z + c_b * vz + c_w * wz
    gradients[p_a, 0, f] += gu_x
    gradients[p_a, 1, f] += gu_y
    gradients[p_a, 2, f] += gu_z
    gradients[p_b, 0, f] += gv_x
    gradients[p_b, 1, f] += gv_y
    gradients[p_b, 2, f] += gv_z
    gradients[p_i, 0, f] -= gu_x + gv_x
    gradients[p_i, 1, f] -= gu_y + gv_y
    gradients[p_i, 2, f] -= gu_z + gv_z
