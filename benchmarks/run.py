"""Benchmark roialign_cy against torchvision, ONNX Runtime and a NumPy baseline.

    python benchmarks/run.py                     # full run, writes RESULTS.md + speedup.png
    python benchmarks/run.py --quick --no-write  # smoke test (CI): under a minute, writes nothing
    python benchmarks/run.py --workloads seed,c4_head
    python benchmarks/run.py --threads 1,2,4,8,16   # thread scaling (counts above the cores: skipped)

Peers are optional: whatever is not installed is skipped, and the run still times
roialign_cy, the NumPy baseline and the floor. Progress goes to stderr, the Markdown report
to stdout. Exit status 1 only when a roialign_cy call raised (a peer's failure or a
mismatch is reported, never fatal); there are no assertions on times.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import environment
import peers
import report
import timing
import workloads
from records import LAYOUTS, Case, Check, Measurement, MemoryResult

HERE = os.path.dirname(os.path.abspath(__file__))
OPERATIONS = (("roi_align", "forward"), ("roi_align", "backward"),
              ("roi_pool", "forward"), ("roi_pool", "backward"))
RTOL = ATOL = 1e-4


def parse_args(argv):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"K divided by {workloads.QUICK_DIVISOR}, few repeats: a smoke test under a minute")
    parser.add_argument("--no-write", action="store_true",
                        help="print the report only; do not touch RESULTS.md or the PNG")
    parser.add_argument("--workloads", default="",
                        help="comma-separated subset of: " + ",".join(workloads.BUILDERS))
    parser.add_argument("--peers", default=",".join(peers.PEERS),
                        help="comma-separated peers to try (default: all; '' for none)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses (always skipped with --quick)")
    environment.add_threads_option(parser)
    parser.add_argument("--output-dir", default=HERE,
                        help="where RESULTS.md and speedup.png go (default: benchmarks/)")
    return parser.parse_args(argv)


def split_names(text, allowed, what):
    """The comma-separated names in `text`, each checked against `allowed`."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return names


def progress(message):
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def timed_call(fn):
    """(result as ndarray, seconds, None) or (None, None, 'Error: message')."""
    try:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        return np.asarray(result), seconds, None
    except Exception as exc:  # reported, never fatal here
        return None, None, f"{type(exc).__name__}: {exc}"


def compare(what, got, reference, exact=False):
    """A Check of `got` against `reference` (bit-identical when `exact`, else allclose).

    Written to be cheap on the 124 MB gradients: no float64 copies unless there is a
    difference to report.
    """
    if got.shape != reference.shape:
        return Check(what, False, None, f"shape {got.shape} vs {reference.shape}")
    if got.size == 0:
        return Check(what, True, 0.0)
    if exact:
        if np.array_equal(got, reference, equal_nan=True):
            return Check(what, True, 0.0)
        diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
        return Check(what, False, float(np.nanmax(diff)), "bit-identical required")
    diff = np.abs(got - reference)
    tolerance = np.abs(reference)
    tolerance *= RTOL
    tolerance += ATOL
    within = diff <= tolerance  # False wherever either side is NaN
    ok = bool(within.all())
    if not ok:  # NaN on both sides at the same places is agreement
        both_nan = np.isnan(got) & np.isnan(reference)
        ok = bool((within | both_nan).all())
    max_diff = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan")
    return Check(what, ok, max_diff)


def floor_time(case, shape, policy):
    """Time np.copyto of an array of `shape` (the output) into a preallocated one."""
    source = np.ones(shape, dtype=np.float32)
    target = np.zeros(shape, dtype=np.float32)
    case.floor_bytes = target.nbytes
    case.floor_s = timing.measure(lambda: np.copyto(target, source), policy).median_s


def time_ours(wl, case, thread_counts, policy):
    """Check and time roialign_cy in both layouts at every thread count; returns references."""
    n_all = thread_counts[-1]
    references = {}
    for layout in LAYOUTS:
        first = {}
        for threads in reversed(thread_counts):  # all cores first: that is the reference
            fn = peers.make_ours(wl, case.op, case.direction, layout, threads)
            result, seconds, error = timed_call(fn)
            if error:
                case.times[("roialign_cy", layout, threads)] = Measurement("error", detail=error)
                progress(f"    roialign_cy {layout} {threads} thr: ERROR {error}")
                continue
            if threads == n_all:
                references[layout] = result
            elif layout in references:
                case.checks.append(compare(f"roialign_cy {layout}: {threads} vs {n_all} threads",
                                           result, references[layout], exact=True))
            first[threads] = (fn, seconds)
        for threads, (fn, seconds) in sorted(first.items()):
            t = timing.measure(fn, policy, first_call_s=seconds)
            case.times[("roialign_cy", layout, threads)] = Measurement(
                "ok", t.median_s, repeats=t.repeats, number=t.number)
            progress(f"    roialign_cy {layout} {threads} thr: {t.median_s * 1e3:.3f} ms")
    if "NCHW" in references and "NHWC" in references:
        nhwc_as_nchw = references["NHWC"].transpose(0, 3, 1, 2)
        case.checks.append(compare("roialign_cy NHWC vs NCHW (transposed)", nhwc_as_nchw,
                                   references["NCHW"], exact=True))
    return references


