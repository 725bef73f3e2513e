"""Write tests/data/golden_torchvision.npz: torchvision's own numbers for the tests to hold us to.

Rerun (from the repository root, with a Python that has torch, torchvision and numpy; the
tests themselves never import torch):

    /work/peers/bin/python tests/data/make_golden.py

The output is seeded, so a rerun with the same torch/torchvision versions reproduces the file.

Layout of the .npz (no pickles; load with ``np.load(path)``):

- ``meta``: a JSON string {"torch", "torchvision", "numpy", "seed", "cases": [...]}. Each case
  is {"name", "op", "dtype", "params": {...}} where op is one of "roi_align",
  "roi_align_backward", "roi_pool", "roi_pool_backward";
- ``<name>/input`` (N, C, H, W), ``<name>/boxes`` (K, 5) rows [batch_index, x1, y1, x2, y2],
  both in the case's dtype;
- forward ops: ``<name>/output``; backward ops: also ``<name>/grad_output`` (the upstream
  gradient fed to autograd) and ``<name>/grad_input`` (d(sum(output * grad_output))/d input).

Boxes that make torchvision crash are left out: with aligned=True and an adaptive
sampling_ratio, a box inverted along exactly one axis gives a negative sample grid and
torchvision raises "cannot create std::vector larger than max_size()".
"""

import json
import os

import numpy as np
import torch
import torchvision
from torchvision.ops import roi_align, roi_pool

SEED = 20240531
HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "golden_torchvision.npz")
DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}


def random_boxes(rng, n_images, height, width, spatial_scale, n_boxes):
    """A mix of ordinary, partly outside, fully outside, tiny, zero-size and inverted boxes."""
    img_h, img_w = height / spatial_scale, width / spatial_scale
    rows = []
    for i in range(n_boxes):
        kind = i % 6
        x1, y1 = rng.uniform(-0.2, 0.9) * img_w, rng.uniform(-0.2, 0.9) * img_h
        w, h = rng.uniform(0.05, 0.8) * img_w, rng.uniform(0.05, 0.8) * img_h
        if kind == 1:  # partly outside, past the far corner
            x1, y1 = rng.uniform(0.6, 1.0) * img_w, rng.uniform(0.6, 1.0) * img_h
        elif kind == 2:  # fully outside (above-left or below-right)
            sign = rng.choice([-1.0, 1.0])
            x1 = (-0.8 if sign < 0 else 1.3) * img_w
            y1 = (-0.8 if sign < 0 else 1.3) * img_h
            w, h = 0.3 * img_w, 0.3 * img_h
        elif kind == 3:  # tiny, well under a feature pixel
            w, h = rng.uniform(0, 0.6) / spatial_scale, rng.uniform(0, 0.6) / spatial_scale
        elif kind == 4:  # zero size
            w, h = 0.0, 0.0
        elif kind == 5:  # inverted on both axes
            w, h = -w / 3, -h / 3
        rows.append([rng.integers(n_images), x1, y1, x1 + w, y1 + h])
    return np.array(rows)


def huge_boxes(n_images, height, width, spatial_scale):
    """Boxes many times the map, so an adaptive grid has far more than 64 samples per bin."""
    img_h, img_w = height / spatial_scale, width / spatial_scale
    return np.array([
        [0, -20 * img_w, -3.0, 30 * img_w, img_h + 2.0],
        [n_images - 1, 0.25 * img_w, -15 * img_h, 0.75 * img_w, 12 * img_h],
        [0, -40 * img_w, -40 * img_h, 40 * img_w, 40 * img_h],
    ])


def crashes_torchvision(boxes, spatial_scale, aligned, sampling_ratio):
    """Rows whose adaptive grid is negative along exactly one axis (aligned mode)."""
    if not aligned or sampling_ratio > 0:
        return np.zeros(len(boxes), bool)
    inverted_x = boxes[:, 3] < boxes[:, 1]
    inverted_y = boxes[:, 4] < boxes[:, 2]
    return inverted_x != inverted_y


def as_torch(array, torch_dtype, grad=False):
    """A float torch tensor copy of array."""
    return torch.tensor(array, dtype=torch_dtype, requires_grad=grad)


def add_case(arrays, cases, name, op, dtype, params, **data):
    """Record one case's params and arrays under `name`."""
    cases.append({"name": name, "op": op, "dtype": dtype, "params": params})
    for key, value in data.items():
        arrays[f"{name}/{key}"] = np.ascontiguousarray(value)


