"""REAP (Reconstruction Error Aware Pruning, Kamma and Wada): remove, one at a time, the channel whose error AFTER re-fitting the consumers is smallest.

Greedy backward elimination over the group's channels: each step removes
argmin_c sum_consumers dE_c, where dE_c is the increase of the ridge objective J
(least_squares) when c is removed and the consumers are re-fitted on the rest. With
inverse-Gram downdates this costs O((nK)^3 K) per layer instead of O(n^5 K^3) for
re-solving every candidate at every step. Then the consumers are rebuilt by ridge least
squares on the kept channels (DataMethod.rebuild), the ridge chosen on held-out batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import linalg as sla

from ..calibration.layer_stats import LayerStats
from .base import DataMethod, register
from .least_squares import (SELECTION_ALPHA, Elimination, Parts, Problem, cholesky, owned_columns, removals, ridge_diag,
                            ridge_lambda, unpack)


@register
class Reap(DataMethod):
    name = "reap"
    summary = "greedy removal by the error after least-squares reconstruction (REAP)"

    def plan(self, problems: Sequence[Problem], n: int, target: int = 1, parts: Parts | None = None) -> Elimination:
        return reap_order(problems, n, alpha=SELECTION_ALPHA, target=target, parts=parts, errors=False)


class _Downdater:
    """One consumer in REAP's fast elimination. With G' = G + lam I', C' = C + lam I' theta0 and S
    the kept columns, H = (G'_SS)^-1 (zero elsewhere) and theta = H C' is the ridge fit on S.

    Removing channel c, with H_cc = L L^T and Z = H_:c L^-T (so Z Z^T = H_:c H_cc^-1 H_c:):
        theta -= Z L^-1 theta_c,    H -= Z Z^T.
    H is never rewritten: it stays H0 - U U^T with U = [Z_1 Z_2 ...]. A step needs only the
    diagonal blocks H_aa (kept up to date in O(n K^3)) and the column block H_:c = H0_:c - U U_c:^T,
    so it reads O(p * removed K) numbers instead of rewriting p^2; H0 - U U^T is symmetric by
    construction. Rows of removed channels are exactly zero in Z and theta.

    With ``copies`` a channel owns copies[c] K-blocks (its rows at every offset it is read at),
    possibly none (a part this consumer does not read, another block of a grouped conv: removing
    it costs nothing here). ``taps`` then lists the columns of each channel it reads (``read``;
    ``local`` maps a channel to its row, -1 if unread), padded to the widest with column p (a
    zero row of theta, an identity row of its H block), so the same batched algebra applies and
    a step costs O(channels read), not O(n), per consumer."""

    def __init__(self, stats: LayerStats, K: int, theta0: np.ndarray, alpha: float, removals: int,
                 copies: np.ndarray | None = None, n: int = 0):
        p = len(stats.gram)
        lam = ridge_diag(p, ridge_lambda(stats, alpha))
        # p x p arrays are the memory of a wide layer (170 MB at ResNet-50's 4,609 columns, two
        # eliminations side by side): at most two besides the Gram at any time
        gram = stats.gram.copy()
        gram.flat[::p + 1] += lam
        factor = cholesky(gram)
        del gram
        # C order, so that each channel's rows of theta are a view (costs)
        self.theta = np.ascontiguousarray(sla.cho_solve(factor, stats.cross + lam[:, None] * theta0))
        # solved in place into a Fortran-order identity; its transpose, a C-order view, is the inverse too
        self.h0 = symmetrized(sla.cho_solve(factor, np.eye(p, order="F"), overwrite_b=True).T)
        del factor
        self.stats, self.theta0, self.lam = stats, theta0, lam[0]
        self.padded = copies is not None
        if not self.padded:
            self.taps = np.arange((p - 1) // K)[:, None] * K + np.arange(K)  # (n, K): columns of each channel
            self.blocks = self.h0[self.taps[:, :, None], self.taps[:, None, :]]  # H_aa (n, K, K)
            width = removals * K
        else:
            self.owned = owned_columns(copies[:n], K)
            sizes = np.array([len(o) for o in self.owned])
            self.read = np.flatnonzero(sizes)
            self.local = np.full(n, -1, dtype=np.intp)
            self.local[self.read] = np.arange(len(self.read))
            self.taps = np.full((len(self.read), max(1, sizes.max(initial=0))), p, dtype=np.intp)  # p: padding
            for a, c in enumerate(self.read):
                self.taps[a, :sizes[c]] = self.owned[c]
            self.real = self.taps < p
            inside = np.minimum(self.taps, p - 1)
            pair = self.real[:, :, None] & self.real[:, None, :]
            eye = np.broadcast_to(np.eye(self.taps.shape[1], dtype=bool), pair.shape)
            self.blocks = np.where(pair, self.h0[inside[:, :, None], inside[:, None, :]], eye.astype(float))
            width = int(np.sort(sizes)[::-1][:removals].sum())
        self.ut = np.zeros((width, p))  # U^T: the rows written so far are one contiguous block
        self.used = 0
        self.gone = np.zeros(p, dtype=bool)
        self.step = np.empty_like(self.theta)  # theta's downdate, one buffer for every step

    def costs(self, remaining: np.ndarray) -> np.ndarray:
        """Increase of J when removing each remaining channel c:
        dE_c = tr(theta_c^T H_cc^-1 theta_c) = tr(H_cc^-1 theta_c theta_c^T), K x K per channel
        (theta_c is K x m: m-wide copies of it cost O(n K m) memory traffic per step)."""
        if self.padded:  # only the channels it reads cost anything here
            rows = self.local[remaining]
            mine = rows >= 0
            out = np.zeros(len(remaining))
            if mine.any():
                body = self._padded(self.theta)[rows[mine]]
                outer = np.matmul(body, body.transpose(0, 2, 1))
                out[mine] = np.einsum("akk->a", np.linalg.solve(self.blocks[rows[mine]], outer))
            return out
        body = self.theta[:-1].reshape(len(self.taps), -1, self.theta.shape[1])  # (n, K, m), a view
        outer = np.matmul(body, body.transpose(0, 2, 1))[remaining]
        return np.einsum("akk->a", np.linalg.solve(self.blocks[remaining], outer))

    def _padded(self, a: np.ndarray) -> np.ndarray:
        """Rows of ``a`` per channel read, (channels read, width, ...), zero at the padding."""
        rows = a[np.minimum(self.taps, len(a) - 1)]
        rows[~self.real] = 0
        return rows

    def remove(self, c: int) -> None:
        """Downdate theta, U and the diagonal blocks for the removal of channel c."""
        idx = self.owned[c] if self.padded else self.taps[c]
        if len(idx) == 0:  # a channel this consumer does not read
            return
        ut = self.ut[:self.used]
        # L^-1 (K x K) multiplies where solve_triangular would pay its overhead on p right-hand sides
        inv = sla.solve_triangular(np.linalg.cholesky(self.blocks[self.local[c] if self.padded else c]
                                                      [:len(idx), :len(idx)]), np.eye(len(idx)), lower=True)
        # H_:c = H0_:c - U U_c:^T, reading U once, contiguously (it is the step's whole cost on a wide layer)
        z = (self.h0[idx].T - ut.T @ ut[:, idx]) @ inv.T
        z[self.gone] = 0
        self.theta -= np.matmul(z, inv @ self.theta[idx], out=self.step)
        self.ut[self.used:self.used + len(idx)] = z.T
        self.used += len(idx)
        zt = self._padded(z) if self.padded else z[self.taps]
        self.blocks -= np.einsum("akj,alj->akl", zt, zt)  # exactly symmetric
        self.gone[idx] = True
        self.theta[idx] = 0

    def error(self) -> float:
        """||Y - Xa theta||^2 = yy - tr(theta^T C) + lam tr(theta^T I'(theta0 - theta)), from the
        normal equations G'_SS theta_S = C'_S (O(p m) instead of O(p^2 m))."""
        stats, theta = self.stats, self.theta
        shrink = _inner(theta[:-1], self.theta0[:-1]) - _inner(theta[:-1], theta[:-1])
        return float(stats.energy - _inner(theta, stats.cross) + self.lam * shrink)


def symmetrized(h: np.ndarray, rows: int = 256) -> np.ndarray:
    """h <- (h + h^T) / 2, in place, ``rows`` rows and columns at a time: the same numbers as the
    expression, without its two p x p temporaries."""
    for i in range(0, len(h), rows):
        j = i + rows
        mean = (h[i:j, i:] + h[i:, i:j].T) / 2
        h[i:j, i:] = mean
        h[i:, i:j] = mean.T
    return h


def _inner(a: np.ndarray, b: np.ndarray) -> float:
    """tr(a^T b) = sum(a * b) without a temporary the size of a (einsum: np.vdot would wake
    BLAS threads, slower than the sum itself on small layers)."""
    return np.einsum("ij,ij->", a, b)


def reap_steps(consumers: Sequence[Problem], n: int, alpha: float | Sequence[float] = 0.0,
               target: int = 1, parts: Parts | None = None,
               errors: bool = True) -> Iterator[tuple[int, float | None, list[np.ndarray]]]:
    """REAP's greedy backward elimination with inverse-Gram downdates. Each step removes
    argmin_c sum_consumers dE_c (dE_c = tr(theta_c^T H_cc^-1 theta_c): the increase of J after
    re-fitting without c) and yields (c, sum of ||Y - Xa theta||^2, the consumers' new thetas;
    these are updated in place by the next step: copy them to keep them).

    alpha: one value or one per consumer. Per consumer: one O((nK)^3) inversion, then
    O(nK * removed K * K) per step, O((nK)^3 K) for the whole elimination (vs O(n^5 K^3) naive).
    The bias is never removed. With ``parts``, a channel is a candidate only while its part has
    removals left. ``errors=False`` yields None for the error (an O(p m) product per consumer
    and step that the order does not need)."""
    alphas = np.broadcast_to(alpha, len(consumers))
    steps = removals(n, target)
    states = [_Downdater(stats, K, theta0, a, steps, copies, n)
              for (stats, K, theta0, copies), a in zip(map(unpack, consumers), alphas)]
    remaining = np.arange(n)
    done = None if parts is None else np.zeros(len(parts.removals), dtype=np.intp)
    for _ in range(steps):
        costs = sum(s.costs(remaining) for s in states)
        if parts is not None:
            costs = np.where(parts.exhausted(done)[remaining], np.inf, costs)
        c = int(remaining[np.argmin(costs)])
        if parts is not None:
            done[parts.part[c]] += 1
        for s in states:
            s.remove(c)
        remaining = remaining[remaining != c]
        yield c, sum(s.error() for s in states) if errors else None, [s.theta for s in states]


def reap_order(consumers: Sequence[Problem], n: int, alpha: float | Sequence[float] = 0.0,
               target: int = 1, parts: Parts | None = None, errors: bool = True) -> Elimination:
    """REAP's removal order and the reconstruction error sum ||Y - Xa theta_S||^2 after each
    removal (None without ``errors``)."""
    steps = [(c, e) for c, e, _ in reap_steps(consumers, n, alpha, target, parts, errors)]
    return Elimination(np.array([c for c, _ in steps], dtype=np.intp),
                       np.array([e for _, e in steps]) if errors else None)