def time_peer(name, fn, case, reference, policy, key):
    """Check one peer callable against `reference`, then time it; stores a Measurement."""
    if fn is None:
        return
    result, seconds, error = timed_call(fn)
    if error:
        case.times[key] = Measurement("error", detail=error)
        case.checks.append(Check(f"{name} vs roialign_cy ({key[1]}, {key[2]} thr)", False,
                                 None, f"call raised {error}"))
        progress(f"    {name} {key[1]} {key[2]} thr: ERROR {error}")
        return
    if reference is None:  # our call failed: nothing to check against, so not timed
        case.times[key] = Measurement("unchecked", detail="no roialign_cy result to check against")
        return
    check = compare(f"{name} vs roialign_cy ({key[1]}, {key[2]} thr)", result, reference)
    case.checks.append(check)
    if not check.ok:
        case.times[key] = Measurement("mismatch", detail=f"max abs diff {check.max_abs_diff}")
        progress(f"    {name} {key[1]} {key[2]} thr: MISMATCH (max abs diff "
                 f"{check.max_abs_diff}), not timed")
        return
    t = timing.measure(fn, policy, first_call_s=seconds)
    case.times[key] = Measurement("ok", t.median_s, repeats=t.repeats, number=t.number)
    progress(f"    {name} {key[1]} {key[2]} thr: {t.median_s * 1e3:.3f} ms")


def time_peers(wl, case, references, thread_counts, enabled, policy):
    """torchvision / ONNX Runtime (NCHW, each thread count) and NumPy (each layout, once)."""
    makers = {"torchvision": peers.make_torchvision, "onnxruntime": peers.make_onnxruntime}
    for name, make in makers.items():
        if name not in enabled:
            continue
        for threads in thread_counts:
            try:
                fn = make(wl, case.op, case.direction, threads)
            except Exception as exc:  # e.g. a model the installed ORT refuses
                case.times[(name, "NCHW", threads)] = Measurement("error", detail=str(exc))
                progress(f"    {name} setup failed: {exc}")
                continue
            time_peer(name, fn, case, references.get("NCHW"), policy, (name, "NCHW", threads))
            if (name, "NCHW", threads) in case.times:
                nchw = case.times[(name, "NCHW", threads)]
                case.times[(name, "NHWC", threads)] = Measurement(
                    nchw.status, nchw.seconds, nchw.detail, nchw.repeats, nchw.number, "NCHW")
    if "numpy" in enabled:
        for layout in LAYOUTS:
            fn = peers.make_numpy(wl, case.op, case.direction, layout)
            key = ("numpy", layout, thread_counts[0])
            time_peer("numpy", fn, case, references.get(layout), policy, key)
            for threads in thread_counts[1:]:
                if key in case.times:
                    m = case.times[key]
                    case.times[("numpy", layout, threads)] = Measurement(
                        m.status, m.seconds, m.detail, m.repeats, m.number, "1 thread")


def run_case(wl, op, direction, thread_counts, enabled, quick):
    """Everything for one (workload, op, direction): checks, roialign_cy, floor, peers."""
    if wl.tiny:
        policy = timing.TINY_QUICK if quick else timing.TINY_FULL
    else:
        policy = timing.QUICK if quick else timing.FULL
    case = Case(wl.name, wl.summary(), wl.tiny, op, direction)
    progress(f"  {op} {direction}")
    references = time_ours(wl, case, thread_counts, policy)
    if op == "roi_align" and direction == "forward" and wl.name == "seed" and "NHWC" in references:
        expected = np.broadcast_to(workloads.SEED_EXPECTED_ROW, references["NHWC"].shape)
        case.checks.append(compare("seed notebook example = [[92.75, 93.75], [94.25, 95.25], ...]",
                                   references["NHWC"], expected, exact=True))
    shape = wl.output_shape("NCHW") if direction == "forward" else wl.input_shape("NCHW")
    floor_time(case, shape, policy)
    time_peers(wl, case, references, thread_counts, enabled, policy)
    return case


