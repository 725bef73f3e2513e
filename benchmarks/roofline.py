"""This machine's limits (read bandwidth per cache level, peak multiply+add rate) and each
roi_align forward workload against them, measured in one run.

    python benchmarks/roofline.py                      # full run: prints Markdown, updates RESULTS.md
    python benchmarks/roofline.py --quick --no-write   # smoke test (CI): seconds, writes nothing
    python benchmarks/roofline.py --threads 1,2,4,8    # the probe and the timings at these counts

The probe is benchmarks/roofline_probe.c, compiled here at run time with the system C compiler
(CC, else cc / gcc / clang) into a temporary shared library and called through ctypes; without
a compiler the script says so and exits 0. For each workload the work is counted from its
boxes in NumPy (numpy_baseline's sampling geometry, not the package): bilinear samples inside
the map, the vector operations they need, the bytes their taps read and the distinct bytes they
touch. The bounds are those counts over the probe's rates, plus one the probe measures on the
workload itself: the time to read its taps in the kernels' order, nothing computed. No
assertions on times.
"""

import argparse
import ctypes
import glob
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

import environment
import numpy_baseline
import peers
import report
import timing
import workloads
from records import LAYOUTS

from roialign_cy import _plan

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = "## Roofline: this machine's limits and each workload against them"
PROBE_SOURCE = os.path.join(HERE, "roofline_probe.c")
WORKLOADS = ("box_head_fpn", "mask_head_fpn", "c4_head", "many_small")
FLOAT_BYTES = 4
LANES = 8          # floats per AVX vector: the unit the vector-op counts are in
TAPS = 4           # bilinear taps per sample
FLOPS_PER_TAP = 2  # one multiply (weight x value) and one add per tap and channel
DRAM_BYTES = 512 << 20
# Fallbacks when neither sysfs nor lscpu gives a cache's size (then marked "assumed").
ASSUMED_CACHES = {1: 32 << 10, 2: 256 << 10, 3: 8 << 20}


@dataclass
class Probe:
    """How to measure: each figure is the best of `repeats` timed runs of at least `sample_s`
    seconds each; the DRAM buffer's size (0: four times L3, at least 32 MiB)."""

    sample_s: float
    repeats: int
    dram_bytes: int


# Many runs of 1 ms, not a few long ones: on a shared machine a run is preempted more often
# the longer it lasts (a time slice is a few ms when the cores are contended), and the best
# of many short runs is the figure closest to the hardware's.
FULL = Probe(sample_s=0.001, repeats=51, dram_bytes=DRAM_BYTES)  # >= 51 ms a figure
QUICK = Probe(sample_s=0.001, repeats=5, dram_bytes=0)
# roi_align calls: warm-up, then the median of 5 to 15 calls (about 0.5 s a row).
# The tap-read probe on a workload: the best of this many runs after a warm-up.
TAP_READ_REPEATS = 7
WORKLOAD_POLICY = timing.Policy(budget_s=0.5, min_repeats=5, max_repeats=15, slow_call_s=1.0,
                                slow_repeats=3)


@dataclass
class Rate:
    """A rate (units per second) from repeated measurements: the best, median and worst."""

    best: float
    median: float
    worst: float


def progress(message):
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ cache sizes


