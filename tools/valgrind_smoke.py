"""Call every public entry point on small inputs, for valgrind memcheck (tools/sanitize.sh).

Covers both layouts, float16/32/64, avg and max, both forward kernels (per RoI and channel
blocks), boxes as an array, a per-image list and for one 3-D image, borders, inverted and
huge boxes, `out=`, odd strides, thread counts 1 and 2, and refused calls; and the other
operators (position-sensitive, multi-level, rotated, precise), forward and backward, in both
layouts and float32/64, with as many RoIs per image as select their packed kernels. Small on purpose:
memcheck runs code about 50 times slower. Prints "valgrind_smoke: all calls done" at the end.

    PYTHONMALLOC=malloc valgrind --tool=memcheck python tools/valgrind_smoke.py
"""

import numpy as np

import roialign_cy
from roialign_cy import RoIAlign, RoIPool, roi_align, roi_align_backward, roi_pool
from roialign_cy import (multiscale_roi_align, multiscale_roi_align_backward, prroi_pool,
                         prroi_pool_backward, ps_roi_align, ps_roi_align_backward, ps_roi_pool,
                         ps_roi_pool_backward, roi_align_rotated, roi_align_rotated_backward,
                         roi_pool_backward)


def other_operators(rng, boxes):
    """The operators beyond roi_align and roi_pool, each forward and backward: calls made."""
    calls = 0
    many = np.concatenate([boxes] * 8)  # RoIs dominate: packed channel blocks
    angles = rng.uniform(-180, 180, (len(many), 1))
    centres = (many[:, 1:3] + many[:, 3:5]) / 2
    sides = np.clip(many[:, 3:5] - many[:, 1:3], -1e30, 1e30)
    rotated = np.column_stack([many[:, :1], centres, np.abs(sides), angles])
    for dtype in (np.float32, np.float64):
        nchw = rng.standard_normal((2, 8, 6, 7)).astype(dtype)
        pyramid = [rng.standard_normal((2, 8, 12, 14)).astype(dtype), nchw]
        for layout in ("NCHW", "NHWC"):
            def to(x):
                return x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            x, levels = to(nchw), [to(level) for level in pyramid]
            shapes = [level.shape for level in levels]
            for threads in (1, 2):
                kw = dict(layout=layout, num_threads=threads)
                for chosen in (boxes, many):
                    out = ps_roi_align(x, chosen, 2, 0.5, 2, **kw)
                    ps_roi_align_backward(np.ones_like(out), chosen, x.shape, 2, 0.5, 2, **kw)
                    out = ps_roi_pool(x, chosen, 2, 0.5, **kw)
                    ps_roi_pool_backward(np.ones_like(out), chosen, x.shape, 2, 0.5, **kw)
                    out = multiscale_roi_align(levels, chosen, 2, 2, scales=[0.5, 0.25], **kw)
                    multiscale_roi_align_backward(np.ones_like(out), chosen, shapes, 2, 2,
                                                  scales=[0.5, 0.25], **kw)
                    out = prroi_pool(x, chosen, 2, 0.5, **kw)
                    prroi_pool_backward(np.ones_like(out), chosen, x.shape, 2, 0.5, input=x,
                                        box_grad=True, **kw)
                    calls += 8
                for chosen in (rotated[:len(boxes)], rotated):
                    for sampling_ratio in (-1, 2, 40):
                        out = roi_align_rotated(x, chosen, 2, 0.5, sampling_ratio, **kw)
                        roi_align_rotated_backward(np.ones_like(out), chosen, x.shape, 2, 0.5,
                                                   sampling_ratio, **kw)
                        calls += 2
    return calls


