"""Write tests/data/golden_multiscale.npz: the frameworks' own multi-level (FPN) numbers.

Rerun (from the repository root, with a Python that has torch, torchvision and numpy; the
tests themselves never import torch):

    python tests/data/make_golden_multiscale.py

The output is seeded, so a rerun with the same torch/torchvision versions reproduces the file.

What it holds:

- pooling cases: torchvision's ``MultiScaleRoIAlign`` itself (output, and the gradient of
  every level by autograd for a random upstream gradient) on FPN pyramids of 4 levels,
  strides 4 to 32, for two sets of image sizes (one whose maps are not exact divisions,
  rounded up as a backbone rounds them), float32 and float64, fixed and adaptive sampling
  ratios, non-default canonical constants, and a dict with an unused map (featmap_names);
- level cases: each box's level index by each framework's rule, on thousands of boxes
  including boxes exactly at, and a few float steps around, every level boundary:
  "torchvision" is torchvision's ``LevelMapper`` itself; "detectron2" and "mmdet" are their
  formulas (neither is installed here), written as their sources write them, in torch
  float32/float64 ops on the boxes' tensor:
    detectron2 ``detectron2/modeling/poolers.py`` ``assign_boxes_to_levels``, commit
    2bd05b42983468c50a1c80d5e7dc3952980e1cd4 (eps 1e-8 inside the log2; an older version
    used sys.float_info.epsilon);
    mmdet ``mmdet/models/roi_heads/roi_extractors/single_level_roi_extractor.py``
    ``SingleRoIExtractor.map_roi_levels``, commit 5adf822f2deb071cba1ecd68f7ee225e4c796611.
  A box with a negative area has a NaN level in every framework, whose int64 conversion is
  arbitrary: such boxes are stored with ``valid`` False.

Layout of the .npz (no pickles; load with ``np.load(path)``): ``meta`` is a JSON string
{"torch", "torchvision", "numpy", "seed", "cases": [...]}; each case is {"name", "op",
"dtype", "params"} with op "multiscale" or "levels"; arrays are ``<name>/<key>``:
multiscale: ``level_<i>`` (N, C, H_i, W_i) the pooled levels in order, ``boxes`` (K, 5),
``output``, ``grad_output``, ``grad_<i>``; levels: ``boxes`` (K, 4), ``levels`` int64,
``valid`` bool.
"""

import json
import os
from collections import OrderedDict

import numpy as np
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

SEED = 20261201
HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "golden_multiscale.npz")
DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}
STRIDES = (4, 8, 16, 32)


def boundary_sides(canonical_scale, canonical_level, k_min, k_max, eps=0.0):
    """Square sides at every level boundary of the FPN rule and a few float steps around
    them: sqrt(area) = canonical_scale * 2 ** (k - canonical_level)."""
    sides = []
    for k in range(k_min - 1, k_max + 2):
        side = canonical_scale * 2.0 ** (k - canonical_level)
        for factor in (1.0, 1 - 1e-7, 1 + 1e-7, 1 - 5e-7, 1 - 1e-6, 1 - 2e-6, 1 - 1e-8,
                       1 + 1e-6, 1 - 3e-6):
            sides.append(side * factor)
        for step in (-1, 1, -2, 2, -4):  # neighbouring float32 values
            sides.append(float(np.float32(side) + step * np.spacing(np.float32(side))))
    return np.array(sides)


def level_boxes(rng, n_random, canonical_scale, canonical_level):
    """(K, 4) boxes: random sizes and aspects, the boundaries of the rule, degenerate ones."""
    size = np.exp(rng.uniform(np.log(2), np.log(1200), n_random))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n_random))
    w, h = size * np.sqrt(aspect), size / np.sqrt(aspect)
    x1, y1 = rng.uniform(0, 800, n_random), rng.uniform(0, 800, n_random)
    random = np.round(np.stack([x1, y1, x1 + w, y1 + h], 1) * 8) / 8  # compresses
    sides = boundary_sides(canonical_scale, canonical_level, 2, 5)
    offsets = rng.uniform(0, 300, (len(sides), 2)).round()
    squares = np.concatenate([offsets, offsets + sides[:, None]], 1)
    # Rectangles of the boundary areas with power-of-two aspects (exact products).
    rects = np.concatenate([offsets, offsets + sides[:, None] * np.array([2.0, 0.5])], 1)
    degenerate = np.array([[10, 10, 10, 10], [10, 10, 30, 10], [30, 10, 10, 20],
                           [5, 5, 1e4, 1e4], [0, 0, 1e-3, 1e-3]], float)
    return np.concatenate([random, squares, rects, degenerate])


