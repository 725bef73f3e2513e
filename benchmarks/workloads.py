"""Seeded, fixed benchmark workloads: feature maps, boxes and RoIAlign parameters.

Every workload is float32 and fully determined by its seed, so two runs (or two machines)
time exactly the same calls. Features are built once in NCHW; the NHWC copy is made once,
outside any timing, and shared between workloads that use the same map.
"""

from dataclasses import dataclass, field

import numpy as np

# Detection-style image the FPN / C4 boxes live in (an 800 x 1216 input, 4x and 16x strides).
IMAGE_HW = (800, 1216)

# (N, C, H, W), seed) -> features, shared by the workloads that use the same map.
_FEATURE_CACHE = {}


def seeded_features(shape, seed):
    """Uniform [0, 1) float32 features of `shape` (NCHW), built once per (shape, seed)."""
    key = (tuple(shape), seed)
    if key not in _FEATURE_CACHE:
        _FEATURE_CACHE[key] = {"NCHW": np.random.default_rng(seed).random(shape, dtype=np.float32)}
    return _FEATURE_CACHE[key]


def clear_cache():
    """Drop every cached feature map (frees the big arrays between workloads)."""
    _FEATURE_CACHE.clear()


def realistic_boxes(rng, per_image, n_images, image_hw=IMAGE_HW, size_range=(16.0, 600.0),
                    aspect_range=(1 / 3, 3.0)):
    """Detector-like boxes, rows [batch_index, x1, y1, x2, y2], grouped by image.

    Square-root area log-uniform in `size_range` pixels, aspect ratio (h / w) log-uniform in
    `aspect_range`, centre uniform in the image, then clipped to the image.
    """
    n = per_image * n_images
    height, width = image_hw
    size = np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1]), n))
    aspect = np.exp(rng.uniform(np.log(aspect_range[0]), np.log(aspect_range[1]), n))
    box_w = size / np.sqrt(aspect)
    box_h = size * np.sqrt(aspect)
    cx = rng.uniform(0, width, n)
    cy = rng.uniform(0, height, n)
    x1 = np.clip(cx - box_w / 2, 0, width)
    x2 = np.clip(cx + box_w / 2, 0, width)
    y1 = np.clip(cy - box_h / 2, 0, height)
    y2 = np.clip(cy + box_h / 2, 0, height)
    batch_index = np.repeat(np.arange(n_images), per_image)
    return np.stack([batch_index, x1, y1, x2, y2], axis=1).astype(np.float32)


def small_boxes(rng, per_image, n_images, map_hw, side_range=(2.0, 16.0)):
    """Small boxes with sides uniform in `side_range` pixels, fully inside the map, by image."""
    n = per_image * n_images
    height, width = map_hw
    box_w = rng.uniform(*side_range, n)
    box_h = rng.uniform(*side_range, n)
    x1 = rng.uniform(0, width - box_w)
    y1 = rng.uniform(0, height - box_h)
    batch_index = np.repeat(np.arange(n_images), per_image)
    return np.stack([batch_index, x1, y1, x1 + box_w, y1 + box_h], axis=1).astype(np.float32)


@dataclass
class Workload:
    """One fixed RoIAlign call: features, boxes and torchvision-style parameters.

    `sampling_ratio` uses torchvision's convention (-1 = adaptive); adapters translate it
    (ONNX uses 0). `tiny` marks the per-call-overhead workload, reported in microseconds.
    """

    name: str
    description: str
    feature_shape: tuple
    feature_seed: int
    boxes: np.ndarray
    output_size: tuple
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    tiny: bool = False
    fixed_features: np.ndarray = None
    _grads: dict = field(default_factory=dict, repr=False)
    _fixed_layouts: dict = field(default_factory=dict, repr=False)

    @property
    def n_rois(self):
        """K, the number of boxes."""
        return len(self.boxes)

    @property
    def nchw_shape(self):
        """(N, C, H, W) of the features."""
        return tuple(self.feature_shape)

    def features(self, layout):
        """The features in `layout` ("NCHW" or "NHWC"), C-contiguous, built once."""
        if self.fixed_features is not None:
            cache = self._fixed_layouts
            cache.setdefault("NCHW", self.fixed_features)
        else:
            cache = seeded_features(self.feature_shape, self.feature_seed)
        if layout not in cache:
            cache[layout] = np.ascontiguousarray(cache["NCHW"].transpose(0, 2, 3, 1))
        return cache[layout]

    def input_shape(self, layout):
        """Shape of the features in `layout`."""
        n, c, h, w = self.feature_shape
        return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)

    def output_shape(self, layout):
        """Shape of the pooled result in `layout`: (K, C, PH, PW) or (K, PH, PW, C)."""
        c = self.feature_shape[1]
        ph, pw = self.output_size
        return (self.n_rois, c, ph, pw) if layout == "NCHW" else (self.n_rois, ph, pw, c)

    def grad_output(self, layout):
        """A seeded random float32 gradient of the pooled result, in `layout`, built once."""
        if "NCHW" not in self._grads:
            rng = np.random.default_rng(self.feature_seed + 1)
            self._grads["NCHW"] = rng.random(self.output_shape("NCHW"), dtype=np.float32)
        if layout not in self._grads:
            self._grads[layout] = np.ascontiguousarray(self._grads["NCHW"].transpose(0, 2, 3, 1))
        return self._grads[layout]

    def summary(self):
        """One line: shapes and parameters, as printed in the report."""
        n, c, h, w = self.feature_shape
        ph, pw = self.output_size
        sr = "adaptive" if self.sampling_ratio <= 0 else str(self.sampling_ratio)
        return (f"features ({n}, {c}, {h}, {w}), K = {self.n_rois}, {ph}x{pw}, "
                f"spatial_scale {self.spatial_scale:g}, sampling_ratio {sr}, "
                f"aligned={self.aligned}")


