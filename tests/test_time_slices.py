"""A call cut into many time slices gives the bits of a call in one: every operator's kernels,
forward and backward, both layouts, float32 and float64, one and two threads.

A child interpreter runs the cases with ROIALIGN_CY_SLICE_SECONDS=0, so that every work item
that walks an image's RoIs pauses after each of its steps and is resumed by the next slice
(_work_items.run_items): the paused items' saved sums, the resume points and the paused list
are all exercised. This file is also the child's script (run as __main__).
"""

import os
import subprocess
import sys
from functools import partial

import numpy as np

from roialign_cy import _multiscale_roi_align, _prroi_pool, _ps_roi_align, _ps_roi_pool
from roialign_cy import _roi_align, _roi_align_rotated, _roi_pool, _runtime

N_IMAGES, N_ROIS, SIZE = 2, 24, 16


def _inputs(dtype, channels_last, channels=8):
    rng = np.random.default_rng(5)
    x = rng.random((N_IMAGES, channels, SIZE, SIZE)).astype(dtype)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    corners = np.sort(rng.uniform(-2, SIZE + 2, (N_ROIS, 2, 2)), axis=1)  # some leave the map
    boxes = np.column_stack([rng.integers(0, N_IMAGES, N_ROIS), corners[:, 0], corners[:, 1]])
    return x, boxes.astype(dtype), rng


def _grad(pooled, rng):
    """A random gradient for a pooled output."""
    return rng.standard_normal(pooled.shape).astype(pooled.dtype)


def cases():
    """(name, call) for every kernel the operators have (forced where a wrapper forces)."""
    out = []

    def add(name, function, *args, **kwargs):
        out.append((name, partial(function, *args, **kwargs)))
        return out[-1][1]()

    for dtype in (np.float32, np.float64):
        for layout in ("NCHW", "NHWC"):
            last = layout == "NHWC"
            for threads in (1, 2):
                tag = f"{np.dtype(dtype).name}-{layout}-{threads}"
                kw = dict(layout=layout, num_threads=threads)
                x, boxes, rng = _inputs(dtype, last)
                for variant in ("packed", "per_roi"):
                    kv = dict(kw, variant=variant)
                    for mode in ("avg", "max"):
                        pooled = add(f"roi_align-{mode}-{variant}-{tag}", _roi_align.forward,
                                     x, boxes, 3, 0.9, 2, mode=mode, **kv)
                        add(f"roi_align_backward-{mode}-{variant}-{tag}", _roi_align.backward,
                            _grad(pooled, rng), boxes, x.shape, 3, 0.9, 2, mode=mode, input=x,
                            **kv)
                    pooled, argmax = add(f"roi_pool-{variant}-{tag}", _roi_pool.forward, x,
                                         boxes, 3, 0.9, return_argmax=True, **kv)
                    g = _grad(pooled, rng)
                    add(f"roi_pool_backward-{variant}-{tag}", _roi_pool.backward, g, boxes, x,
                        3, 0.9, **kv)
                    add(f"roi_pool_backward_argmax-{variant}-{tag}", _roi_pool.backward, g,
                        boxes, x, 3, 0.9, argmax=argmax, **kv)
                    rotated = np.column_stack([boxes[:, 0], (boxes[:, 1:3] + boxes[:, 3:5]) / 2,
                                               boxes[:, 3:5] - boxes[:, 1:3] + 1,
                                               rng.uniform(-90, 90, N_ROIS)]).astype(dtype)
                    pooled = add(f"roi_align_rotated-{variant}-{tag}", _roi_align_rotated.forward,
                                 x, rotated, 3, 0.9, 2, **kv)
                    add(f"roi_align_rotated_backward-{variant}-{tag}",
                        _roi_align_rotated.backward, _grad(pooled, rng), rotated, x.shape, 3,
                        0.9, 2, **kv)
                    coarse = np.ascontiguousarray(x[:, ::2, ::2] if last else x[:, :, ::2, ::2])
                    scaled = np.column_stack([boxes[:, :1], boxes[:, 1:] * 8])
                    levels = dict(scales=[0.5, 0.25], canonical_scale=40, **kv)
                    pooled = add(f"multiscale-{variant}-{tag}", _multiscale_roi_align.forward,
                                 [x, coarse], scaled, 3, 2, **levels)
                    add(f"multiscale_backward-{variant}-{tag}", _multiscale_roi_align.backward,
                        _grad(pooled, rng), scaled, [x.shape, coarse.shape], 3, 2, **levels)
                pooled = add(f"prroi_pool-{tag}", _prroi_pool.forward, x, boxes, 3, 0.9, **kw)
                add(f"prroi_pool_backward-{tag}", _prroi_pool.backward, _grad(pooled, rng),
                    boxes, x.shape, 3, 0.9, input=x, box_grad=True, **kw)
                xs, boxes, rng = _inputs(dtype, last, channels=18)  # 2 x 3 x 3 channels
                for name, module, extra in (("ps_roi_pool", _ps_roi_pool, ()),
                                            ("ps_roi_align", _ps_roi_align, (2,))):
                    pooled = add(f"{name}-{tag}", module.forward, xs, boxes, 3, 0.9, *extra,
                                 **kw)
                    add(f"{name}_backward-{tag}", module.backward, _grad(pooled, rng), boxes,
                        xs.shape, 3, 0.9, *extra, **kw)
    for layout in ("NCHW", "NHWC"):  # a map whose packed bins come a few at a time
        big = np.random.default_rng(6).random((1, 256, 256, 18) if layout == "NHWC"
                                              else (1, 18, 256, 256), dtype=np.float32)
        boxes = np.array([[0, 10, 20, 200, 150], [0, 0, 0, 255, 255], [0, 99, 5, 120, 250]] * 4,
                         np.float32)
        pooled = _ps_roi_align.forward(big, boxes, 3, 1.0, 2, layout=layout, num_threads=1)
        add(f"ps_roi_align_backward-groups-{layout}", _ps_roi_align.backward,
            _grad(pooled, np.random.default_rng(7)), boxes, big.shape, 3, 1.0, 2,
            layout=layout, num_threads=1)
    return out