def torchvision_levels(boxes_t, k_min, k_max, canonical_scale, canonical_level):
    """torchvision's LevelMapper itself."""
    return LevelMapper(k_min, k_max, canonical_scale, canonical_level)([boxes_t])


def detectron2_levels(boxes_t, min_level, max_level, canonical_box_size, canonical_level):
    """detectron2's assign_boxes_to_levels (commit 2bd05b42), on Boxes.area()."""
    box = boxes_t
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])  # Boxes.area()
    box_sizes = torch.sqrt(area)
    level_assignments = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size
                                                                 + 1e-8))
    level_assignments = torch.clamp(level_assignments, min=min_level, max=max_level)
    return level_assignments.to(torch.int64) - min_level


def mmdet_levels(boxes_t, num_levels, finest_scale):
    """mmdet's SingleRoIExtractor.map_roi_levels (commit 5adf822f), on (K, 5) rois."""
    rois = torch.cat([torch.zeros_like(boxes_t[:, :1]), boxes_t], 1)
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    target_lvls = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return target_lvls.clamp(min=0, max=num_levels - 1).long()


def add_case(arrays, cases, name, op, dtype, params, **data):
    """Record one case's params and arrays under `name`."""
    cases.append({"name": name, "op": op, "dtype": dtype, "params": params})
    for key, value in data.items():
        arrays[f"{name}/{key}"] = np.ascontiguousarray(value)


def level_cases(rng, arrays, cases):
    """Each rule's level index on its own inputs (float32 and float64 boxes)."""
    configs = [  # (rule, canonical_scale, canonical_level, k_min, k_max)
        ("torchvision", 224, 4, 2, 5), ("torchvision", 160, 3, 2, 6),
        ("detectron2", 224, 4, 2, 5), ("detectron2", 128, 5, 3, 6),
        ("mmdet", 56, None, 2, 5), ("mmdet", 32, None, 3, 5),
    ]
    for dtype, (np_dtype, torch_dtype) in DTYPES.items():
        for i, (rule, scale, level, k_min, k_max) in enumerate(configs):
            if rule == "mmdet":
                boxes = level_boxes(rng, 1000, scale, 0)
            else:
                boxes = level_boxes(rng, 1000, scale, level)
            boxes = boxes.astype(np_dtype)
            boxes_t = torch.from_numpy(boxes)
            if rule == "torchvision":
                levels = torchvision_levels(boxes_t, k_min, k_max, scale, level)
            elif rule == "detectron2":
                levels = detectron2_levels(boxes_t, k_min, k_max, scale, level)
            else:
                levels = mmdet_levels(boxes_t, k_max - k_min + 1, scale)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            params = {"rule": rule, "canonical_scale": scale, "canonical_level": level,
                      "k_min": k_min, "k_max": k_max}
            add_case(arrays, cases, f"levels_{rule}_{dtype}_{i:02d}", "levels", dtype, params,
                     boxes=boxes, levels=levels.numpy().astype(np.int64), valid=area >= 0)


