"""In-process timing: warm-up, then the median of repeated calls.

No assertions on times anywhere: this module only measures. Calls shorter than
MIN_BATCH_S are run in batches (timeit-style) so microsecond calls are measured above the
clock's resolution; the reported figure is always seconds per single call.
"""

import math
import statistics
import time
from dataclasses import dataclass

# A batch of calls should last at least this long (tiny calls are looped).
# Full runs: FULL / TINY_FULL; a call over FULL.single_call_s (mostly the slow peers: NumPy,
# torchvision) is timed once, by the correctness check that precedes it, which
# keeps the full run within about ten minutes. --quick: QUICK, where every slow call is
# timed that way (cold, so a rough figure: a smoke test, not a result).
MIN_BATCH_S = 0.002


@dataclass
class Policy:
    """How many times to measure: a time budget per measurement and repeat bounds."""

    budget_s: float      # aim for about this much timed work per measurement
    min_repeats: int     # at least this many timed batches ...
    max_repeats: int     # ... and at most this many
    slow_call_s: float   # a call slower than this gets slow_repeats batches only
    slow_repeats: int    # 0: a slow call already made by the caller is the only sample
    single_call_s: float = math.inf  # a call already made that took longer is the only sample
    warmup: int = 1


FULL = Policy(budget_s=1.0, min_repeats=5, max_repeats=31, slow_call_s=0.2, slow_repeats=3,
              single_call_s=1.0)
QUICK = Policy(budget_s=0.1, min_repeats=1, max_repeats=5, slow_call_s=0.02, slow_repeats=0)
# The per-call-overhead workload: many repeats of batched calls.
TINY_FULL = Policy(budget_s=0.5, min_repeats=25, max_repeats=101, slow_call_s=1.0, slow_repeats=3)
TINY_QUICK = Policy(budget_s=0.02, min_repeats=5, max_repeats=11, slow_call_s=1.0, slow_repeats=3)


@dataclass
class Timing:
    """Seconds per call: median, minimum and maximum over `repeats` batches of `number` calls."""

    median_s: float
    min_s: float
    repeats: int
    number: int
    max_s: float = None


def measure(fn, policy, first_call_s=None):
    """Time fn() under `policy`: warm-up calls, then the median of repeated batches.

    `first_call_s` is the duration of a call the caller has just made (e.g. the correctness
    check); when that call was slow it serves as the warm-up, which saves one slow call.
    """
    if first_call_s is not None and first_call_s > policy.slow_call_s:
        if policy.slow_repeats == 0 or first_call_s > policy.single_call_s:
            return Timing(first_call_s, first_call_s, 1, 1, first_call_s)  # the checked call is the sample
        first = first_call_s
    else:
        start = time.perf_counter()
        for _ in range(max(policy.warmup, 1)):
            fn()
        first = (time.perf_counter() - start) / max(policy.warmup, 1)
    number = max(1, math.ceil(MIN_BATCH_S / max(first, 1e-9)))
    if first > policy.slow_call_s:
        repeats = max(policy.slow_repeats, 1)
    else:
        fit = int(policy.budget_s / max(first * number, 1e-9))
        repeats = min(policy.max_repeats, max(policy.min_repeats, fit))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return Timing(statistics.median(samples), min(samples), repeats, number, max(samples))
