"""Whether the original's outputs on some data can tell a good rewrite from a bad one.

A guard or a comparison measures a candidate against the original's outputs on the data it was given. When
those outputs say nothing -- every one of them near zero, or the same whatever the input -- any candidate
that also outputs about zero, or a constant, passes, and a relative error or an SNR against them is noise.
Seeded random inputs do this to models whose outputs are gated by what real inputs look like (a text
detector's probability map is about 1e-7 everywhere on uniform noise). :func:`uninformative_reference`
names that case so the run can say so instead of reporting the numbers as if they meant something.

A leaf: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: An output whose largest magnitude on the data is at most this is "about zero": float32 activations of a
#: trained network that carry information are orders of magnitude above it.
NEAR_ZERO = 1e-6

#: An output whose values vary across samples by at most this fraction of its magnitude is "constant": it
#: does not depend on the input, so it cannot show what a rewrite did to the path from the input.
CONSTANT_FRACTION = 1e-6


def uninformative_reference(names: Sequence[str], batches: Sequence[Sequence[np.ndarray]]) -> str | None:
    """Why the reference outputs ``batches`` (per batch, one array per output in ``names``) cannot verify a
    candidate, or None when at least one floating-point output carries information.

    Only floating-point outputs are judged (an integer output -- labels, indices, shapes -- is compared
    exactly, so it cannot hide an error); with none of those, or no batch, there is nothing to judge.
    """
    reasons: list[str] = []
    judged = 0
    for i, name in enumerate(names):
        arrays = [np.asarray(b[i]) for b in batches]
        if not arrays or not all(np.issubdtype(a.dtype, np.floating) for a in arrays):
            continue
        judged += 1
        reason = _uninformative(name, arrays)
        if reason is None:
            return None
        reasons.append(reason)
    if not judged:
        return None
    more = f" (and {len(reasons) - 1} more output(s) like it)" if len(reasons) > 1 else ""
    return reasons[0] + more


def _uninformative(name: str, arrays: list[np.ndarray]) -> str | None:
    finite = [a[np.isfinite(a)].astype(np.float64) for a in arrays]
    peak = max((float(np.max(np.abs(a))) if a.size else 0.0) for a in finite)
    if peak <= NEAR_ZERO:
        return f"output '{name}' is about zero on this data (max |y| {peak:.2g})"
    spread = _spread_across_samples(arrays)
    if spread is not None and spread <= CONSTANT_FRACTION * peak:
        return f"output '{name}' is the same for every sample of this data (it varies by {spread:.2g})"
    return None


def _spread_across_samples(arrays: list[np.ndarray]) -> float | None:
    """The largest difference, element by element, between any sample's output and the first one's; None with
    fewer than two samples (nothing to say) or outputs whose per-sample shapes differ."""
    samples = [s for a in arrays for s in (a if a.ndim > 0 and a.shape[0] > 0 else [a])]
    if len(samples) < 2 or any(s.shape != samples[0].shape for s in samples):
        return None
    first = samples[0].astype(np.float64)
    spread = 0.0
    for s in samples[1:]:
        diff = np.abs(s.astype(np.float64) - first)
        diff = diff[np.isfinite(diff)]
        if diff.size:
            spread = max(spread, float(diff.max()))
    return spread