def _parse_size(text):
    """Bytes from '32K', '8192K', '64 KiB (2 instances)', '1 MiB', ...; None if unreadable.

    lscpu gives the total over the instances ("64 KiB (2 instances)"): divided back to one.
    """
    match = re.match(r"\s*([\d.]+)\s*([KMG]?)", text, re.IGNORECASE)
    if not match:
        return None
    value = float(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[
        match.group(2).upper()]
    instances = re.search(r"\((\d+) instances?\)", text)
    return int(value / int(instances.group(1))) if instances else int(value)


def cache_sizes():
    """({level: bytes} of one core's data / unified caches, where the sizes came from)."""
    sizes = {}
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            read = {name: open(os.path.join(index, name)).read().strip()
                    for name in ("level", "type", "size")}
        except OSError:
            continue
        if read["type"] != "Instruction" and _parse_size(read["size"]):
            sizes[int(read["level"])] = _parse_size(read["size"])
    if sizes:
        return sizes, "/sys/devices/system/cpu/cpu0/cache"
    info = environment.lscpu()
    for key, level in (("L1d cache", 1), ("L2 cache", 2), ("L3 cache", 3)):
        if _parse_size(info.get(key, "")):
            sizes[level] = _parse_size(info[key])
    if sizes:
        return sizes, "lscpu"
    return dict(ASSUMED_CACHES), "assumed (neither sysfs nor lscpu gave them)"


def level_of(nbytes, caches):
    """The smallest cache level a working set of `nbytes` fits in, else "DRAM"."""
    for level in sorted(caches):
        if nbytes <= caches[level]:
            return f"L{level}"
    return "DRAM"


# ------------------------------------------------------------------------ the C probe


def _has_avx2():
    """Whether this CPU has AVX2 (the probe's vector loops need it; else the scalar ones)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False  # cannot tell: the scalar loops are safe everywhere


def compile_probe(directory):
    """(the probe loaded with ctypes, the compile command) or (None, why not)."""
    compiler = shlex.split(os.environ.get("CC", "")) or next(
        ([name] for name in ("cc", "gcc", "clang") if shutil.which(name)), None)
    if not compiler:
        return None, "no C compiler found (set CC, or install cc, gcc or clang)"
    flags = ["-O2", "-shared", "-fPIC", "-ffp-contract=off"]
    if _has_avx2():  # the package kernels' flags: AVX2 vectors, separate multiply and add
        flags += ["-mavx2", "-mno-fma"]
    library = os.path.join(directory, "roofline_probe.so")
    errors = []
    for openmp in (["-fopenmp"], []):  # without OpenMP (e.g. clang without libomp): 1 thread
        command = compiler + flags + openmp + [PROBE_SOURCE, "-o", library]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
            continue
        if done.returncode == 0:
            lib = ctypes.CDLL(library)
            seconds = ctypes.POINTER(ctypes.c_double)
            lib.probe_read.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long,
                                       ctypes.c_int, seconds]
            lib.probe_read.restype = ctypes.c_double
            lib.probe_taps.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                                       ctypes.c_long, ctypes.c_long, ctypes.c_int, seconds]
            lib.probe_taps.restype = ctypes.c_double
            lib.probe_mul_add.argtypes = [ctypes.c_long, ctypes.c_int, seconds]
            lib.probe_mul_add.restype = ctypes.c_double
            lib.probe_int_add_chain.argtypes = [ctypes.c_long, seconds]
            lib.probe_int_add_chain.restype = ctypes.c_longlong
            lib.probe_float_add_chain.argtypes = [ctypes.c_long, seconds]
            lib.probe_float_add_chain.restype = ctypes.c_double
            return lib, " ".join(shlex.quote(a) for a in command)
        errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                      f"exit status {done.returncode}")
    return None, f"the C compiler `{' '.join(compiler)}` failed: {errors[-1]}"


_SINK = []  # the probe's checksums, kept so nothing could treat its results as unused


def _rates(call, counts, probe, work, scale=lambda threads: 1):
    """{threads: Rate in work units per second} of a probe loop at each thread count.

    call(reps, threads, seconds) runs the loop and stores its own time in `seconds` (a
    ctypes double pointer); work(threads) is the work of one rep; scale(threads) how many
    times the 1-thread reps a run on that many threads gets so that it lasts about as long.
    reps is calibrated on 1 thread, where no team has to start: a run at least
    probe.sample_s long, judged by the fastest of three runs, so that one preempted run
    cannot stop the calibration early. At each count, one run starts the team (the warm-up),
    then probe.repeats runs are timed.
    """
    def run(reps, threads):
        seconds = ctypes.c_double(0.0)
        _SINK.append(call(reps, threads, ctypes.byref(seconds)))
        return seconds.value

    reps = 1
    while (elapsed := min(run(reps, 1) for _ in range(3))) < probe.sample_s:
        reps = max(reps * 2, int(reps * 1.2 * probe.sample_s / max(elapsed, 1e-7)))
    rates = {}
    for threads in counts:
        run(reps * scale(threads), threads)
        samples = [run(reps * scale(threads), threads) for _ in range(probe.repeats)]
        done = work(threads) * reps * scale(threads)
        rates[threads] = Rate(done / min(samples), done / statistics.median(samples),
                              done / max(samples))
    return rates


def measure_machine(lib, caches, thread_counts, probe):
    """Every probe figure: read bandwidth per level and thread count, mul+add peak, clock."""
    openmp = lib.probe_openmp() > 0
    counts = thread_counts if openmp else [1]
    sizes = [(f"L{level}", caches[level] // 2) for level in sorted(caches)]
    sizes.append(("DRAM", probe.dram_bytes or max(32 << 20, 4 * caches.get(3, 8 << 20))))
    bandwidth = {}
    for name, nbytes in sizes:
        # Whole vector steps (64 floats) per thread share; ones, so every page is really there.
        data = np.ones(max(nbytes // FLOAT_BYTES // 64, 1) * 64, dtype=np.float32)
        # DRAM: each run reads the next window of the buffer (four times L3, at least 32 MiB),
        # so a run stays short and what it reads was last read all the other windows ago:
        # not in any cache. A cache level: every run reads the whole working set.
        window = data.size if name != "DRAM" else min(
            data.size, max(32 << 20, 4 * caches.get(3, 8 << 20)) // FLOAT_BYTES)
        windows = [0]

        def read(reps, threads, seconds, data=data, window=window, windows=windows):
            """probe_read over the next window of `data` (the whole of it for a cache)."""
            first = windows[0] % (data.size // window) * window
            windows[0] += 1
            return lib.probe_read(data.ctypes.data + first * FLOAT_BYTES, window, reps, threads,
                                  seconds)

        # A rep reads the window once, split between the threads: T threads get T x the reps.
        rates = _rates(read, counts, probe, work=lambda threads: window * FLOAT_BYTES,
                       scale=lambda threads: threads)
        for threads, rate in rates.items():
            bandwidth[(name, threads)] = rate
            progress(f"  read {name} ({report.fmt_bytes(data.nbytes)}), {threads} thr: "
                     f"{rate.best / 1e9:.1f} GB/s")
        dram_window = window * FLOAT_BYTES  # the last level is DRAM
        del data
    # A rep is one step of every thread's chains.
    per_step = lib.probe_mul_add_flops_per_step()
    flops = _rates(lib.probe_mul_add, counts, probe, work=lambda threads: per_step * threads)
    for threads, rate in flops.items():
        progress(f"  mul+add, {threads} thr: {rate.best / 1e9:.1f} GFLOP/s")
    clock = fp_latency = None
    seconds = ctypes.byref(ctypes.c_double())
    if lib.probe_int_add_chain(1, seconds) != -1:  # x86-64: 1-cycle integer adds give the clock
        clock = _rates(lambda reps, _, seconds: lib.probe_int_add_chain(reps, seconds), [1],
                       probe, work=lambda threads: 16)[1]
        fp_add = _rates(lambda reps, _, seconds: lib.probe_float_add_chain(reps, seconds), [1],
                        probe, work=lambda threads: 16)[1]
        fp_latency = clock.best / fp_add.best
        progress(f"  clock {clock.best / 1e9:.2f} GHz, float add latency {fp_latency:.1f} cycles")
    return {"sizes": dict(sizes), "dram_window": dram_window, "bandwidth": bandwidth, "flops": flops, "clock": clock,
            "fp_add_latency": fp_latency, "openmp": openmp, "avx": bool(lib.probe_avx()),
            "counts": counts}


# ------------------------------------------------------------------------ the workloads' work


def _tap_lines(low, high, inside):
    """Per RoI, the rows (or columns) both taps of every inside sample read; -1 for the rest.

    (k, bins, G) arrays in, (k, bins * G * 2) out.
    """
    lines = np.where(inside[..., None], np.stack([low, high], axis=-1), -1)
    return lines.reshape(len(lines), -1)


def _axis_taps(wl, coords):
    """Per chunk of RoIs (numpy_baseline's chunks): (rows, y_low, y_high, y_in, x_low, x_high,
    x_in), each (k, bins, G): the tap rows/columns of every axis sample, and whether it is
    inside the map.

    The sampling geometry is numpy_baseline's (torchvision's formula: adaptive grid
    ceil(roi / out) for sampling_ratio <= 0, boxes stretched to 1x1 when aligned=False, samples
    outside [-1, H] x [-1, W] dropped).
    """
    _, _, height, width = wl.nchw_shape
    pooled = wl.output_size
    # A RoI marks (2 x its y samples) x (2 x its x samples) pixels: 4x the padded samples.
    per_roi = 4 * numpy_baseline._samples_per_roi(coords, wl.spatial_scale, wl.aligned, pooled,
                                                  wl.sampling_ratio)
    for rows in numpy_baseline._chunks(np.arange(len(coords)), per_roi):
        y_axis, x_axis, _ = numpy_baseline._roi_grids(coords[rows], wl.spatial_scale, wl.aligned,
                                                      pooled, wl.sampling_ratio)
        y_low, y_high, wy_low, wy_high = numpy_baseline._axis_taps(*y_axis, pooled[0], height)
        x_low, x_high, wx_low, wx_high = numpy_baseline._axis_taps(*x_axis, pooled[1], width)
        # _axis_taps gives a dropped sample (outside the map, or padding beyond the RoI's own
        # grid) weight 0 on both taps; a kept one's two weights sum to 1.
        yield (rows, y_low, y_high, (wy_low + wy_high) > 0,
               x_low, x_high, (wx_low + wx_high) > 0)


def count_work(wl):
    """What a roi_align forward of `wl` must do, counted from its boxes (_axis_taps).

    A sample is inside iff its y and its x are, so per RoI the samples are (inside y samples)
    x (inside x samples) and the pixels their taps touch are (their tap rows) x (their tap
    columns); the union over RoIs is marked in one flag per pixel.
    """
    n, channels, height, width = wl.nchw_shape
    batch = wl.boxes[:, 0].astype(np.int64)
    touched = np.zeros(n * height * width + 1, dtype=bool)  # the last flag takes the misses
    samples = 0
    for rows, y_low, y_high, y_in, x_low, x_high, x_in in _axis_taps(wl, wl.boxes[:, 1:5]):
        samples += int(np.sum(y_in.sum(axis=(1, 2), dtype=np.int64)
                              * x_in.sum(axis=(1, 2), dtype=np.int64)))
        image_rows = _tap_lines(y_low, y_high, y_in)
        columns = _tap_lines(x_low, x_high, x_in)
        flat = ((batch[rows, None, None] * height + image_rows[:, :, None]) * width
                + columns[:, None, :])
        hit = (image_rows >= 0)[:, :, None] & (columns >= 0)[:, None, :]
        touched[np.where(hit, flat, touched.size - 1)] = True
    per_image = touched[:-1].reshape(n, height * width).sum(axis=1) * channels * FLOAT_BYTES
    return {
        "samples": samples,
        "vector_ops": samples * channels * TAPS * FLOPS_PER_TAP // LANES,
        "flops": samples * channels * TAPS * FLOPS_PER_TAP,
        "tap_bytes": samples * TAPS * channels * FLOAT_BYTES,
        "distinct_bytes": int(per_image.sum()),
        "largest_image_bytes": int(per_image.max()),
        "output_bytes": int(np.prod(wl.output_shape("NCHW"))) * FLOAT_BYTES,
    }


def _along_y(a):  # (k, PH, Gy) -> (k, PH, 1, Gy, 1)
    return a[:, :, None, :, None]


def _along_x(a):  # (k, PW, Gx) -> (k, 1, PW, 1, Gx)
    return a[:, None, :, None, :]


def tap_pixels(wl):
    """The 4 pixels every inside sample's taps read, in the kernels' order (RoI, bin row, bin
    column, sample row, sample column): flat (image, y, x) indices, (samples, 4) int32.

    The same geometry as count_work (_axis_taps), so as many samples as it counts; the RoIs
    in the order the per-RoI kernel pools them (by locality on a map the caches cannot hold:
    _plan.LOCALITY_BYTES).
    """
    _, channels, height, width = wl.nchw_shape
    coords = wl.boxes[:, 1:5]
    batch = wl.boxes[:, 0].astype(np.int64)
    order = _plan.locality_order(coords, batch, channels * height * width * FLOAT_BYTES)
    if order is not None:
        coords, batch = coords[order], batch[order]
    parts = [np.zeros((0, TAPS), dtype=np.int32)]
    for rows, y_low, y_high, y_in, x_low, x_high, x_in in _axis_taps(wl, coords):
        image_rows = batch[rows][:, None, None, None, None] * height
        low_row = (image_rows + _along_y(y_low)) * width
        high_row = (image_rows + _along_y(y_high)) * width
        taps = np.stack(np.broadcast_arrays(
            low_row + _along_x(x_low), low_row + _along_x(x_high),
            high_row + _along_x(x_low), high_row + _along_x(x_high)), axis=-1)
        inside = _along_y(y_in) & _along_x(x_in)
        parts.append(taps[np.broadcast_to(inside, taps.shape[:-1])].astype(np.int32))
    return np.ascontiguousarray(np.concatenate(parts))


def time_tap_reads(lib, features, pixels, threads, repeats):
    """Seconds (best of `repeats`, after one warm-up) the probe takes to read every tap of
    `pixels` from channels-last `features`, in that order, on `threads` threads."""
    channels = features.shape[-1]
    seconds = ctypes.c_double(0.0)
    best = float("inf")
    for run in range(repeats + 1):
        _SINK.append(lib.probe_taps(features.ctypes.data, pixels.ctypes.data, len(pixels),
                                    channels, 1, threads, ctypes.byref(seconds)))
        if run:
            best = min(best, seconds.value)
    return best


def _limit(rates, threads):
    """The best Rate measured at `threads` threads or fewer; None if `threads` was not
    measured (a probe built without OpenMP runs 1 thread only).

    T threads can always do what fewer do, so a lower figure at T (a run the machine's
    load slowed down) must not make the bound at T weaker than the one at fewer threads.
    """
    if threads not in rates:
        return None
    return max((rate for count, rate in rates.items() if count <= threads),
               key=lambda rate: rate.best)


def bounds(work, machine, caches, threads):
    """The three lower bounds (seconds) of one call on `threads` threads, with their levels.

    compute: vector ops over the measured mul+add peak. memory: the distinct bytes read from
    the level the largest image's distinct working set fits in, plus the output bytes at the
    level the output fits in, both at that level's measured read bandwidth (optimistic for the
    output: a store that misses also reads the line). taps: every tap's bytes at L2 bandwidth.
    """
    def read(level):
        """The read bandwidth Rate of `level` for this thread count."""
        return _limit({t: r for (name, t), r in machine["bandwidth"].items() if name == level},
                      threads)

    flops = _limit(machine["flops"], threads)
    found = {"compute": work["flops"] / flops.best if flops else None}
    in_level = level_of(work["largest_image_bytes"], caches)
    out_level = level_of(work["output_bytes"], caches)
    read_in, read_out, l2 = read(in_level), read(out_level), read("L2")
    found["memory"] = (work["distinct_bytes"] / read_in.best + work["output_bytes"] / read_out.best
                       if read_in and read_out else None)
    found["levels"] = (in_level, out_level)
    found["taps"] = work["tap_bytes"] / l2.best if l2 else None
    return found


def time_workloads(lib, names, thread_counts, quick, machine, caches):
    """[(workload, work counts, [(layout, threads, Timing, bounds)])] for roi_align forward.

    Channels-last rows get a fourth bound, measured: the probe reading the workload's taps
    in the kernels' order (tap_pixels), at the row's thread count."""
    results = []
    for name in names:
        wl = workloads.build(name, quick=quick)
        work = count_work(wl)
        pixels = tap_pixels(wl)
        if len(pixels) != work["samples"]:
            raise AssertionError(f"{name}: {len(pixels)} tap rows for {work['samples']} samples")
        progress(f"{name}: {work['samples']} samples, distinct "
                 f"{report.fmt_bytes(work['distinct_bytes'])}")
        rows = []
        for layout in LAYOUTS:
            for threads in thread_counts:
                call = peers.make_ours(wl, "roi_align", "forward", layout, threads)
                t = timing.measure(call, timing.QUICK if quick else WORKLOAD_POLICY)
                found = bounds(work, machine, caches, threads)
                found["tap_reads"] = (time_tap_reads(lib, wl.features(layout), pixels, threads,
                                                     2 if quick else TAP_READ_REPEATS)
                                      if layout == "NHWC" and threads in machine["counts"]
                                      else None)
                rows.append((layout, threads, t, found))
                progress(f"  {layout} {threads} thr: {t.median_s * 1e3:.2f} ms"
                         + (f" (tap reads alone {found['tap_reads'] * 1e3:.2f} ms)"
                            if found["tap_reads"] else ""))
        del pixels
        results.append((wl, work, rows))
        workloads.clear_cache()
    return results


# ------------------------------------------------------------------------ the report


def _ms(seconds):
    """Milliseconds, 3 significant digits ("—" for none)."""
    return "—" if seconds is None else report.fmt_time(seconds, tiny=False)


def _giga(rate):
    """'best (median, worst)' of a Rate, in units of 10^9 a second."""
    if rate is None:
        return "—"
    return f"{rate.best / 1e9:.1f} ({rate.median / 1e9:.1f}, {rate.worst / 1e9:.1f})"


def _count(value):
    """A large count in millions (exact below a million)."""
    return f"{value / 1e6:.2f} M" if value >= 1e6 else str(value)


def probe_section(machine, caches, cache_source, compile_command, probe):
    """The probe's figures as Markdown lines."""
    counts = machine["counts"]
    lines = [
        "### The probe",
        "",
        f"`benchmarks/roofline_probe.c`, compiled with `{compile_command}`"
        + ("" if machine["avx"] else " (no AVX2 here: the scalar fallback loops)")
        + ("" if machine["openmp"] else "; compiled without OpenMP, so 1 thread only") + ".",
        f"Caches of one core ({cache_source}): "
        + ", ".join(f"L{level} {report.fmt_bytes(size)}" for level, size in sorted(caches.items()))
        + ". Each cache working set is about half a level; DRAM: a "
        f"{report.fmt_bytes(machine['sizes']['DRAM'])} buffer, each run reading its next "
        f"{report.fmt_bytes(machine['dram_window'])} window (not in any cache since its last "
        "read). Several threads split a run's reads between them.",
        "",
        f"Read bandwidth in GB/s (10^9 bytes/s) and the multiply+add rate in GFLOP/s: the best "
        f"of {probe.repeats} timed runs of at least {probe.sample_s * 1e3:g} ms each (the "
        "limit), then in brackets the median and the worst run (how much the machine's load "
        "took away).",
        "",
        "| working set | bytes | " + " | ".join(f"{t} thread(s)" for t in counts) + " |",
        "|---|---:|" + "---:|" * len(counts),
    ]
    for name, nbytes in machine["sizes"].items():
        lines.append(f"| {name} | {report.fmt_bytes(nbytes)} | "
                     + " | ".join(_giga(machine["bandwidth"].get((name, t))) for t in counts) + " |")
    lines += [f"| mul+add peak, GFLOP/s | — | "
              + " | ".join(_giga(machine["flops"][t]) for t in counts) + " |", ""]
    clock = machine["clock"]
    if clock:
        per_cycle = machine["flops"][1].best / clock.best
        pair_flops = 2 * LANES if machine["avx"] else 2
        text = (f"Clock, from a dependent chain of 64-bit integer adds (one cycle each on every "
                f"x86-64 core: the one assumption): {clock.best / 1e9:.2f} GHz (median "
                f"{clock.median / 1e9:.2f}). At that clock one core does {per_cycle:.1f} flops a "
                f"cycle = {per_cycle / pair_flops:.2f} multiply + add vector pairs a cycle; a "
                f"dependent float add chain takes {machine['fp_add_latency']:.1f} cycles an add "
                "(3 to 4 on recent x86 cores, so the clock estimate is consistent if it is).")
        if ("L1", 1) in machine["bandwidth"]:
            text += (f" L1 read, 1 thread: {machine['bandwidth'][('L1', 1)].best / clock.best:.0f}"
                     " bytes a cycle.")
        lines += [text, ""]
    else:
        lines += ["No clock estimate (not x86-64): no per-cycle figures.", ""]
    lines += [
        "The multiply+add peak: 12 independent chains of `x = x * m + c` (one vmulps and one "
        "vaddps, no FMA, as the kernels are built), per thread; the kernels' bilinear tap is "
        "the same 1:1 mix.",
        "",
    ]
    return lines


