"""Numba kernels for DScribe's GTO SOAP power spectrum and its analytic gradients (private).

The wrapper in :mod:`kernelpot.descriptors.soap` validates every input and builds the
tables these functions take; they write into preallocated outputs and raise nothing.

The features are those of DScribe's ``SOAP(rbf="gto")`` (same basis, same
normalisation, same order), derived here in closed form:

* every atom ``j`` within ``r_cut + padding`` of the centre (the centre included)
  carries an unnormalised Gaussian ``exp(-|r - r_j|² / 2σ²)``;
* the radial basis of degree ``l`` is ``g_nl(r) = Σ_k β_lnk r^l exp(-α_lk r²)``
  (DScribe's ``get_basis_gto``: Löwdin-orthonormalised GTOs);
* projecting the Gaussian of a neighbour at ``v`` (``|v| = r``) on ``g_nl Y_lm`` gives,
  with the plane-wave expansion and ``∫ r^{l+2} e^{-a r²} i_l(b r) dr =
  √π / (4 a^{3/2}) (b / 2a)^l e^{b² / 4a}``,
  ``c_nlm = Σ_k B_lnk exp(-E_lk r²) · r^l Y_lm(v̂)`` with
  ``E_lk = α_lk / (1 + 2σ² α_lk)`` and
  ``B_lnk = β_lnk π^{3/2} (2σ²)^{3/2} (1 + 2σ² α_lk)^{-(l + 3/2)}``;
  ``r^l Y_lm`` are the real regular solid harmonics (orthonormal ``Y_lm``);
* the power spectrum is ``p(Z₁ n₁, Z₂ n₂, l) = π √(8 / (2l + 1)) Σ_m c^{Z₁}_{n₁lm}
  c^{Z₂}_{n₂lm}``, for ``Z₁ ≤ Z₂`` (sorted atomic numbers) and, within one element,
  ``n₁ ≤ n₂``; the column layout is given by the caller's feature tables.

Gradients are analytic: for a neighbour vector ``v`` of element ``s``,
``∂c^s_nlm/∂v = 2 v G'_ln(r²) S_lm + G_ln ∇S_lm`` and ``∂p/∂v`` contracts it with the
centre's coefficients through ``T = Σ_m S_lm c_nlm`` and ``U = Σ_m ∇S_lm c_nlm``, so
each neighbour costs ``O(features)``, not ``O(features × (2l + 1))``.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True)
def solid_harmonics(v, l_max, values, gradients):
    """Real regular solid harmonics ``r^l Y_lm(v̂)`` and their gradients at ``v``.

    Parameters
    ----------
    v : float64 (3,)
    l_max : int
    values : float64 ((l_max + 1)²,)
        Written: index ``l² + l + m`` for ``m = -l..l`` (``m < 0``: the sine terms).
    gradients : float64 (3, (l_max + 1)²)
        Written: ``∂/∂v`` of each value.
    """
    x, y, z = v[0], v[1], v[2]
    rho = x * x + y * y + z * z
    # (x + i y)^m and its x, y derivatives: d/dx = m (x+iy)^{m-1}, d/dy = i m (x+iy)^{m-1}
    re = np.empty(l_max + 1)
    im = np.empty(l_max + 1)
    re[0], im[0] = 1.0, 0.0
    for m in range(1, l_max + 1):
        re[m] = re[m - 1] * x - im[m - 1] * y
        im[m] = re[m - 1] * y + im[m - 1] * x
    q = np.empty(l_max + 1)  # Q_l^m(z, ρ) = r^{l-m} P_l^{(m)}(z / r)
    dq_z = np.empty(l_max + 1)
    dq_rho = np.empty(l_max + 1)
    double_factorial = 1.0
    for m in range(l_max + 1):
        if m > 0:
            double_factorial *= 2 * m - 1
        q[m], dq_z[m], dq_rho[m] = double_factorial, 0.0, 0.0
        if m + 1 <= l_max:
            q[m + 1] = (2 * m + 1) * double_factorial * z
            dq_z[m + 1] = (2 * m + 1) * double_factorial
            dq_rho[m + 1] = 0.0
        for ell in range(m + 2, l_max + 1):
            a, b = 2 * ell - 1, ell + m - 1
            q[ell] = (a * z * q[ell - 1] - b * rho * q[ell - 2]) / (ell - m)
            dq_z[ell] = (a * (q[ell - 1] + z * dq_z[ell - 1])
                         - b * rho * dq_z[ell - 2]) / (ell - m)
            dq_rho[ell] = (a * z * dq_rho[ell - 1]
                           - b * (q[ell - 2] + rho * dq_rho[ell - 2])) / (ell - m)
        # normalisation sqrt((2l+1)/4π (l-m)!/(l+m)!), √2 for m ≠ 0
        for ell in range(m, l_max + 1):
            ratio = 1.0
            for k in range(ell - m + 1, ell + m + 1):
                ratio /= k
            norm = np.sqrt((2 * ell + 1) / (4 * np.pi) * ratio)
            gx = 2 * x * dq_rho[ell]
            gy = 2 * y * dq_rho[ell]
            gz = dq_z[ell] + 2 * z * dq_rho[ell]
            if m == 0:
                k0 = ell * ell + ell
                values[k0] = norm * q[ell]
                gradients[0, k0] = norm * gx
                gradients[1, k0] = norm * gy
                gradients[2, k0] = norm * gz
            else:
                norm *= np.sqrt(2.0)
                kc = ell * ell + ell + m
                ks = ell * ell + ell - m
                dre_x, dre_y = m * re[m - 1], -m * im[m - 1]
                dim_x, dim_y = m * im[m - 1], m * re[m - 1]
                values[kc] = norm * q[ell] * re[m]
                values[ks] = norm * q[ell] * im[m]
                gradients[0, kc] = norm * (gx * re[m] + q[ell] * dre_x)
                gradients[1, kc] = norm * (gy * re[m] + q[ell] * dre_y)
                gradients[2, kc] = norm * gz * re[m]
                gradients[0, ks] = norm * (gx * im[m] + q[ell] * dim_x)
                gradients[1, ks] = norm * (gy * im[m] + q[ell] * dim_y)
                gradients[2, ks] = norm * gz * im[m]


@njit(cache=True)
def soap_features(vectors, neighbor_species, starts, centre_species, radial_weights,
                  radial_exponents, l_prefactor, feature_table, features):
    """SOAP power spectrum of every centre (no gradients).

    Parameters
    ----------
    vectors : float64 (n_neighbors, 3)
        Neighbour vectors ``r_j - r_i`` (periodic images included, the centre not).
    neighbor_species : int64 (n_neighbors,)
        Species index of each neighbour.
    starts : int64 (n_atoms + 1,)
        Centre ``a``'s neighbours are rows ``starts[a]:starts[a + 1]``.
    centre_species : int64 (n_atoms,)
    radial_weights : float64 (l_max + 1, n_max, n_max)
        ``B_lnk``.
    radial_exponents : float64 (l_max + 1, n_max)
        ``E_lk``.
    l_prefactor : float64 (l_max + 1,)
        ``π √(8 / (2l + 1))``.
    feature_table : int64 (n_features, 5)
        ``(Z₁, Z₂, n₁, n₂, l)`` species indices, radial indices and degree of each
        column.
    features : float64 (n_atoms, n_features)
        Written.
    """
    n_species = 0
    for k in range(feature_table.shape[0]):
        n_species = max(n_species, feature_table[k, 1] + 1)
    l_max = radial_exponents.shape[0] - 1
    n_max = radial_exponents.shape[1]
    n_lm = (l_max + 1) ** 2
    harmonics = np.empty(n_lm)
    harmonic_gradients = np.empty((3, n_lm))
    radial = np.empty((l_max + 1, n_max))
    radial_derivative = np.empty((l_max + 1, n_max))
    for a in range(starts.shape[0] - 1):
        c = _coefficients(vectors, neighbor_species, starts[a], starts[a + 1],
                          centre_species[a], radial_weights, radial_exponents, n_species,
                          harmonics, harmonic_gradients, radial, radial_derivative)
        _power_spectrum(c, l_prefactor, feature_table, features[a])


@njit(cache=True)
def _coefficients(vectors, neighbor_species, begin, end, own_species, radial_weights,
                  radial_exponents, n_species, harmonics, harmonic_gradients, radial,
                  radial_derivative):
    """Expansion coefficients ``c[Z, n, lm]`` of one centre."""
    l_max = radial_exponents.shape[0] - 1
    n_max = radial_exponents.shape[1]
    c = np.zeros((n_species, n_max, (l_max + 1) ** 2))
    _add_centre(c, own_species, radial_weights)
    for e in range(begin, end):
        v = vectors[e]
        solid_harmonics(v, l_max, harmonics, harmonic_gradients)
        _radial(v[0] * v[0] + v[1] * v[1] + v[2] * v[2], radial_weights, radial_exponents,
                radial, radial_derivative)
        _add_neighbor(c, neighbor_species[e], radial, harmonics)
    return c


@njit(cache=True)
def _radial(r2, radial_weights, radial_exponents, values, derivatives):
    """``G_ln(r²) = Σ_k B_lnk exp(-E_lk r²)`` and ``dG/d(r²)``.

    The ``(l_max + 1) n_max`` exponentials are computed once each and shared by every
    ``n`` (they depend on ``l`` and ``k`` only).
    """
    l_max = radial_exponents.shape[0] - 1
    n_max = radial_exponents.shape[1]
    decay = np.empty(n_max)
    for ell in range(l_max + 1):
        for k in range(n_max):
            decay[k] = np.exp(-radial_exponents[ell, k] * r2)
        for n in range(n_max):
            g = 0.0
            dg = 0.0
            for k in range(n_max):
                term = radial_weights[ell, n, k] * decay[k]
                g += term
                dg -= radial_exponents[ell, k] * term
            values[ell, n] = g
            derivatives[ell, n] = dg


@njit(cache=True)
def _power_spectrum(c, l_prefactor, feature_table, out):
    """``out[f] = π √(8/(2l+1)) Σ_m c[Z₁, n₁, lm] c[Z₂, n₂, lm]`` for every column."""
    for f in range(feature_table.shape[0]):
        z1, z2, n1, n2, ell = (feature_table[f, 0], feature_table[f, 1], feature_table[f, 2],
                             feature_table[f, 3], feature_table[f, 4])
        total = 0.0
        for lm in range(ell * ell, (ell + 1) * (ell + 1)):
            total += c[z1, n1, lm] * c[z2, n2, lm]
        out[f] = l_prefactor[ell] * total


@njit(cache=True)
def soap_features_and_gradients(vectors, neighbor_species, starts, centre_species,
                                neighbor_pair, self_pair, radial_weights, radial_exponents,
                                l_prefactor, feature_table, species_features,
                                species_feature_count, features, gradients, strain,
                                with_strain):
    """SOAP power spectrum and its analytic Jacobian (and strain derivatives).

    Parameters
    ----------
    vectors, neighbor_species, starts, centre_species, radial_weights, radial_exponents,
    l_prefactor, feature_table, features
        As for :func:`soap_features`.
    neighbor_pair : int64 (n_neighbors,)
        Row of ``gradients`` (the ``(centre, atom)`` pair) of each neighbour entry.
    self_pair : int64 (n_atoms,)
        Row of ``gradients`` holding ``(a, a)``.
    species_features : int64 (n_species, n_features)
        Per species, the columns whose block involves it (first
        ``species_feature_count[s]`` entries).
    species_feature_count : int64 (n_species,)
    gradients : float64 (n_pairs, 3, n_features)
        Accumulated into (zeros on entry): ``∂ features[i] / ∂ r_j``.
    strain : float64 (n_atoms, 3, 3, n_features)
        Accumulated into when ``with_strain``: ``Σ_k ∂D_i/∂v_k[a] v_k[b]``.
    with_strain : bool
    """
    _gradients_of_centres(0, starts.shape[0] - 1, vectors, neighbor_species, starts,
                          centre_species, neighbor_pair, self_pair, radial_weights,
                          radial_exponents, l_prefactor, feature_table, species_features,
                          species_feature_count, features, gradients, strain, with_strain)


@njit(cache=True, parallel=True)
def soap_features_and_gradients_parallel(vectors, neighbor_species, starts, centre_species,
                                         neighbor_pair, self_pair, radial_weights,
                                         radial_exponents, l_prefactor, feature_table,
                                         species_features, species_feature_count, features,
                                         gradients, strain, with_strain, n_chunks):
    """:func:`soap_features_and_gradients` over ``n_chunks`` ranges of centres in parallel.

    Centres write disjoint rows (their own features, pairs and strain), so the ranges
    need no locking. Call it from the main thread only (numba's default threading layer
    is not safe for concurrent launches).
    """
    n_atoms = starts.shape[0] - 1
    for chunk in prange(n_chunks):
        begin = chunk * n_atoms // n_chunks
        end = (chunk + 1) * n_atoms // n_chunks
        _gradients_of_centres(begin, end, vectors, neighbor_species, starts, centre_species,
                              neighbor_pair, self_pair, radial_weights, radial_exponents,
                              l_prefactor, feature_table, species_features,
                              species_feature_count, features, gradients, strain,
                              with_strain)


@njit(cache=True)
def _gradients_of_centres(first, last, vectors, neighbor_species, starts, centre_species,
                          neighbor_pair, self_pair, radial_weights, radial_exponents,
                          l_prefactor, feature_table, species_features,
                          species_feature_count, features, gradients, strain, with_strain):
    """Features and Jacobian rows of centres ``first..last - 1`` (see the drivers)."""
    n_features = feature_table.shape[0]
    n_species = species_feature_count.shape[0]
    l_max = radial_exponents.shape[0] - 1
    n_max = radial_exponents.shape[1]
    n_lm = (l_max + 1) ** 2
    max_neighbors = 1
    for a in range(first, last):
        max_neighbors = max(max_neighbors, starts[a + 1] - starts[a])
    harmonics = np.empty((max_neighbors, n_lm))
    harmonic_gradients = np.empty((max_neighbors, 3, n_lm))
    radial = np.empty((max_neighbors, l_max + 1, n_max))
    radial_derivative = np.empty((max_neighbors, l_max + 1, n_max))
    T = np.empty((n_species, n_max, l_max + 1))
    U = np.empty((3, n_species, n_max, l_max + 1))
    own = np.empty((3, n_features))
    for a in range(first, last):
        begin, end = starts[a], starts[a + 1]
        c = np.zeros((n_species, n_max, n_lm))
        _add_centre(c, centre_species[a], radial_weights)
        for e in range(begin, end):
            local = e - begin
            v = vectors[e]
            solid_harmonics(v, l_max, harmonics[local], harmonic_gradients[local])
            _radial(v[0] * v[0] + v[1] * v[1] + v[2] * v[2], radial_weights,
                    radial_exponents, radial[local], radial_derivative[local])
            _add_neighbor(c, neighbor_species[e], radial[local], harmonics[local])
        _power_spectrum(c, l_prefactor, feature_table, features[a])
        own[:, :] = 0.0
        for e in range(begin, end):
            local = e - begin
            _contract(c, harmonics[local], harmonic_gradients[local], T, U)
            _neighbor_gradient(vectors[e], neighbor_species[e], radial[local],
                               radial_derivative[local], T, U, l_prefactor, feature_table,
                               species_features, species_feature_count,
                               gradients[neighbor_pair[e]], own, strain, a, with_strain)
        row = self_pair[a]
        for x in range(3):
            for f in range(n_features):
                gradients[row, x, f] += own[x, f]


@njit(cache=True)
def _add_centre(c, own_species, radial_weights):
    """Add the centre's own Gaussian to ``c``: only ``l = 0``, ``Y_00 = 1/√(4π)``."""
    n_max = radial_weights.shape[1]
    y00 = 1.0 / np.sqrt(4 * np.pi)
    for n in range(n_max):
        total = 0.0
        for k in range(n_max):
            total += radial_weights[0, n, k]
        c[own_species, n, 0] += total * y00