def main():
    rng = np.random.default_rng(0)
    calls = 0
    boxes = np.array([
        [0, 0.5, 0.5, 5.0, 4.0],        # ordinary
        [1, -3.0, -2.0, 12.0, 9.0],     # larger than the map
        [1, 6.0, 5.0, 6.0, 5.0],        # zero size on the last pixel
        [0, 4.0, 3.0, 1.0, 1.0],        # inverted
        [0, -1.0, -1.0, 7.0, 6.0],      # exactly on the outer borders
        [1, -1e30, -1e30, 1e30, 1e30],  # huge: sparse candidate search
        [0, 50.0, 50.0, 60.0, 60.0],    # far outside
        [1, -300.0, 1.0, 300.0, 2.0],   # long: > 64 samples per bin
    ])
    per_image = [boxes[boxes[:, 0] == b, 1:] for b in range(2)]
    for dtype in (np.float32, np.float64, np.float16):
        nchw = rng.standard_normal((2, 3, 6, 7)).astype(dtype)
        for layout in ("NCHW", "NHWC"):
            x = nchw if layout == "NCHW" else np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
            spare = np.concatenate([x, np.full((30,) + x.shape[1:], np.nan, dtype)])
            for mode in ("avg", "max"):
                for sampling_ratio, aligned in ((-1, False), (2, True), (0, True)):
                    kw = dict(layout=layout, mode=mode)
                    args = (2, 0.5, sampling_ratio, aligned)
                    many = np.concatenate([boxes] * 8)  # RoIs dominate: channel blocks
                    for threads in (1, 2):
                        out = roi_align(x, boxes, *args, num_threads=threads, **kw)
                        roi_align(spare, boxes, *args, num_threads=threads, **kw)  # per RoI
                        roi_align(x, many, *args, num_threads=threads, **kw)
                        roi_align(x, per_image, *args, **kw)
                        grad = rng.standard_normal(out.shape).astype(dtype)
                        roi_align_backward(grad, boxes, x.shape, *args, input=x,
                                           num_threads=threads, **kw)
                        grad = rng.standard_normal((len(many),) + out.shape[1:]).astype(dtype)
                        roi_align_backward(grad, many, x.shape, *args, input=x,  # blocks
                                           num_threads=threads, **kw)
                        calls += 6
            out = roi_pool(x, boxes, (2, 3), 0.5, layout=layout)
            grad = np.ones_like(out)
            roi_pool_backward(grad, boxes, x, (2, 3), 0.5, layout=layout, num_threads=2)
            roi_pool_backward(grad, boxes, np.asfortranarray(x), (2, 3), 0.5, layout=layout)
            roi_pool(x[:1].astype(">f8"), per_image[:1], 3, layout=layout)
            calls += 4
        # one 3-D image with (K, 4) boxes, `out=` reuse, odd strides
        single = nchw[0]
        result = np.empty((3, 3, 2, 2), dtype)
        roi_align(single, boxes[:3, 1:], 2, out=result)
        roi_align(single[:, ::-1, ::2], boxes[:3, 1:], 2, out=result)
        roi_pool(single, boxes[:3, 1:], 2, out=result)
        gradient = np.empty(single.shape, dtype)
        roi_align_backward(np.ones((3, 3, 2, 2), dtype), boxes[:3, 1:], single.shape, 2,
                           out=gradient)
        calls += 4
    layer = RoIAlign(3, 0.25, 2, True, mode="max")
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    layer.backward(np.ones_like(layer(x, boxes)), boxes, x.shape, input=x)
    pool = RoIPool(3, 0.25)
    pool.backward(np.ones_like(pool(x, boxes)), boxes, x)
    calls += 4
    calls += other_operators(rng, boxes)
    # refused calls: nothing may be touched
    for bad in ([[0, np.nan, 0, 1, 1]], [[2, 0, 0, 1, 1]], [[0.5, 0, 0, 1, 1]]):
        try:
            roi_align(x, np.array(bad), 2)
        except ValueError:
            calls += 1
    try:
        roi_align(x, boxes, 10**6, num_threads=1)  # ~128 TB: refused at once
    except MemoryError:
        pass
    calls += 1
    print(f"valgrind_smoke: all calls done ({calls} calls, "
          f"openmp={roialign_cy.show_config(print_out=False)['openmp']})")


if __name__ == "__main__":
    main()
