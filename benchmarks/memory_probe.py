"""Peak extra memory of one roialign_cy call beyond its output, in a fresh process.

tracemalloc cannot see the kernels' C mallocs, so this watches the process's resident set.
Run as ``python benchmarks/memory_probe.py WORKLOAD OP DIRECTION LAYOUT THREADS [--quick]``:
it builds the workload, preallocates and touches the result array (passed as ``out=``, so
the output itself is never counted), resets the kernel's peak-RSS mark (writes 5 to
/proc/self/clear_refs, Linux), makes one call and prints JSON {"extra_bytes": peak RSS
during the call - RSS before it, "output_bytes", "method"}. Where the mark cannot be reset
it falls back to getrusage's ru_maxrss, which only moves when the call beats the process's
earlier high-water mark ("method": "ru_maxrss": a lower bound). One call per process, so
memory an earlier call freed cannot hide a new allocation. Page granularity: 4 KiB.
"""

import gc
import json
import sys

import numpy as np

import peers
import workloads


def _status_kib(field):
    """A "VmRSS"/"VmHWM" value from /proc/self/status, in KiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak():
    """Reset the peak-RSS mark to the current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _max_rss_kib():
    """ru_maxrss in KiB (Linux reports KiB, macOS bytes)."""
    import resource

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value // 1024 if sys.platform == "darwin" else value


def probe(name, op, direction, layout, n_threads, quick=False):
    """Measure one call as described in the module docstring; returns the JSON dict."""
    wl = workloads.build(name, quick=quick)
    shape = wl.output_shape(layout) if direction == "forward" else wl.input_shape(layout)
    out = np.zeros(shape, dtype=np.float32)  # zeros() alone may not touch pages: fill it
    out.fill(1.0)
    call = peers.make_ours(wl, op, direction, layout, n_threads, out=out)
    if call is None:
        return {"error": f"roialign_cy has no {op} {direction}"}
    if direction == "backward":
        wl.grad_output(layout)
    gc.collect()
    if _reset_peak():
        method = "VmHWM"
        before = _status_kib("VmRSS")
        result = call()
        peak = _status_kib("VmHWM")
    else:
        method = "ru_maxrss"
        before = _max_rss_kib()
        result = call()
        peak = _max_rss_kib()
    if result is not out:  # the function ignored out=: its fresh result is not "extra"
        peak -= np.asarray(result).nbytes // 1024
    return {"extra_bytes": max(0, peak - before) * 1024, "output_bytes": out.nbytes,
            "method": method}


def main(argv):
    """Command line: WORKLOAD OP DIRECTION LAYOUT THREADS [--quick]; prints one JSON line."""
    quick = "--quick" in argv
    name, op, direction, layout, n_threads = [a for a in argv if a != "--quick"][:5]
    try:
        result = probe(name, op, direction, layout, int(n_threads), quick)
    except Exception as exc:  # reported by the runner, never fatal
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
