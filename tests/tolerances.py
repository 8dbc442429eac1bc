"""Numeric tolerances of the suite, each derived from what it compares (one place, so every test uses the same).

The machines that run this suite differ in CPU model: the same float32 sum, blocked another way by another
kernel, thread count or batch width, rounds differently. Where two results are computed along different paths,
the tolerance below bounds that rounding; where the claim is exactness (a resumed run, same batches and threads),
the tests compare with ``torch.equal`` instead.
"""

from __future__ import annotations

import numpy as np

#: float32 unit roundoff.
FP32_EPS = float(np.finfo(np.float32).eps)

#: One pair scored along two float32 paths (another batch width and so other padding, another batch composition,
#: another thread count, a server's micro-batch). Each matmul of width K carries a relative error of about
#: sqrt(K) * eps (~2e-6 for K = 384) and each of the 2-6 layers passes it on through LayerNorm, so differences of
#: a few 1e-6 of the score scale are expected (2.4e-6 was seen on one CPU); 1e-4 leaves a margin of ~40x, while a
#: real change (another token, a swapped pair) moves a tiny model's score by more than 1e-2 of its scale.
SCORE_RTOL = 1e-4

#: The same scores from a float16 forward pass (a tool that keeps a float16 checkpoint's dtype): float16 has 11
#: mantissa bits, an ulp of ~1e-3 near a score of 1, and the output alone rounds by half of that; 5e-3 of the
#: score scale is a few ulps of accumulated rounding over 6 layers, and still well below the gaps between answers.
FP16_SCORE_RTOL = 5e-3


def score_scale(desired) -> float:
    """The scale of a comparison: the largest |score| compared, at least 1 (scores are trained towards [0, 1])."""
    arr = np.abs(np.asarray(desired, dtype=np.float64))
    return max(1.0, float(arr.max())) if arr.size else 1.0


def assert_scores_close(actual, desired, rtol: float = SCORE_RTOL) -> None:
    """Assert two float32 score vectors agree to ``rtol`` of their score scale (see :data:`SCORE_RTOL`)."""
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(desired, dtype=np.float64),
        rtol=0,
        atol=rtol * score_scale(desired),
    )


def adam_drift_bound(lr: float, updates: int, rel_grad_err: float = 1e-2) -> float:
    """The largest weight difference between two runs of ``updates`` AdamW steps whose gradients differ by rounding.

    Adam's step is lr * m / sqrt(v): a relative change r of a gradient changes the step by about lr * r, and the
    changes add up over the updates. Gradients summed in another order (micro-batches vs processes, other threads)
    differ by ~1e-6 relatively where they are far above rounding noise, and by more where they are small;
    ``rel_grad_err`` = 1e-2 covers weights whose gradient is only ~100x above that noise (3.6e-6 of the 1.2e-4
    this gives was seen for 12 updates at lr 1e-3). A run on other data, or without the all-reduce, differs by
    ~lr * updates, 100x more. Weights with a true gradient of 0 are outside this bound (Adam turns their noise into
    full steps of ~lr): compare them by ``2 * lr * updates``.
    """
    return lr * updates * rel_grad_err
