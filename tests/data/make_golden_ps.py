"""Write tests/data/golden_ps_torchvision.npz: torchvision's own position-sensitive pooling
numbers (ps_roi_align, ps_roi_pool, forward and backward) for the tests to hold us to.

Rerun (from the repository root, with a Python that has torch, torchvision and numpy; the
tests themselves never import torch):

    python tests/data/make_golden_ps.py

The output is seeded, so a rerun with the same torch/torchvision versions reproduces the file.

Layout of the .npz (no pickles; load with ``np.load(path)``), as golden_torchvision.npz:

- ``meta``: a JSON string {"torch", "torchvision", "numpy", "seed", "cases": [...]}. Each case
  is {"name", "op", "dtype", "params": {...}} where op is one of "ps_roi_align",
  "ps_roi_align_backward", "ps_roi_pool", "ps_roi_pool_backward";
- ``<name>/input`` (N, C, H, W) with C = C_out * PH * PW, ``<name>/boxes`` (K, 5) rows
  [batch_index, x1, y1, x2, y2], both in the case's dtype;
- ``<name>/output`` (K, C_out, PH, PW); backward ops also ``<name>/grad_output`` (the upstream
  gradient fed to autograd) and ``<name>/grad_input`` (d(sum(output * grad_output))/d input).

Boxes mix ordinary, partly outside, fully outside, tiny, zero-size and inverted ones, so the
ps_roi_align cases with an adaptive grid hold torchvision's NaN (0 / 0) for empty grids
(roialign_cy gives 0 there), and the ps_roi_pool backward cases hold torchvision's backward,
which clips bins to [0, H] where its forward clips to [0, H - 1].
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision
from torchvision.ops import ps_roi_align, ps_roi_pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import as_torch, random_boxes  # noqa: E402  (the same box mix)

SEED = 20251201
HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "golden_ps_torchvision.npz")
DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}


def add_case(arrays, cases, name, op, dtype, params, **data):
    """Record one case's params and arrays under `name`."""
    cases.append({"name": name, "op": op, "dtype": dtype, "params": params})
    for key, value in data.items():
        arrays[f"{name}/{key}"] = np.ascontiguousarray(value)


def align_cases(rng, arrays, cases):
    """ps_roi_align forward and backward (autograd) over dtypes, scales, sizes, grids."""
    configs = [
        # (spatial_scale, output_size, sampling_ratio, n_images, c_out)
        (1.0, (3, 3), 2, 2, 2),
        (1.0, (2, 3), -1, 2, 3),
        (0.5, (3, 2), 0, 3, 1),
        (0.5, (2, 2), 1, 1, 4),
        (1 / 16, (3, 3), 2, 2, 2),
        (1 / 16, (2, 4), -1, 2, 2),
        (0.3, (3, 2), 3, 2, 2),    # a scale that is not a power of two
        (0.3, (2, 3), -1, 2, 1),
    ]
    for dtype, (np_dtype, torch_dtype) in DTYPES.items():
        for i, (scale, size, sr, n_images, c_out) in enumerate(configs):
            channels = c_out * size[0] * size[1]
            height, width = int(rng.integers(6, 12)), int(rng.integers(6, 13))
            features = rng.standard_normal((n_images, channels, height, width)).astype(np_dtype)
            boxes = random_boxes(rng, n_images, height, width, scale, 12).astype(np_dtype)
            x = as_torch(features, torch_dtype, grad=True)
            output = ps_roi_align(x, as_torch(boxes, torch_dtype), size, scale, sr)
            grad_output = rng.standard_normal(tuple(output.shape)).astype(np_dtype)
            output.backward(as_torch(grad_output, torch_dtype))
            params = {"output_size": list(size), "spatial_scale": scale, "sampling_ratio": sr}
            add_case(arrays, cases, f"ps_roi_align_{dtype}_{i:02d}", "ps_roi_align", dtype,
                     params, input=features, boxes=boxes, output=output.detach().numpy())
            add_case(arrays, cases, f"ps_roi_align_backward_{dtype}_{i:02d}",
                     "ps_roi_align_backward", dtype, params, input=features, boxes=boxes,
                     output=output.detach().numpy(), grad_output=grad_output,
                     grad_input=x.grad.numpy())


def pool_cases(rng, arrays, cases):
    """ps_roi_pool forward and backward (autograd)."""
    configs = [(1.0, (3, 3), 2, 2), (0.5, (2, 3), 2, 1), (1 / 16, (2, 2), 3, 3),
               (0.3, (3, 2), 2, 2), (1.0, (4, 4), 1, 1)]
    for dtype, (np_dtype, torch_dtype) in DTYPES.items():
        for i, (scale, size, n_images, c_out) in enumerate(configs):
            channels = c_out * size[0] * size[1]
            height, width = int(rng.integers(6, 12)), int(rng.integers(6, 13))
            features = rng.standard_normal((n_images, channels, height, width)).astype(np_dtype)
            boxes = random_boxes(rng, n_images, height, width, scale, 12).astype(np_dtype)
            x = as_torch(features, torch_dtype, grad=True)
            output = ps_roi_pool(x, as_torch(boxes, torch_dtype), size, scale)
            grad_output = rng.standard_normal(tuple(output.shape)).astype(np_dtype)
            output.backward(as_torch(grad_output, torch_dtype))
            params = {"output_size": list(size), "spatial_scale": scale}
            add_case(arrays, cases, f"ps_roi_pool_{dtype}_{i:02d}", "ps_roi_pool", dtype,
                     params, input=features, boxes=boxes, output=output.detach().numpy())
            add_case(arrays, cases, f"ps_roi_pool_backward_{dtype}_{i:02d}",
                     "ps_roi_pool_backward", dtype, params, input=features, boxes=boxes,
                     output=output.detach().numpy(), grad_output=grad_output,
                     grad_input=x.grad.numpy())


def main():
    """Build every case and write the .npz."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    arrays, cases = {}, []
    align_cases(rng, arrays, cases)
    pool_cases(rng, arrays, cases)
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "seed": SEED, "cases": cases}
    np.savez_compressed(PATH, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {len(cases)} cases to {PATH} ({os.path.getsize(PATH) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
