"""Benchmark the operators beyond torchvision against roi_align on the same boxes.

    python benchmarks/beyond_ops.py                 # full run: prints Markdown, updates RESULTS.md
    python benchmarks/beyond_ops.py --quick --no-write   # smoke test (CI)

No peer has a CPU version of either operator, so the yardstick is the issue's (13): on the
box_head_fpn workload (features (2, 256, 200, 304) float32, 1000 boxes, 7x7, spatial_scale
1/4), roi_align_rotated at angle 0 within 1.5x of roi_align(aligned=True) on the same boxes,
and prroi_pool within 3x of roi_align with sampling_ratio=2; both scaling with threads.
Random angles and the backward are timed too. Times are medians (timing.py); no assertions.
"""

import argparse
import sys

import numpy as np

import environment
import report
import timing
import workloads

SECTION = "## Beyond torchvision: rotated RoIAlign and PrRoIPool (benchmarks/beyond_ops.py)"


def cases(quick):
    """[(name, ours(n) -> callable, yardstick(n) -> callable, target ratio or None)]."""
    import roialign_cy as r

    wl = workloads.box_head_fpn(quick)
    for layout in ("NCHW", "NHWC"):
        x = wl.features(layout)
        boxes = wl.boxes
        # the same boxes as centre, size, angle rows
        rotated = np.column_stack([boxes[:, 0], (boxes[:, 1] + boxes[:, 3]) / 2,
                                   (boxes[:, 2] + boxes[:, 4]) / 2, boxes[:, 3] - boxes[:, 1],
                                   boxes[:, 4] - boxes[:, 2], np.zeros(len(boxes))])
        turned = rotated.copy()
        turned[:, 5] = np.random.default_rng(7).uniform(-180, 180, len(boxes))
        grad = wl.grad_output(layout)
        shape = x.shape

        def align(n, x=x, boxes=boxes, layout=layout):
            return lambda: r.roi_align(x, boxes, 7, 0.25, 2, True, layout=layout, num_threads=n)

        def align_back(n, grad=grad, boxes=boxes, shape=shape, layout=layout):
            return lambda: r.roi_align_backward(grad, boxes, shape, 7, 0.25, 2, True,
                                                layout=layout, num_threads=n)
        yield (f"roi_align_rotated, angle 0, {layout}",
               lambda n, x=x, b=rotated, layout=layout: lambda: r.roi_align_rotated(
                   x, b, 7, 0.25, 2, layout=layout, num_threads=n), align, 1.5)
        yield (f"roi_align_rotated, random angles, {layout}",
               lambda n, x=x, b=turned, layout=layout: lambda: r.roi_align_rotated(
                   x, b, 7, 0.25, 2, layout=layout, num_threads=n), align, None)
        yield (f"roi_align_rotated_backward, random angles, {layout}",
               lambda n, g=grad, b=turned, s=shape, layout=layout: lambda:
               r.roi_align_rotated_backward(g, b, s, 7, 0.25, 2, layout=layout, num_threads=n),
               align_back, None)
        yield (f"prroi_pool, {layout}",
               lambda n, x=x, b=boxes, layout=layout: lambda: r.prroi_pool(
                   x, b, 7, 0.25, layout=layout, num_threads=n), align, 3.0)
        yield (f"prroi_pool_backward, {layout}",
               lambda n, g=grad, b=boxes, s=shape, layout=layout: lambda: r.prroi_pool_backward(
                   g, b, s, 7, 0.25, layout=layout, num_threads=n), align_back, None)


def run(quick):
    policy = timing.QUICK if quick else timing.FULL
    threads = sorted({1, environment.usable_cores()})
    rows = []
    for name, ours, yardstick, target in cases(quick):
        for n in threads:
            mine = timing.measure(ours(n), policy).median_s
            base = timing.measure(yardstick(n), policy).median_s
            rows.append((name, n, mine, base, target))
            print(f"{name}, {n} thr: {mine * 1e3:.2f} ms vs {base * 1e3:.2f} ms", file=sys.stderr,
                  flush=True)
    return rows


def render(rows, env):
    lines = [SECTION, "",
             f"{env['date']}; {env['cpu']} ({env['machine']}), {env['usable_cores']} usable cores; "
             f"Python {env['python']}, NumPy {env['numpy']}, roialign_cy {env['roialign_cy']} "
             f"(simd {env['simd']}). box_head_fpn: (2, 256, 200, 304) float32, K = 1000, 7x7, "
             "spatial_scale 1/4, sampling_ratio 2. Yardstick: roi_align(aligned=True) (its "
             "backward for the backward rows) on the same boxes and threads.", "",
             "| operator | threads | ours (ms) | roi_align (ms) | ours / roi_align | target |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, n, mine, base, target in rows:
        goal = f"<= {target:g}x" if target else "—"
        lines.append(f"| {name} | {n} | {mine * 1e3:.2f} | {base * 1e3:.2f} | {mine / base:.2f}x "
                     f"| {goal} |")
    by_name = {}
    for name, n, mine, _, _ in rows:
        by_name.setdefault(name, {})[n] = mine
    scaling = [f"{name}: {times[1] / times[max(times)]:.2f}x on {max(times)} threads"
               for name, times in by_name.items() if len(times) > 1]
    if scaling:
        lines += ["", "Thread scaling (1-thread time / all-cores time): " + "; ".join(scaling) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="K / 10, few repeats: a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print only; RESULTS.md untouched")
    args = parser.parse_args(argv)
    report.publish(render(run(args.quick), environment.describe()), SECTION,
                   write=not args.no_write and not args.quick)


if __name__ == "__main__":
    main()
