"""A ConvTranspose consumer as the direct convolution it equals, so that its patches are im2col patches.

Per spatial axis, with strides s, dilations d, kernel k, begin pad b and end pad e less
output_padding (``Consumer.pads``), a ConvTranspose computes

    y[o, p] = bias[o] + sum_{c, t, q: q*s + t*d - b = p} x[c, q] W[c, o, t].

Insert s - 1 zeros between input pixels (u[q*s] = x[q]) and pad u by (k-1)*d - b before and
(k-1)*d - e after (cropping where that is negative) into v; then q*s = p + b - t*d reads

    y[o, p] = bias[o] + sum_{c, t} v[c, p + (k-1-t)*d] W[c, o, t],

a direct convolution of v (stride 1, dilation d) with the kernel flipped. So the patch of
output pixel p holds, in column c*K + t, the input value that tap t of channel c brings to p:
x[c, q] where q*s = p + b - t*d, else 0. The columns are W's own (rows of
``W.transpose(0, 2, 3, 1).reshape(n*K, m)``): nothing is flipped in the weights.
"""

from __future__ import annotations

import numpy as np

from ..analysis.consumers import Consumer


def direct_pads(c: Consumer) -> tuple[int, ...]:
    """Pads (begin..., end...) of the direct convolution: (k-1)*d - b and (k-1)*d - e per axis."""
    reach = [(k - 1) * d for k, d in zip(c.kernel, c.dilations)]
    n = len(reach)
    return tuple(r - b for r, b in zip(reach, c.pads[:n])) + tuple(r - e for r, e in zip(reach, c.pads[n:]))


def zero_inserted(x: np.ndarray, strides) -> np.ndarray:
    """u with u[..., q*s] = x[..., q] and zeros between (N, C, spatial...): s*(L-1) + 1 per axis."""
    size = [s * (n - 1) + 1 for n, s in zip(x.shape[2:], strides)]
    u = np.zeros((*x.shape[:2], *size), dtype=x.dtype)
    u[(slice(None), slice(None), *(slice(None, None, s) for s in strides))] = x
    return u


def direct_input(x: np.ndarray, c: Consumer) -> np.ndarray:
    """v: x zero-inserted by the strides, padded (or cropped, where a pad is negative) by direct_pads."""
    u = zero_inserted(x, c.strides)
    pads = direct_pads(c)
    n = len(c.kernel)
    grow = [(0, 0)] * 2 + [(max(b, 0), max(e, 0)) for b, e in zip(pads[:n], pads[n:])]
    crop = tuple(slice(max(-b, 0), u.shape[2 + i] + max(b, 0) + max(e, 0) - max(-e, 0))
                 for i, (b, e) in enumerate(zip(pads[:n], pads[n:])))
    return np.pad(u, grow)[(slice(None), slice(None), *crop)]