def pyramid_boxes(rng, n_per_image, image_sizes):
    """(K, 5) boxes per image: realistic sizes, the torchvision level boundaries, one inverted
    along one axis (no level: pooled to 0), one zero-size."""
    rows = []
    sides = boundary_sides(224, 4, 2, 5)[::3]
    for b, (height, width) in enumerate(image_sizes):
        size = np.exp(rng.uniform(np.log(8), np.log(400), n_per_image))
        aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n_per_image))
        w, h = size * np.sqrt(aspect), size / np.sqrt(aspect)
        cx, cy = rng.uniform(0, width, n_per_image), rng.uniform(0, height, n_per_image)
        for x, y, bw, bh in zip(cx, cy, w, h):
            rows.append([b, x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2])
        for side in sides[b::2]:
            x, y = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
            rows.append([b, x, y, x + side, y + side])
        rows.append([b, 20.0, 30.0, 10.0, 60.0])   # inverted along x: NaN level
        rows.append([b, 40.0, 40.0, 40.0, 40.0])   # zero size: the finest level
    return np.array(rows)


def multiscale_cases(rng, arrays, cases):
    """torchvision's MultiScaleRoIAlign forward and backward on 4-level pyramids."""
    configs = [  # (image_sizes, output_size, sampling_ratio, canonical (scale, level), extra map)
        ([(160, 256), (144, 224)], (7, 7), 2, None, False),
        ([(136, 200), (120, 196)], (5, 3), -1, None, False),
        ([(160, 256), (144, 224)], (4, 4), 1, (160, 3), False),
        ([(136, 200), (120, 196)], (7, 7), 2, None, True),
    ]
    channels = 2
    for dtype, (np_dtype, torch_dtype) in DTYPES.items():
        for i, (image_sizes, size, sr, canonical, extra) in enumerate(configs):
            max_h = max(h for h, _ in image_sizes)
            max_w = max(w for _, w in image_sizes)
            shapes = [(len(image_sizes), channels, -(-max_h // s), -(-max_w // s))
                      for s in STRIDES]
            # Multiples of 1/64: every bit of the pooling is still exercised, and the file
            # compresses.
            levels = [(np.round(rng.standard_normal(shape) * 64) / 64).astype(np_dtype)
                      for shape in shapes]
            names = ["p2", "p3", "p4", "p5"]
            x = OrderedDict()
            for name, level in zip(names, levels):
                x[name] = torch.tensor(level, dtype=torch_dtype, requires_grad=True)
                if extra and name == "p3":  # a map featmap_names leaves out
                    x["unused"] = torch.zeros((len(image_sizes), channels, 9, 9),
                                              dtype=torch_dtype)
            kwargs = {} if canonical is None else {"canonical_scale": canonical[0],
                                                   "canonical_level": canonical[1]}
            featmap_names = ["p5", "p2", "p4", "p3"] if extra else names  # dict order wins
            pooler = MultiScaleRoIAlign(featmap_names, size, sr, **kwargs)
            boxes = pyramid_boxes(rng, 16, image_sizes).astype(np_dtype)
            box_list = [torch.tensor(boxes[boxes[:, 0] == b, 1:], dtype=torch_dtype)
                        for b in range(len(image_sizes))]
            output = pooler(x, box_list, image_sizes)
            grad_output = (np.round(rng.standard_normal(tuple(output.shape)) * 64)
                           / 64).astype(np_dtype)
            output.backward(torch.tensor(grad_output))
            params = {"image_sizes": [list(s) for s in image_sizes], "output_size": list(size),
                      "sampling_ratio": sr, "canonical_scale": kwargs.get("canonical_scale"),
                      "canonical_level": kwargs.get("canonical_level"),
                      "featmap_names": featmap_names, "dict_keys": list(x),
                      "scales": pooler.scales}
            data = {f"level_{j}": level for j, level in enumerate(levels)}
            data.update({f"grad_{j}": x[name].grad.numpy() for j, name in enumerate(names)})
            if extra:
                data["unused"] = x["unused"].detach().numpy()
            add_case(arrays, cases, f"multiscale_{dtype}_{i:02d}", "multiscale", dtype, params,
                     boxes=boxes, output=output.detach().numpy(), grad_output=grad_output,
                     **data)


def main():
    """Build every case and write the .npz."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    arrays, cases = {}, []
    level_cases(rng, arrays, cases)
    multiscale_cases(rng, arrays, cases)
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "seed": SEED, "cases": cases}
    np.savez_compressed(PATH, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {len(cases)} cases to {PATH} ({os.path.getsize(PATH) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
