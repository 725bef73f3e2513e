"""Turn measurements into the Markdown report (RESULTS.md) and the speedup chart (PNG)."""

import math
import os
import sys

from records import LAYOUTS

SHORT = {"roialign_cy": "ours", "torchvision": "tv", "onnxruntime": "ort", "numpy": "numpy"}
PEERS = ("torchvision", "onnxruntime", "numpy")
OPERATION_TITLES = {
    ("roi_align", "forward"): "roi_align, forward",
    ("roi_align", "backward"): "roi_align, backward (gradient w.r.t. the features)",
    ("roi_pool", "forward"): "roi_pool, forward",
    ("roi_pool", "backward"): "roi_pool, backward (gradient w.r.t. the features)",
}

ORT_NOTES = """\
ONNX Runtime's CPU RoiAlign is Caffe2's/torchvision's algorithm (a per-RoI table of 4 tap
offsets + 4 weights per sample, shared by all channels), so in average mode it gives the same
numbers as torchvision and roialign_cy *once the model says the same thing*. The differences
are in what the model can express and in the defaults:

- **Legacy vs aligned is an opset question.** RoiAlign-10 has no
  `coordinate_transformation_mode`: it is always the legacy mode (torchvision's
  `aligned=False`, no half-pixel shift). RoiAlign-16 added the attribute and its *default
  is `half_pixel`* (= `aligned=True`), so an opset-16 model that omits it is *not*
  torchvision's default `aligned=False`; an opset-10 model cannot express `aligned=True`.
  torchvision's exporter for opset < 16 emulated `aligned=True` by subtracting
  `0.5 / spatial_scale` from the boxes, which is wrong for boxes under one pixel because the
  legacy mode then stretches them to 1x1 (torchvision PRs #2613, #3355, #4692;
  onnx/onnx#3428; onnxruntime#6921 reports the missing half-pixel shift of the old op).
  This benchmark uses opset 16 with the attribute set explicitly (`half_pixel` for
  `aligned=True`, `output_half_pixel` for `aligned=False`).
- **Adaptive sampling is `sampling_ratio=0`.** ONNX has no negative sampling ratio:
  ONNX Runtime refuses `-1` at session creation ("Sampling ratio should be >=0");
  torchvision's `-1` must be exported as `0` (same `ceil(roi_size / output_size)` grid).
- **In legacy mode** ORT, like torchvision, stretches boxes smaller than 1x1 to 1x1
  (`max(roi_end - roi_start, 1)`). ORT PR #27554 (open) proposes dropping that clamp for
  `output_half_pixel` ("zero-size ROIs should produce valid point sampling") and clamping the
  adaptive grid to >= 1, which would make legacy-mode results for tiny or degenerate boxes
  differ from torchvision's; in the ONNX Runtime tested here they still agree.
- **Max mode differs** (not benchmarked here): ONNX/ORT take the maximum of the
  *individually weighted* corner terms `max(w1*v1, w2*v2, w3*v3, w4*v4)` of each sample,
  about a quarter of the interpolated value at centred samples (onnxruntime#6146, #14265;
  ORT prints "The existing summation for max mode and sampling ratios besides 1 is
  incorrect"); roialign_cy and mmcv take the maximum of the bilinearly interpolated samples.
- **Threads and layout:** NCHW only; the thread pool is ORT's own (`intra_op_num_threads`),
  splitting work by RoI.
"""


