"""order_by_score(limit=n) is the full order's first n, without sorting every memory."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.memory.ranking import order_by_score


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**32 - 1), st.integers(1, 300), st.integers(1, 40),
    st.sampled_from([0.0, 0.005, 0.2]), st.booleans(), st.booleans(),
)
def test_the_limited_order_is_the_start_of_the_full_order(
    seed: int, n: int, limit: int, tolerance: float, coarse: bool, filtered: bool,
) -> None:
    rng = np.random.default_rng(seed)
    # Coarse scores and times make many exact ties, the case a partial sort gets wrong.
    scores = rng.integers(0, 5, n) / 4 if coarse else rng.random(n)
    created = rng.integers(0, 3, n).astype(np.float64) if coarse else rng.random(n) * 1e9
    eligible = rng.random(n) < 0.7 if filtered else None
    full = order_by_score(scores, created, eligible, tolerance)
    limited = order_by_score(scores, created, eligible, tolerance, limit=limit)
    np.testing.assert_array_equal(limited, full[:limit])
    untimed = order_by_score(scores, None, eligible, tolerance, limit=limit)
    untimed_full = order_by_score(scores, None, eligible, tolerance)
    np.testing.assert_array_equal(untimed, untimed_full[:limit])