# --quick keeps every feature map and parameter and divides K by this.
QUICK_DIVISOR = 10


def box_head_fpn(quick=False):
    """FPN box head: (2, 256, 200, 304), 500 RoIs per image, 7x7, sr 2, aligned."""
    per_image = 500 // QUICK_DIVISOR if quick else 500
    return Workload(
        name="box_head_fpn",
        description="Faster R-CNN FPN box head, P2 level",
        feature_shape=(2, 256, 200, 304), feature_seed=1,
        boxes=realistic_boxes(np.random.default_rng(101), per_image, 2),
        output_size=(7, 7), spatial_scale=1 / 4, sampling_ratio=2, aligned=True,
    )


def mask_head_fpn(quick=False):
    """FPN mask head: same map, 100 RoIs per image, 14x14, sr 2, aligned."""
    per_image = 100 // QUICK_DIVISOR if quick else 100
    return Workload(
        name="mask_head_fpn",
        description="Mask R-CNN FPN mask head, P2 level",
        feature_shape=(2, 256, 200, 304), feature_seed=1,
        boxes=realistic_boxes(np.random.default_rng(102), per_image, 2),
        output_size=(14, 14), spatial_scale=1 / 4, sampling_ratio=2, aligned=True,
    )


def c4_head(quick=False):
    """C4 head: (1, 1024, 50, 76), 300 RoIs, 14x14, adaptive grid, legacy."""
    return Workload(
        name="c4_head",
        description="Mask R-CNN C4 head (ResNet res4, stride 16), legacy coordinates",
        feature_shape=(1, 1024, 50, 76), feature_seed=2,
        boxes=realistic_boxes(np.random.default_rng(103), 300 // QUICK_DIVISOR if quick else 300, 1),
        output_size=(14, 14), spatial_scale=1 / 16, sampling_ratio=-1, aligned=False,
    )


def many_small(quick=False):
    """Many small RoIs: (8, 64, 64, 64), 2500 boxes of 2-16 px per image, 7x7."""
    per_image = 2500 // QUICK_DIVISOR if quick else 2500
    return Workload(
        name="many_small",
        description="many small RoIs (dense proposals), per-RoI overhead",
        feature_shape=(8, 64, 64, 64), feature_seed=3,
        boxes=small_boxes(np.random.default_rng(104), per_image, 8, (64, 64)),
        output_size=(7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=True,
    )


# What the seed notebook's example must give in every output row (channels side by side).
SEED_EXPECTED_ROW = np.array([[92.75, 93.75], [94.25, 95.25], [95.75, 96.75], [97.25, 98.25]],
                             dtype=np.float32)


def seed(quick=False):
    """The seed notebook's example: one (5, 5, 2) NHWC map, box [1, 4, 4, 4], 4x4, sr 2, legacy."""
    image_hwc = np.arange(100, dtype=np.float32).reshape(2, 5, 5, 2)[1]
    nchw = np.ascontiguousarray(image_hwc.transpose(2, 0, 1)[np.newaxis])
    return Workload(
        name="seed",
        description="seed notebook example, one tiny call (per-call overhead)",
        feature_shape=nchw.shape, feature_seed=4,
        boxes=np.array([[0, 1, 4, 4, 4]], dtype=np.float32),
        output_size=(4, 4), spatial_scale=1.0, sampling_ratio=2, aligned=False,
        tiny=True, fixed_features=nchw,
    )


BUILDERS = {
    "box_head_fpn": box_head_fpn,
    "mask_head_fpn": mask_head_fpn,
    "c4_head": c4_head,
    "many_small": many_small,
    "seed": seed,
}


def build(name, quick=False):
    """The workload called `name` (a key of BUILDERS), K divided by QUICK_DIVISOR when `quick`."""
    return BUILDERS[name](quick=quick)