@njit(cache=True)
def _add_neighbor(c, s, radial, harmonics):
    """Add one neighbour of species ``s``: ``c[s, n, lm] += G_ln S_lm``."""
    l_max = radial.shape[0] - 1
    n_max = radial.shape[1]
    for ell in range(l_max + 1):
        for n in range(n_max):
            w = radial[ell, n]
            for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                c[s, n, lm] += w * harmonics[lm]


@njit(cache=True)
def _contract(c, harmonics, harmonic_gradients, T, U):
    """``T[Z, n, l] = Σ_m S_lm c[Z, n, lm]`` and ``U[x, Z, n, l] = Σ_m ∂_x S_lm c[Z, n, lm]``."""
    n_species, n_max = c.shape[0], c.shape[1]
    l_max = T.shape[2] - 1
    for z in range(n_species):
        for n in range(n_max):
            for ell in range(l_max + 1):
                t = 0.0
                u0 = 0.0
                u1 = 0.0
                u2 = 0.0
                for lm in range(ell * ell, (ell + 1) * (ell + 1)):
                    cz = c[z, n, lm]
                    t += harmonics[lm] * cz
                    u0 += harmonic_gradients[0, lm] * cz
                    u1 += harmonic_gradients[1, lm] * cz
                    u2 += harmonic_gradients[2, lm] * cz
                T[z, n, ell] = t
                U[0, z, n, ell] = u0
                U[1, z, n, ell] = u1
                U[2, z, n, ell] = u2