def _arrays(result):
    """The arrays of one result (an array, or a tuple / list / named tuple of them)."""
    if isinstance(result, np.ndarray):
        return [result]
    return [np.asarray(part) for part in result]


def _run_all(count_slices):
    """{case: arrays}, and {case: kernel calls it took} when count_slices."""
    calls = [0]
    if count_slices:
        check = _runtime.check_signals

        def counting():
            calls[0] += 1
            check()
        _runtime.check_signals = counting
    results, slices = {}, {}
    for name, thunk in cases():
        calls[0] = 0
        for i, array in enumerate(_arrays(thunk())):
            results[f"{name}/{i}"] = array
        slices[name] = calls[0] + 1
    return results, slices


def test_sliced_calls_are_bit_identical(tmp_path):
    whole, _ = _run_all(count_slices=False)
    saved = tmp_path / "sliced.npz"
    env = dict(os.environ, ROIALIGN_CY_SLICE_SECONDS="0")
    child = subprocess.run([sys.executable, __file__, str(saved)], env=env, capture_output=True,
                           text=True, timeout=600)
    assert child.returncode == 0, child.stdout + child.stderr
    lines = child.stdout.splitlines()
    slices = {name: int(n) for name, n in (line.rsplit(" ", 1) for line in lines)}
    with np.load(saved) as sliced:
        assert sorted(sliced.files) == sorted(whole)
        for key, array in whole.items():
            assert sliced[key].dtype == array.dtype and sliced[key].shape == array.shape, key
            np.testing.assert_array_equal(sliced[key], array, err_msg=key)
    # Each case ran in many slices: its items paused at their steps (RoIs, planes, groups of
    # bins). Unpaused, a grouped call would take one slice per (image, channel block) item,
    # 2-4. (ps_roi_align's packed forward does not pause: the wrapper gives it only calls
    # of bounded work, _ps_roi_align.PACKED_WORK.)
    assert slices["ps_roi_align_backward-groups-NCHW"] > 12 * 3, slices  # (group, RoI) steps
    long_items = {name: n for name, n in slices.items()
                  if not (name.startswith("ps_roi_align-") and "NCHW" in name)}
    assert min(long_items.values()) >= N_ROIS // 2, slices


if __name__ == "__main__":
    results, slices = _run_all(count_slices=True)
    np.savez(sys.argv[1], **results)
    for name, n in slices.items():
        print(name, n)
