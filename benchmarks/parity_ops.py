"""Benchmark the torchvision-parity operators beside torchvision, in one process.

    python benchmarks/parity_ops.py                 # full run: prints Markdown, updates RESULTS.md
    python benchmarks/parity_ops.py --quick --no-write   # smoke test (CI)

Workloads (issue 12):
- rfcn_head: R-FCN's position-sensitive head, features (1, 7*7*21, 38, 50), K = 300, 7x7,
  spatial_scale 1/16: ps_roi_align (sampling_ratio 2) and ps_roi_pool, forward and backward;
- box_head_fpn_pyramid: a 4-level FPN pyramid (N = 2, C = 256, strides 4-32 of an 800x1216
  image: 200x304 ... 25x38), K = 1000 boxes over the levels, 7x7, sampling_ratio 2:
  multiscale_roi_align against torchvision's MultiScaleRoIAlign module, forward and backward
  (torch: autograd's backward of the module's output, the graph kept between repeats).

Every timed pair is first checked: the largest |ours - torchvision| is reported beside the
times. Times are medians (timing.py); ratios are torchvision's time over ours. No assertions.
"""

import argparse
import sys

import numpy as np

import environment
import report
import timing
import workloads

SECTION = "## Torchvision-parity operators (benchmarks/parity_ops.py)"


def rfcn_features(quick):
    rng = np.random.default_rng(11)
    features = rng.random((1, 7 * 7 * 21, 38, 50), dtype=np.float32)
    boxes = workloads.realistic_boxes(np.random.default_rng(111), 30 if quick else 300, 1,
                                      image_hw=(600, 800))
    grad = np.random.default_rng(12).random((len(boxes), 21, 7, 7), dtype=np.float32)
    return features, boxes, grad