@njit(cache=True)
def _neighbor_gradient(v, s, radial, radial_derivative, T, U, l_prefactor, feature_table,
                       species_features, species_feature_count, row, own, strain, a,
                       with_strain):
    """Add one neighbour's ``∂p/∂v`` to its pair's row, the centre's own row and strain.

    ``∂c^s_nlm/∂v = 2 v G'_ln S_lm + G_ln ∇S_lm``, contracted with the centre's
    coefficients through ``T`` and ``U``; only the columns whose block involves ``s``.
    Each column's table entry is read once for its three components.
    """
    v0, v1, v2 = v[0], v[1], v[2]
    for idx in range(species_feature_count[s]):
        f = species_features[s, idx]
        z1, z2 = feature_table[f, 0], feature_table[f, 1]
        n1, n2, ell = feature_table[f, 2], feature_table[f, 3], feature_table[f, 4]
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        if z1 == s:
            d = 2.0 * radial_derivative[ell, n1] * T[z2, n2, ell]
            w = radial[ell, n1]
            g0 += v0 * d + w * U[0, z2, n2, ell]
            g1 += v1 * d + w * U[1, z2, n2, ell]
            g2 += v2 * d + w * U[2, z2, n2, ell]
        if z2 == s:
            d = 2.0 * radial_derivative[ell, n2] * T[z1, n1, ell]
            w = radial[ell, n2]
            g0 += v0 * d + w * U[0, z1, n1, ell]
            g1 += v1 * d + w * U[1, z1, n1, ell]
            g2 += v2 * d + w * U[2, z1, n1, ell]
        prefactor = l_prefactor[ell]
        g0 *= prefactor
        g1 *= prefactor
        g2 *= prefactor
        row[0, f] += g0
        row[1, f] += g1
        row[2, f] += g2
        own[0, f] -= g0
        own[1, f] -= g1
        own[2, f] -= g2
        if with_strain:
            for y in range(3):
                strain[a, 0, y, f] += g0 * v[y]
                strain[a, 1, y, f] += g1 * v[y]
                strain[a, 2, y, f] += g2 * v[y]
