"""Interpolation between two values, written to be exact at both ends.

The textbook forms ``a + (b - a) * w`` round at ``w = 1`` whenever ``a`` and ``b`` differ by
orders of magnitude, so a schedule would miss its documented end value. Weighting each end
separately returns ``a`` and ``b`` exactly.
"""

import math


def linear_blend(start: float, end: float, fraction: float) -> float:
    """``start`` at fraction 0, ``end`` at fraction 1, linearly in between."""
    return start * (1.0 - fraction) + end * fraction


def cosine_blend(start: float, end: float, fraction: float) -> float:
    r"""``start`` at fraction 0, ``end`` at fraction 1, along half a cosine period.

    .. math:: \text{start} \, \frac{1 + \cos \pi f}{2} + \text{end} \, \frac{1 - \cos \pi f}{2}
    """
    cosine = math.cos(math.pi * fraction)
    return start * ((1.0 + cosine) / 2.0) + end * ((1.0 - cosine) / 2.0)