def pyramid(quick):
    """(levels finest first, boxes (K, 5), per-image box lists, image sizes, grad (K, C, 7, 7))."""
    rng = np.random.default_rng(21)
    height, width = workloads.IMAGE_HW
    levels = [rng.random((2, 256, height // s, width // s), dtype=np.float32)
              for s in (4, 8, 16, 32)]
    per_image = 50 if quick else 500
    boxes = workloads.realistic_boxes(np.random.default_rng(121), per_image, 2,
                                      size_range=(16.0, 800.0))
    lists = [boxes[boxes[:, 0] == i, 1:].copy() for i in range(2)]
    grad = np.random.default_rng(22).random((len(boxes), 256, 7, 7), dtype=np.float32)
    return levels, boxes, lists, [workloads.IMAGE_HW] * 2, grad


def cases(quick):
    """[(operator, direction, ours(n) -> callable, torchvision(n) -> callable or None)]."""
    import roialign_cy

    torch = tv = None
    try:
        import torch
        import torchvision as tv
    except ImportError:
        pass
    features, boxes, grad = rfcn_features(quick)
    found = []

    def with_threads(make):
        def make_for(n):
            if torch is not None:
                torch.set_num_threads(n)
            return make(n)
        return make_for

    if torch is not None and hasattr(roialign_cy, "ps_roi_align"):
        ops = torch.ops.torchvision
        x, rois, g = torch.from_numpy(features), torch.from_numpy(boxes), torch.from_numpy(grad)
        n, c, h, w = features.shape
        _, mapping_align = ops.ps_roi_align(x, rois, 1 / 16, 7, 7, 2)
        _, mapping_pool = ops.ps_roi_pool(x, rois, 1 / 16, 7, 7)
        tv_calls = {
            ("ps_roi_align", "forward"): lambda: ops.ps_roi_align(x, rois, 1 / 16, 7, 7, 2)[0],
            ("ps_roi_align", "backward"): lambda: ops._ps_roi_align_backward(
                g, rois, mapping_align, 1 / 16, 7, 7, 2, n, c, h, w),
            ("ps_roi_pool", "forward"): lambda: ops.ps_roi_pool(x, rois, 1 / 16, 7, 7)[0],
            ("ps_roi_pool", "backward"): lambda: ops._ps_roi_pool_backward(
                g, rois, mapping_pool, 1 / 16, 7, 7, n, c, h, w),
        }
    else:
        tv_calls = {}
    ours = {
        ("ps_roi_align", "forward"): lambda n: lambda: roialign_cy.ps_roi_align(
            features, boxes, 7, 1 / 16, 2, num_threads=n),
        ("ps_roi_align", "backward"): lambda n: lambda: roialign_cy.ps_roi_align_backward(
            grad, boxes, features.shape, 7, 1 / 16, 2, num_threads=n),
        ("ps_roi_pool", "forward"): lambda n: lambda: roialign_cy.ps_roi_pool(
            features, boxes, 7, 1 / 16, num_threads=n),
        ("ps_roi_pool", "backward"): lambda n: lambda: roialign_cy.ps_roi_pool_backward(
            grad, boxes, features.shape, 7, 1 / 16, num_threads=n),
    }
    for key, make in ours.items():
        if not hasattr(roialign_cy, key[0]):
            continue
        peer = tv_calls.get(key)
        found.append((*key, "rfcn_head", with_threads(make),
                      None if peer is None else with_threads(lambda n, peer=peer: peer)))

    levels, boxes_fpn, lists, sizes, grad_fpn = pyramid(quick)
    shapes = [level.shape for level in levels]
    ours_ms = {
        "forward": lambda n: lambda: roialign_cy.multiscale_roi_align(
            levels, lists, 7, 2, image_sizes=sizes, num_threads=n),
        "backward": lambda n: lambda: roialign_cy.multiscale_roi_align_backward(
            grad_fpn, lists, shapes, 7, 2, image_sizes=sizes, num_threads=n),
    }
    tv_ms = {}
    if tv is not None:
        names = ["0", "1", "2", "3"]
        module = tv.ops.MultiScaleRoIAlign(names, 7, 2)
        as_dict = {name: torch.from_numpy(level) for name, level in zip(names, levels)}
        box_tensors = [torch.from_numpy(b) for b in lists]
        tv_ms["forward"] = lambda: module(as_dict, box_tensors, sizes)
        leaves = {name: t.clone().requires_grad_(True) for name, t in as_dict.items()}
        g_fpn = torch.from_numpy(grad_fpn)

        def tv_backward():
            output = module(leaves, box_tensors, sizes)  # the graph, built outside the timing
            return lambda: torch.autograd.grad(output, list(leaves.values()), g_fpn,
                                               retain_graph=True)
        tv_ms["backward"] = tv_backward
    for direction, make in ours_ms.items():
        peer = tv_ms.get(direction)
        if direction == "backward" and peer is not None:
            peer_make = with_threads(lambda n, peer=peer: peer())
        elif peer is not None:
            peer_make = with_threads(lambda n, peer=peer: peer)
        else:
            peer_make = None
        found.append(("multiscale_roi_align", direction, "box_head_fpn_pyramid",
                      with_threads(make), peer_make))
    return found


def as_arrays(result):
    """A result as a list of float64 arrays (a backward over levels returns several)."""
    if isinstance(result, (list, tuple)):
        return [np.asarray(r, dtype=np.float64) for r in result]
    return [np.asarray(result, dtype=np.float64)]


def run(quick):
    policy = timing.QUICK if quick else timing.FULL
    threads = sorted({1, environment.usable_cores()})
    rows = []
    for op, direction, workload, ours, peer in cases(quick):
        for n in threads:
            call = ours(n)
            mine = call()
            ours_t = timing.measure(call, policy)
            diff, peer_t = None, None
            if peer is not None:
                peer_call = peer(n)
                theirs = peer_call()
                diff = max(float(np.max(np.abs(a - b), initial=0.0))
                           for a, b in zip(as_arrays(mine), as_arrays(theirs)))
                peer_t = timing.measure(peer_call, policy)
            rows.append((op, direction, workload, n, ours_t.median_s, peer_t and peer_t.median_s,
                         diff))
            print(f"{op} {direction} {n} thr: ours {ours_t.median_s * 1e3:.2f} ms"
                  + (f", torchvision {peer_t.median_s * 1e3:.2f} ms" if peer_t else ""),
                  file=sys.stderr, flush=True)
    return rows


def render(rows, env):
    lines = [SECTION, "",
             f"{env['date']}; {env['cpu']} ({env['machine']}), {env['usable_cores']} usable cores; "
             f"Python {env['python']}, NumPy {env['numpy']}, roialign_cy {env['roialign_cy']} "
             f"(simd {env['simd']}), torch {env['torch']}, torchvision {env['torchvision']}.",
             "", "| operator | direction | workload | threads | ours (ms) | torchvision (ms) "
             "| ratio (tv / ours) | max abs diff |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for op, direction, workload, n, ours_s, peer_s, diff in rows:
        ratio = f"{peer_s / ours_s:.2f}x" if peer_s else "—"
        peer = f"{peer_s * 1e3:.2f}" if peer_s else "—"
        check = "—" if diff is None else f"{diff:.3g}"
        lines.append(f"| {op} | {direction} | {workload} | {n} | {ours_s * 1e3:.2f} | {peer} "
                     f"| {ratio} | {check} |")
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
