"""Plain records passed from the runner to the report: measurements, checks, cases."""

from dataclasses import dataclass, field
from typing import Optional

IMPLEMENTATIONS = ("roialign_cy", "torchvision", "onnxruntime", "numpy")
LAYOUTS = ("NCHW", "NHWC")


@dataclass
class Measurement:
    """One implementation at one (layout, threads): seconds per call, or why there is none.

    status: "ok", "mismatch" (output differs from roialign_cy: not timed), "error" (the call
    raised), "absent" (not installed, or no such operation). `borrowed` names the row whose
    figure this is when the implementation cannot run this configuration itself
    ("NCHW" for NCHW-only peers in NHWC rows, "1 thread" for single-threaded NumPy).
    """

    status: str
    seconds: Optional[float] = None
    detail: str = ""
    repeats: int = 0
    number: int = 0
    borrowed: str = ""


@dataclass
class Check:
    """One correctness comparison made before timing."""

    what: str
    ok: bool
    max_abs_diff: Optional[float] = None
    detail: str = ""


@dataclass
class Case:
    """Everything measured for one (workload, op, direction)."""

    workload: str
    summary: str
    tiny: bool
    op: str
    direction: str
    floor_s: Optional[float] = None
    floor_bytes: int = 0
    times: dict = field(default_factory=dict)  # (implementation, layout, threads) -> Measurement
    checks: list = field(default_factory=list)

    def get(self, implementation, layout, threads):
        """The Measurement for that cell (an "absent" one when nothing was recorded)."""
        return self.times.get((implementation, layout, threads), Measurement("absent"))


@dataclass
class MemoryResult:
    """Peak extra resident memory of one roialign_cy call beyond its output."""

    workload: str
    op: str
    direction: str
    layout: str
    threads: int
    extra_bytes: Optional[int] = None
    output_bytes: Optional[int] = None
    method: str = ""
    error: str = ""