def align_cases(rng, arrays, cases):
    """roi_align forward over dtypes, aligned, sampling ratios, scales and output sizes."""
    configs = [
        # (spatial_scale, output_size, sampling_ratio, aligned, n_images, huge)
        (1.0, (5, 5), 2, False, 2, False),
        (1.0, (5, 5), -1, False, 2, False),
        (1.0, (4, 6), 0, True, 3, False),
        (1.0, (3, 2), 1, True, 1, False),
        (0.5, (7, 7), -1, True, 2, False),
        (0.5, (2, 5), 3, False, 2, False),
        (1 / 16, (3, 4), 2, True, 2, False),
        (1 / 16, (6, 3), -1, False, 3, False),
        (1.0, (3, 2), 70, True, 2, False),   # fixed grid above 64: analytic candidate path
        (1.0, (2, 3), -1, False, 2, True),   # adaptive grid of hundreds of samples per bin
        (0.5, (3, 3), 0, True, 2, True),
        (0.3, (4, 5), 2, True, 2, False),    # a scale that is not a power of two
        (0.3, (5, 4), -1, False, 2, False),
    ]
    for dtype, (np_dtype, torch_dtype) in DTYPES.items():
        for i, (scale, size, sr, aligned, n_images, huge) in enumerate(configs):
            channels, height, width = 2, int(rng.integers(6, 11)), int(rng.integers(6, 13))
            features = rng.standard_normal((n_images, channels, height, width)).astype(np_dtype)
            boxes = random_boxes(rng, n_images, height, width, scale, 12)
            if huge:
                boxes = np.concatenate([boxes[:3], huge_boxes(n_images, height, width, scale)])
            boxes = boxes[~crashes_torchvision(boxes, scale, aligned, sr)].astype(np_dtype)
            output = roi_align(as_torch(features, torch_dtype), as_torch(boxes, torch_dtype),
                               size, scale, sr, aligned)
            params = {"output_size": list(size), "spatial_scale": scale,
                      "sampling_ratio": sr, "aligned": aligned}
            add_case(arrays, cases, f"roi_align_{dtype}_{i:02d}", "roi_align", dtype, params,
                     input=features, boxes=boxes, output=output.numpy())


def align_backward_cases(rng, arrays, cases):
    """roi_align gradient w.r.t. the input, by autograd, for a random upstream gradient."""
    configs = [(1.0, (4, 4), 2, False), (0.5, (3, 5), -1, True), (1 / 16, (2, 3), 0, False),
               (1.0, (3, 3), 1, True)]
    for dtype, (np_dtype, torch_dtype) in DTYPES.items():
        for i, (scale, size, sr, aligned) in enumerate(configs):
            features = rng.standard_normal((2, 2, 7, 9)).astype(np_dtype)
            boxes = random_boxes(rng, 2, 7, 9, scale, 10)
            boxes = boxes[~crashes_torchvision(boxes, scale, aligned, sr)].astype(np_dtype)
            x = as_torch(features, torch_dtype, grad=True)
            output = roi_align(x, as_torch(boxes, torch_dtype), size, scale, sr, aligned)
            grad_output = rng.standard_normal(tuple(output.shape)).astype(np_dtype)
            output.backward(as_torch(grad_output, torch_dtype))
            params = {"output_size": list(size), "spatial_scale": scale,
                      "sampling_ratio": sr, "aligned": aligned}
            add_case(arrays, cases, f"roi_align_backward_{dtype}_{i:02d}", "roi_align_backward",
                     dtype, params, input=features, boxes=boxes, output=output.detach().numpy(),
                     grad_output=grad_output, grad_input=x.grad.numpy())


def pool_cases(rng, arrays, cases):
    """roi_pool forward and backward; one case with many ties pins 'first maximum wins'."""
    configs = [(1.0, (3, 3), False), (0.5, (4, 2), False), (1 / 16, (2, 3), False),
               (1.0, (5, 4), True)]
    for dtype, (np_dtype, torch_dtype) in DTYPES.items():
        for i, (scale, size, ties) in enumerate(configs):
            shape = (2, 2, int(rng.integers(6, 10)), int(rng.integers(6, 12)))
            if ties:
                features = rng.integers(0, 3, shape).astype(np_dtype)
            else:
                features = rng.standard_normal(shape).astype(np_dtype)
            boxes = random_boxes(rng, 2, shape[2], shape[3], scale, 12).astype(np_dtype)
            x = as_torch(features, torch_dtype, grad=True)
            output = roi_pool(x, as_torch(boxes, torch_dtype), size, scale)
            params = {"output_size": list(size), "spatial_scale": scale}
            # The op itself also returns the arg-max indices its backward consumes.
            _, argmax = torch.ops.torchvision.roi_pool(
                as_torch(features, torch_dtype), as_torch(boxes, torch_dtype), scale, *size)
            add_case(arrays, cases, f"roi_pool_{dtype}_{i:02d}", "roi_pool", dtype, params,
                     input=features, boxes=boxes, output=output.detach().numpy(),
                     argmax=argmax.numpy())
            grad_output = rng.standard_normal(tuple(output.shape)).astype(np_dtype)
            output.backward(as_torch(grad_output, torch_dtype))
            add_case(arrays, cases, f"roi_pool_backward_{dtype}_{i:02d}", "roi_pool_backward",
                     dtype, params, input=features, boxes=boxes, output=output.detach().numpy(),
                     grad_output=grad_output, grad_input=x.grad.numpy())


def main():
    """Build every case and write the .npz."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    arrays, cases = {}, []
    align_cases(rng, arrays, cases)
    align_backward_cases(rng, arrays, cases)
    pool_cases(rng, arrays, cases)
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "seed": SEED, "cases": cases}
    np.savez_compressed(PATH, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {len(cases)} cases to {PATH} ({os.path.getsize(PATH) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