def measure_memory(names, operations, thread_counts, quick):
    """Run memory_probe.py once per (workload, op, direction, layout), two at a time."""
    jobs = [(name, op, direction, layout) for name in names for op, direction in operations
            for layout in LAYOUTS]
    results, running = [], []
    script = os.path.join(HERE, "memory_probe.py")
    n_all = thread_counts[-1]
    for job in jobs + [None, None]:
        if job is not None:
            cmd = [sys.executable, script, *job, str(n_all)] + (["--quick"] if quick else [])
            running.append((job, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True)))
        while running and (job is None or len(running) >= 2):
            (name, op, direction, layout), proc = running.pop(0)
            out, err = proc.communicate()
            record = MemoryResult(name, op, direction, layout, n_all)
            try:
                data = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                data = {"error": (err.strip().splitlines() or ["no output"])[-1]}
            record.error = data.get("error", "")
            record.extra_bytes = data.get("extra_bytes")
            record.output_bytes = data.get("output_bytes")
            record.method = data.get("method", "")
            results.append(record)
            progress(f"  memory {name} {op} {direction} {layout}: "
                     f"{record.error or report.fmt_bytes(record.extra_bytes)}")
            if job is None:
                break
    return results


def main(argv=None):
    """Run the selected workloads, print the report, write it unless --no-write."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    names = split_names(args.workloads, list(workloads.BUILDERS), "workload") or list(workloads.BUILDERS)
    enabled = split_names(args.peers, list(peers.PEERS), "peer")
    operations = [op for op in OPERATIONS if peers.has_ours(*op)]
    thread_counts, skipped = environment.thread_counts(args.threads)
    env = environment.describe()
    env["thread_counts"] = thread_counts
    env["threads_asked"] = args.threads
    env["threads_skipped_note"] = environment.skipped_note(skipped)
    if skipped:
        progress(f"note: {env['threads_skipped_note']}")
    progress(f"roialign_cy {env['roialign_cy']} (OpenMP {'on' if env['openmp'] else 'off'}), "
             f"{env['cpu']}, {env['usable_cores']} usable core(s), threads {thread_counts}, "
             f"{'QUICK' if args.quick else 'full'} run; peers: "
             + ", ".join(f"{p} {'yes' if p == 'numpy' or env.get(p) else 'no'}" for p in enabled))

    cases, built = [], []
    for name in names:
        wl = workloads.build(name, quick=args.quick)
        built.append(wl)
        progress(f"{name}: {wl.summary()}")
        for op, direction in operations:
            case_start = time.perf_counter()
            cases.append(run_case(wl, op, direction, thread_counts, enabled, args.quick))
            progress(f"  ({time.perf_counter() - case_start:.1f} s)")
        workloads.clear_cache()

    memory, memory_note = [], ""
    if args.quick or args.no_memory:
        memory_note = ("Not measured in this run (" + ("--quick" if args.quick else "--no-memory")
                       + "); the full run measures it.")
    else:
        memory = measure_memory(names, operations, thread_counts, args.quick)

    env["load_end"] = environment.load_average()
    env["wall_s"] = time.perf_counter() - started
    env["command"] = report.command_line("run.py", argv)
    options = {"quick": args.quick, "quick_divisor": workloads.QUICK_DIVISOR,
               "filtered": bool(args.workloads), "memory_note": memory_note}
    chart_path = os.path.join(args.output_dir, "speedup.png")
    if not args.no_write and report.chart(cases, thread_counts, chart_path):
        options["chart"] = "speedup.png"
    markdown = report.render(env, built, cases, memory, options)
    print(markdown)
    if not args.no_write:
        path = os.path.join(args.output_dir, "RESULTS.md")
        previous = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
        with open(path, "w", encoding="utf-8") as f:
            f.write(report.keep_other_sections(previous, markdown))
        progress(f"wrote {os.path.join(args.output_dir, 'RESULTS.md')}"
                 + (f" and {chart_path}" if "chart" in options else " (no chart: matplotlib or torchvision missing)"))
    progress(f"total {time.perf_counter() - started:.1f} s")
    ours_failed = any(m.status == "error" for c in cases
                      for (impl, _, _), m in c.times.items() if impl == "roialign_cy")
    return 1 if ours_failed else 0


if __name__ == "__main__":
    sys.exit(main())