def fmt_time(seconds, tiny):
    """A per-call time in ms (µs for the tiny workload), 3 significant digits, no exponent."""
    value = seconds * (1e6 if tiny else 1e3)
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value):
    """A ratio such as 3.41× (or 12.3×)."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.1f}×" if value >= 10 else f"{value:.2f}×"


def fmt_bytes(n):
    """Bytes as KiB / MiB."""
    if n is None:
        return "—"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} B"


def _cell(case, measurement):
    """A time cell: 'time (n× floor)' plus a mark for borrowed figures, or the status."""
    if measurement.status == "mismatch":
        return "**mismatch**"
    if measurement.status == "error":
        return "**error**"
    if measurement.status == "unchecked":
        return "unchecked"
    if measurement.status != "ok":
        return "—"
    text = fmt_time(measurement.seconds, case.tiny)
    if case.floor_s:
        text += f" ({fmt_ratio(measurement.seconds / case.floor_s)})"
    if measurement.borrowed == "NCHW":
        text += " †"
    elif measurement.borrowed:
        text += " ‡"
    return text


def _ratio(numerator, denominator):
    """numerator.seconds / denominator.seconds when both are timed, else None."""
    if numerator.status != "ok" or denominator.status != "ok" or not denominator.seconds:
        return None
    return numerator.seconds / denominator.seconds


def _present_peers(cases):
    """Peers with at least one non-absent cell in these cases (the others get no column)."""
    return [p for p in PEERS
            if any(m.status != "absent" for c in cases for (impl, _, _), m in c.times.items()
                   if impl == p)]


def results_table(cases, thread_counts):
    """One Markdown table for the cases of one (op, direction)."""
    peers = _present_peers(cases)
    speedups = len(thread_counts) > 1 and 1 in thread_counts
    header = ["workload", "layout", "threads", "floor", "roialign_cy"] + peers
    header += [f"{SHORT[p]} / ours" for p in peers] + ["ours / floor"]
    if speedups:  # our speedup over our own 1-thread time, on every row with more threads
        header.append("ours N thr vs 1")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in cases:
        unit = "µs" if case.tiny else "ms"
        for layout in LAYOUTS:
            for threads in thread_counts:
                ours = case.get("roialign_cy", layout, threads)
                row = [f"{case.workload} ({unit})", layout, str(threads),
                       fmt_time(case.floor_s, case.tiny) if case.floor_s else "—",
                       _cell(case, ours)]
                row += [_cell(case, case.get(p, layout, threads)) for p in peers]
                row += [fmt_ratio(_ratio(case.get(p, layout, threads), ours)) for p in peers]
                row.append(fmt_ratio(ours.seconds / case.floor_s)
                           if ours.status == "ok" and case.floor_s else "—")
                if speedups:
                    speedup = (_ratio(case.get("roialign_cy", layout, 1), ours)
                               if threads > 1 else None)
                    row.append(fmt_ratio(speedup) if speedup else "")
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def checks_table(cases):
    """All correctness checks, one row each."""
    lines = ["| operation | workload | check | max abs diff | result |", "|---|---|---|---|---|"]
    for case in cases:
        for check in case.checks:
            diff = "—" if check.max_abs_diff is None else f"{check.max_abs_diff:.3g}"
            result = "ok" if check.ok else "**MISMATCH**"
            if check.detail:
                result += f" ({check.detail})"
            lines.append(f"| {case.op} {case.direction} | {case.workload} | {check.what} | "
                         f"{diff} | {result} |")
    return "\n".join(lines)


def memory_table(memory):
    """Peak extra memory per roialign_cy call, beyond the output."""
    lines = ["| operation | workload | layout | threads | output | peak extra beyond output | method |",
             "|---|---|---|---|---|---|---|"]
    for m in memory:
        extra = f"error: {m.error}" if m.error else fmt_bytes(m.extra_bytes)
        lines.append(f"| {m.op} {m.direction} | {m.workload} | {m.layout} | {m.threads} | "
                     f"{fmt_bytes(m.output_bytes)} | {extra} | {m.method} |")
    return "\n".join(lines)


def slower_than_peers(cases, thread_counts):
    """Bullet lines for every like-for-like cell (same layout and thread count) a peer won."""
    found = []
    for case in cases:
        for layout in LAYOUTS:
            for threads in thread_counts:
                ours = case.get("roialign_cy", layout, threads)
                for peer in PEERS:
                    theirs = case.get(peer, layout, threads)
                    if theirs.borrowed == "NCHW":  # not like-for-like: NCHW figure, NHWC row
                        continue
                    ratio = _ratio(theirs, ours)
                    if ratio is not None and ratio < 1:
                        found.append(
                            f"- {case.op} {case.direction}, {case.workload}, {layout}, "
                            f"{threads} thread(s): {peer} {fmt_time(case.get(peer, layout, threads).seconds, case.tiny)}"
                            f" vs roialign_cy {fmt_time(ours.seconds, case.tiny)} "
                            f"{'µs' if case.tiny else 'ms'} ({SHORT[peer]}/ours {fmt_ratio(ratio)})")
    return found


def errors_list(cases):
    """Bullet lines for every call that raised, identical messages merged per case."""
    lines = []
    for case in cases:
        seen = {}
        for (impl, layout, threads), m in case.times.items():
            if m.status == "error" and not m.borrowed:
                seen.setdefault((impl, m.detail), []).append(f"{layout}/{threads} thr")
        for (impl, detail), where in seen.items():
            lines.append(f"- {case.op} {case.direction}, {case.workload}, {impl} "
                         f"({', '.join(where)}): `{detail}`")
    return lines


def environment_table(env, software=None):
    """The machine and versions as a two-column table. `software` (label, value) rows take
    the place of the peers' versions and the thread counts, for a benchmark with other
    company (the Dask one)."""
    def version(name):
        """The version of `name`, or "not installed"."""
        return env.get(name) or "not installed"

    openmp = "on" if env["openmp"] else "off (serial build)"
    rows = [
        ("machine", env["machine"]),
        ("CPU", env["cpu"]),
        ("cores", f"{env['cpu_count']} (usable by this process: {env['usable_cores']})"),
        ("OS", env["os"]),
        ("load average (1 min) at start / end", f"{env['load_start']} / {env.get('load_end', '?')}"),
        ("Python", env["python"]),
        ("NumPy", env["numpy"]),
        ("roialign_cy", f"{env['roialign_cy']}, OpenMP {openmp}, "
                        f"omp_get_max_threads() = {env['omp_max_threads']}, "
                        f"kernels: {env.get('simd', '?')} build"),
    ]
    if software is None:
        rows += [
            ("torch / torchvision", f"{version('torch')} / {version('torchvision')}"),
            ("onnxruntime / onnx", f"{version('onnxruntime')} / {version('onnx')}"),
            ("matplotlib", version("matplotlib")),
            ("thread counts", ", ".join(str(t) for t in env["thread_counts"])
             + (f" (`--threads {env['threads_asked']}`)" if env.get("threads_asked")
                else " (1 and the usable cores)")
             + (f"; {env['threads_skipped_note']}" if env.get("threads_skipped_note") else "")),
        ]
    else:
        rows += list(software)
    rows += [
        ("date", env["date"]),
        ("command", f"`{env['command']}` ({env['wall_s']:.0f} s wall)"),
    ]
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _busy(env):
    """Whether the load average shows other work on the machine during the run."""
    try:
        load = max(float(env["load_start"]), float(env.get("load_end", 0)))
    except (TypeError, ValueError):
        return False
    return load > 0.5 * env["cpu_count"]


def busy_note(env):
    """The warning paragraph for a run on a busy machine, as a list of lines ([] when idle)."""
    if not _busy(env):
        return []
    return [
        f"> The machine was not idle during this run (1-minute load average "
        f"{env['load_start']} at the start, {env.get('load_end', '?')} at the end, on "
        f"{env['cpu_count']} cores): other processes competed for the cores, so absolute "
        "times are inflated and the all-cores rows (and our multi-thread speedup) "
        "understate what an idle machine gives. Ratios between implementations measured "
        "back to back are the more robust figures.",
        "",
    ]


def render(env, workloads, cases, memory, options):
    """The whole Markdown report as one string."""
    thread_counts = env["thread_counts"]
    parts = ["# roialign_cy benchmarks", ""]
    if options["quick"]:
        parts += [f"> **Quick run** (`--quick`): same feature maps and parameters, K divided by "
                  f"{options['quick_divisor']}, one or few repeats. A smoke test, not numbers to "
                  "quote.", ""]
    if options.get("filtered"):
        parts += [f"> Workloads filtered to: {', '.join(w.name for w in workloads)}.", ""]
    parts += [
        "Each function is timed in-process on fixed, seeded float32 workloads: warm-up, then "
        "the median of repeated calls (3 repeats for calls over 0.2 s, and a single timed "
        "call, the one that was checked, for calls over 1 s; calls under 2 ms are looped so "
        "the clock resolution does not matter). Every time is also given as a "
        "multiple of the **floor**, the time to write the output once (`np.copyto` of an "
        "output-sized float32 array; for a backward the output is the input-sized gradient). "
        "No assertions on times anywhere.",
        "",
        "## Machine",
        "",
        environment_table(env),
        "",
    ]
    parts += busy_note(env)
    parts += [
        "## Workloads",
        "",
        "| name | what | shapes and parameters |",
        "|---|---|---|",
    ]
    parts += [f"| {w.name} | {w.description} | {w.summary()} |" for w in workloads]
    parts += [
        "",
        "Realistic boxes (`box_head_fpn`, `mask_head_fpn`, `c4_head`): square-root area "
        "log-uniform in 16..600 px, aspect ratio log-uniform in 1/3..3, centre uniform in an "
        "800 x 1216 image, clipped to it. `many_small`: sides uniform in 2..16 px inside the "
        "64 x 64 map. NHWC features (and gradients) are transposed copies made once, outside "
        "the timing.",
        "",
        "## Results",
        "",
        "Times in ms (µs for `seed`); `(n×)` after a time is that time over the floor. "
        "`tv / ours`, `ort / ours`, `numpy / ours` are the peer's time over ours at the same "
        "thread count (above 1× = roialign_cy faster); `ours N thr vs 1` is our speedup from "
        "1 thread to that row's N threads.",
        "",
        "- † torchvision and ONNX Runtime only take NCHW: the NHWC rows repeat their NCHW "
        "figure (and the ratio compares it with our NHWC time).",
        "- ‡ the NumPy baseline is single-threaded: its 1-thread figure is repeated.",
        "- `—`: not installed, or no such operation (ONNX has no RoiAlign gradient; the NumPy "
        "baseline implements roi_align only). **mismatch**: output differs from roialign_cy "
        "(see the checks), so it was not timed. **error**: the call raised (see Errors). "
        "unchecked: roialign_cy's own call failed, so the peer could not be checked and was "
        "not timed.",
        "- Every call allocates its result (no `out=`), as the peers' calls do. torchvision: "
        "`torch.set_num_threads(n)` (its CPU RoIAlign/RoIPool kernels are serial anyway); ONNX "
        "Runtime: one-node opset-16 model, `intra_op_num_threads=n`; roialign_cy: "
        "`num_threads=n`.",
        "- roi_pool backward: both torchvision and roialign_cy receive the arg-max indices "
        "their own forward recorded (computed outside the timing; roialign_cy's "
        "`roi_pool(..., return_argmax=True)` and `roi_pool_backward(..., argmax=)`).",
    ]
    if env.get("threads_skipped_note"):
        parts.append(f"- Threads: {env['threads_skipped_note']} (they would only time "
                     "oversubscription).")
    parts.append("")
    sections = []
    for key, title in OPERATION_TITLES.items():
        selected = [c for c in cases if (c.op, c.direction) == key]
        if selected:
            sections.append(key)
            parts += [f"### {title}", "", results_table(selected, thread_counts), ""]
    slower = slower_than_peers(cases, thread_counts)
    parts += ["### Where a peer is faster than roialign_cy (same layout and thread count)", ""]
    parts += slower if slower else ["None: roialign_cy is at least as fast everywhere measured."]
    parts += ["", "## Correctness checks (made before timing)", "",
              "Each peer's output is compared with roialign_cy's (`np.allclose`, rtol = atol = "
              "1e-4, float32); our NHWC result with our NCHW result, and our 1-thread result "
              "with our all-cores result (both must be bit-identical).", "",
              checks_table(cases), ""]
    bad = [f"{c.op} {c.direction} {c.workload}: {k.what}" for c in cases for k in c.checks
           if not k.ok]
    parts += [("**Mismatches:** " + "; ".join(bad)) if bad else "All checks passed.", ""]
    errors = errors_list(cases)
    if errors:
        parts += ["## Errors", ""] + errors + [""]
    parts += ["## Peak extra memory of a roialign_cy call", ""]
    if memory:
        parts += [
            "Resident memory above the output, measured in a fresh subprocess per row: the "
            "result array is preallocated and passed as `out=`, the peak-RSS mark is reset "
            "(`/proc/self/clear_refs`), one call is made, and the peak (`VmHWM`) minus the RSS "
            "before the call is reported (page granularity 4 KiB; it includes the OpenMP team's "
            "first-touch of thread stacks and per-thread scratch).",
            "", memory_table(memory), ""]
    else:
        parts += [options.get("memory_note", "Not measured in this run."), ""]
    parts += ["## ONNX Runtime's RoiAlign: what differs", "", ORT_NOTES]
    if options.get("chart"):
        parts += ["", f"![speedup over torchvision]({options['chart']})", ""]
    return "\n".join(parts).rstrip() + "\n"


def chart(cases, thread_counts, path):
    """Bar chart of torchvision time / roialign_cy time per workload; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    except Exception:  # matplotlib is optional
        return False
    keys = [k for k in OPERATION_TITLES
            if any((c.op, c.direction) == k and c.get("torchvision", "NCHW", 1).status == "ok"
                   for c in cases)]
    if not keys:
        return False
    series = [(layout, t) for layout in LAYOUTS for t in thread_counts]
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 3.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        selected = [c for c in cases if (c.op, c.direction) == key]
        width = 0.8 / len(series)
        for i, (layout, threads) in enumerate(series):
            values = [_ratio(c.get("torchvision", layout, threads),
                             c.get("roialign_cy", layout, threads)) or 0 for c in selected]
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(selected))]
            bars = ax.bar(xs, values, width, label=f"{layout}, {threads} thread(s)")
            for bar, value in zip(bars, values):
                if value:
                    ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value),
                                ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 0.5), high * 3)  # headroom for the legend
        ax.yaxis.set_major_locator(FixedLocator([0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(selected)))
        ax.set_xticklabels([c.workload for c in selected])
        ax.set_ylabel("torchvision time / ours")
        ax.set_title(f"{OPERATION_TITLES[key]}: speedup over torchvision (same thread count)")
        ax.legend(fontsize=8, ncol=len(series), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def replace_section(path, heading, text):
    """Put `text` (which starts with the line `heading`) in place of that section of the
    Markdown file at `path`, where it stands, or append it: how the other benchmark scripts
    keep their part of RESULTS.md current."""
    old = open(path).read() if os.path.exists(path) else ""
    text = text.rstrip("\n") + "\n"
    if heading in old:
        start = old.index(heading)
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text + ("\n" + old[end + 1:] if end >= 0 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(new)


def keep_other_sections(old, new):
    """`new` (run.py's whole report) followed by the sections of `old` that `new` does not
    hold: the other scripts' sections and the written analyses survive a full run."""
    ours = {line for line in new.splitlines() if line.startswith("## ")}
    kept, keeping = [], False
    for line in old.splitlines():
        if line.startswith("## "):
            keeping = line not in ours
        if keeping:
            kept.append(line)
    return new.rstrip("\n") + "\n" + ("\n" + "\n".join(kept).rstrip("\n") + "\n" if kept else "")


def command_line(script, argv):
    """How the run was started, for the environment table."""
    args = sys.argv[1:] if argv is None else argv
    return f"python benchmarks/{script}" + "".join(f" {a}" for a in args)


def publish(text, heading, write):
    """Print a benchmark's section and, when `write`, put it in RESULTS.md."""
    print(text)
    if write:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
        replace_section(path, heading, text)
        print(f"wrote the section to {path}", file=sys.stderr, flush=True)