def work_table(results):
    """The work each workload does (layout- and thread-independent)."""
    lines = [
        "| workload | K | samples inside the map | vector ops (8 floats) | tap bytes | distinct "
        "bytes (largest image) | output bytes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for wl, work, _ in results:
        lines.append(
            f"| {wl.name} | {wl.n_rois} | {work['samples']:,} | {_count(work['vector_ops'])} | "
            f"{report.fmt_bytes(work['tap_bytes'])} | {report.fmt_bytes(work['distinct_bytes'])} "
            f"({report.fmt_bytes(work['largest_image_bytes'])}) | "
            f"{report.fmt_bytes(work['output_bytes'])} |")
    return lines


def binding(found):
    """("compute" | "memory" | "tap reads", seconds) of the largest bound (None if
    unmeasured)."""
    pairs = [(found[k], k.replace("_", " ")) for k in ("compute", "memory", "tap_reads")
             if found.get(k) is not None]
    if not pairs:
        return None, None
    seconds, kind = max(pairs)
    return kind, seconds


def timing_table(results):
    """One row per (workload, layout, threads): time, bounds, what binds, the multiples."""
    lines = [
        "| workload | layout | threads | time, ms: median (min–max) | compute bound | memory "
        "bound (levels) | tap reads alone | binds | time / binding | taps at L2 | time / taps "
        "at L2 |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for wl, _, rows in results:
        for layout, threads, t, found in rows:
            kind, limit = binding(found)
            levels = " + ".join(found["levels"])
            lines.append(
                f"| {wl.name} | {layout} | {threads} | {_ms(t.median_s)} ({_ms(t.min_s)}–"
                f"{_ms(t.max_s)}) | {_ms(found['compute'])} | {_ms(found['memory'])} ({levels}) "
                f"| {_ms(found['tap_reads'])} | {kind or '—'} | {report.fmt_ratio(t.median_s / limit) if limit else '—'} | "
                f"{_ms(found['taps'])} | "
                f"{report.fmt_ratio(t.median_s / found['taps']) if found['taps'] else '—'} |")
    return lines


def summary(results):
    """One line per workload: what binds at each thread count, and how far the times are."""
    lines = []
    for wl, work, rows in results:
        per_count = {}
        for layout, threads, _, found in rows:  # compute and memory: for either layout
            if layout != "NCHW":
                continue
            kind, limit = binding(found)
            if kind:
                other = found["memory" if kind == "compute" else "compute"]
                per_count[threads] = (f"{kind} at {threads} thr ({_ms(limit)} ms vs "
                                      f"{_ms(other)} ms)")
        reads = [(t.median_s / found["tap_reads"], threads) for layout, threads, t, found in rows
                 if found.get("tap_reads")]
        multiples = [(t.median_s / binding(found)[1], layout, threads)
                     for layout, threads, t, found in rows if binding(found)[1]]
        if not multiples:
            continue
        best, worst = min(multiples), max(multiples)
        levels = rows[0][3]["levels"]
        lines.append(
            f"- **{wl.name}**: " + "; ".join(per_count.values())
            + f". Distinct {report.fmt_bytes(work['distinct_bytes'])} from {levels[0]}, output "
            f"{report.fmt_bytes(work['output_bytes'])} to {levels[1]}; the taps move "
            f"{work['tap_bytes'] / max(work['distinct_bytes'], 1):.1f}× the distinct bytes. "
            f"Measured: {best[0]:.1f}× ({best[1]}, {best[2]} thr) to {worst[0]:.1f}× "
            f"({worst[1]}, {worst[2]} thr) the binding limit"
            + ("; channels-last, "
               + ", ".join(f"{ratio:.2f}× at {threads} thr" for ratio, threads in reads)
               + " the time the probe takes to read the same taps in the same order"
               if reads else "") + ".")
    return lines


def render(env, machine, caches, cache_source, compile_command, results, quick):
    """The whole section as Markdown."""
    probe = QUICK if quick else FULL
    lines = [SECTION, ""]
    if quick:
        lines += [f"> **Quick run** (`--quick`): K divided by {workloads.QUICK_DIVISOR}, small "
                  "probe sizes, few repeats. A smoke test, not numbers to quote.", ""]
    lines += [
        "Measured by `benchmarks/roofline.py` in one run: the probe first, then roialign_cy's "
        "roi_align forward on each workload (float32; median of 5 to 15 calls after a "
        "warm-up), each set against the probe's limits at the same thread count.",
        "",
        report.environment_table(env),
        "",
    ]
    lines += report.busy_note(env)
    lines += probe_section(machine, caches, cache_source, compile_command, probe)
    lines += [
        "### The work of each workload (counted from its boxes)",
        "",
        "Samples: bins x grid samples inside [-1, H] x [-1, W] (adaptive grid ceil(roi / out) "
        "for sampling_ratio <= 0; legacy boxes at least 1x1), from numpy_baseline's geometry. "
        f"Vector ops: per sample and channel {TAPS} multiplies + {TAPS} adds, in vectors of "
        f"{LANES} floats. Tap bytes: {TAPS} taps x channels x {FLOAT_BYTES} bytes per sample. "
        "Distinct bytes: the distinct (image, y, x) pixels any tap touches x channels x "
        f"{FLOAT_BYTES} bytes (in brackets the largest single image's share, the working set "
        "that picks the level). Output bytes: K x C x PH x PW x 4.",
        "",
    ]
    lines += work_table(results)
    lines += [
        "",
        "### roi_align forward against the limits",
        "",
        "Bounds in ms at the row's thread count, from the probe's best figures (at that "
        "count or fewer threads, whichever is higher: more threads can always do what fewer "
        "do). Compute: flops "
        "/ the mul+add peak. Memory: distinct bytes at the read bandwidth of the level the "
        "largest image's distinct working set fits in, plus the output bytes at the level the "
        "output fits in (read bandwidth used for the writes: optimistic). `binds`: the larger "
        "of the bounds. Tap reads alone (channels-last rows): measured, not derived: the probe "
        "(`probe_taps`) reads every sample's 4 taps, all channels, in the kernels' order "
        "(RoI, bin, sample; the RoIs by locality where the kernel pools them so) from the "
        "same features, on the row's thread count, and only sums "
        "them: what the caches, prefetchers and DRAM give this access pattern, with nothing "
        "computed. Where it exceeds the memory bound, the taps' scattered reads, not the bytes "
        "alone, are the limit (a bound for this order of reads: another order could read "
        "faster). Taps at L2: every tap's bytes at L2 read bandwidth, a second view (taps "
        "that hit L1 go faster, so it is no strict bound).",
        "",
    ]
    lines += timing_table(results)
    lines += ["", "### What binds each workload (from the numbers above)", ""]
    lines += summary(results)
    if env.get("threads_skipped_note"):
        lines += ["", f"Note: {env['threads_skipped_note']}."]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"K / {workloads.QUICK_DIVISOR}, small probe sizes, few repeats: a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print only; RESULTS.md untouched")
    environment.add_threads_option(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    thread_counts, skipped = environment.thread_counts(args.threads)
    env = environment.describe()
    env.update(thread_counts=thread_counts, threads_asked=args.threads,
               threads_skipped_note=environment.skipped_note(skipped))
    if skipped:
        progress(f"note: {env['threads_skipped_note']}")
    caches, cache_source = cache_sizes()
    with tempfile.TemporaryDirectory(prefix="roofline-") as directory:
        lib, compile_command = compile_probe(directory)
        if lib is None:
            print(f"roofline.py: no probe ({compile_command}); nothing measured.")
            return 0
        progress(f"probe: {compile_command}")
        machine = measure_machine(lib, caches, thread_counts, QUICK if args.quick else FULL)
        results = time_workloads(lib, WORKLOADS, thread_counts, args.quick, machine, caches)
    env["load_end"] = environment.load_average()
    env["wall_s"] = time.perf_counter() - started
    env["command"] = report.command_line("roofline.py", argv)
    report.publish(render(env, machine, caches, cache_source, compile_command, results,
                          args.quick), SECTION, write=not args.no_write and not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
