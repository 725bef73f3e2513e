"""RoIAlign as crop-and-resize: 64x64 patches of objects in a photograph, as a PNG mosaic.

A detector's second stage, or a dataset tool, cuts every box out of an image and resamples
it to one size. roi_align does exactly that on a channels-last image (H, W, C), all boxes in
one call: with ``aligned=True`` a box [x1, y1, x2, y2] covers the pixels' areas (pixel j
spans [j, j + 1)), and ``sampling_ratio=2`` averages 2x2 bilinear samples per output pixel
(an anti-aliased downscale; 1 would be plain bilinear resampling).

The photograph is scikit-image's bundled ``astronaut()`` (no download). The boxes: a few
placed by hand on objects of the photo, then random ones. The first, the face, is 128x128
pixels on whole-pixel corners: each output pixel then averages exactly a 2x2 block of the
photo (tests/test_examples.py checks it against such an average).

Run: ``python examples/extract_patches.py --out patches.png`` (needs scikit-image and
matplotlib: ``pip install "roialign-cy[examples]"``).
"""

import argparse
import time

import numpy as np

import roialign_cy

PATCH = 64
GAP = 4          # white pixels between patches in the mosaic
COLUMNS = 6
# (name, [x1, y1, x2, y2]) in the photo's pixels.
OBJECTS = [
    ("face", [168, 32, 296, 160]),
    ("hair and face", [165, 20, 285, 160]),
    ("mission patch", [132, 347, 207, 421]),
    ("name tag", [277, 339, 326, 375]),
    ("helmet", [274, 341, 512, 512]),
    ("shuttle model", [351, 0, 457, 286]),
    ("flag", [0, 0, 91, 242]),
]
N_RANDOM = 11


def load_photo():
    """The bundled astronaut photograph as float32 (H, W, 3) in [0, 255]."""
    from skimage import data

    return data.astronaut().astype(np.float32)


def random_boxes(rng, n, height, width):
    """n boxes [x1, y1, x2, y2] of random sizes (24-200 pixels a side) inside the photo."""
    sizes = rng.uniform(24, 200, (n, 2))
    corners = rng.uniform(0, 1, (n, 2)) * ([width, height] - sizes)
    return np.concatenate([corners, corners + sizes], axis=1)


def extract(photo, boxes, size=PATCH):
    """roi_align as crop-and-resize: (K, size, size, C) patches of a channels-last photo."""
    return roialign_cy.roi_align(photo, boxes, size, spatial_scale=1.0, sampling_ratio=2,
                                 aligned=True, layout="NHWC")


def mosaic(patches, columns=COLUMNS, gap=GAP):
    """The patches (K, P, P, C) tiled row by row on white, as uint8."""
    count, size, _, channels = patches.shape
    rows = -(-count // columns)
    canvas = np.full((rows * size + (rows + 1) * gap, columns * size + (columns + 1) * gap,
                      channels), 255, np.uint8)
    tiles = np.clip(np.rint(patches), 0, 255).astype(np.uint8)
    for k, tile in enumerate(tiles):
        top = gap + (k // columns) * (size + gap)
        left = gap + (k % columns) * (size + gap)
        canvas[top:top + size, left:left + size] = tile
    return canvas


def main(argv=None):
    """Cut the boxes out of the photo, tile them, write the PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="patches.png", help="the mosaic PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random boxes")
    args = parser.parse_args(argv)
    from matplotlib import image

    photo = load_photo()
    height, width = photo.shape[:2]
    boxes = np.concatenate([np.array([box for _, box in OBJECTS], np.float64),
                            random_boxes(np.random.default_rng(args.seed), N_RANDOM, height,
                                         width)])
    start = time.perf_counter()
    patches = extract(photo, boxes)
    elapsed = time.perf_counter() - start
    print(f"photo {photo.shape}, {len(boxes)} boxes -> patches {patches.shape} "
          f"in {elapsed * 1e3:.2f} ms")
    for name, box in OBJECTS:
        print(f"  {name:<14} {box}")
    print(f"  + {N_RANDOM} random boxes")
    image.imsave(args.out, mosaic(patches))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
