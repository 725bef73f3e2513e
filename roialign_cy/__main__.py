"""Demo: `python -m roialign_cy` runs the seed notebook's example and explains its bug;
`python -m roialign_cy --figure PATH` also draws what that example samples (needs matplotlib,
the `plot` extra; the plain demo never imports it)."""

import argparse
import sys
from typing import List, Optional

import numpy as np

import roialign_cy

# What the seed notebook printed for every output row of its example: it divides the running
# sum by `count` inside the sampling loop instead of once after it.
NOTEBOOK_ROW = [[57.96875, 58.59375], [58.90625, 59.53125], [59.84375, 60.46875],
                [60.78125, 61.40625]]
# The notebook's example: a 5x5 map, one box (x1, y1, x2, y2), 4x4 output, sampling_ratio=2,
# legacy (aligned=False) coordinates.
SEED_MAP_SIZE = (5, 5)
SEED_BOX = [1.0, 4.0, 4.0, 4.0]
# The paper's Figure 3 on the same map: 2x2 bins, 4 samples each, a box at stride 16.
FIGURE3_BOX = [22.0, 13.0, 68.0, 61.0]
FIGURE3_SCALE = 1 / 16


def write_figure(path: str) -> None:
    """Draw the seed example's sampling points beside the paper's Figure 3 into `path`."""
    try:
        from roialign_cy import plot
    except ImportError as error:
        sys.exit(f"--figure: {error}")
    from matplotlib.figure import Figure  # no pyplot: no GUI backend for a file

    figure = Figure(figsize=(12.0, 7.0))
    seed, paper = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    plot.sampling_figure(SEED_MAP_SIZE, SEED_BOX, 4, 1.0, 2, False, ax=seed)
    seed.set_title("The seed example: a zero-height box, stretched to 1 pixel (legacy mode);\n"
                   "every sample lies on the last row, where the taps are clamped", fontsize=10)
    plot.sampling_figure(SEED_MAP_SIZE, FIGURE3_BOX, 2, FIGURE3_SCALE, 2, False, ax=paper)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    print(f"wrote {path}")


def main(argv: Optional[List[str]] = None) -> None:
    """Print the build configuration and the seed example, right beside wrong."""
    parser = argparse.ArgumentParser(prog="python -m roialign_cy", description=__doc__)
    parser.add_argument("--figure", metavar="PATH",
                        help="also draw what the example samples into PATH (a PNG, ...; "
                             "needs matplotlib: pip install \"roialign-cy[plot]\")")
    args = parser.parse_args(argv)
    config = roialign_cy.show_config(print_out=False)
    threads = f"{config['max_threads']} thread(s)" if config["openmp"] else "serial build"
    print(f"roialign_cy {config['version']}  OpenMP: {'on' if config['openmp'] else 'off'}, {threads}")
    print()

    # The notebook's example, with 2 channels (NHWC).
    features = np.arange(100, dtype=np.float32).reshape(2, 5, 5, 2)[1]
    box = np.array([SEED_BOX])  # x1, y1, x2, y2
    pooled = roialign_cy.roi_align(features, box, output_size=4, spatial_scale=1.0,
                                   sampling_ratio=2, aligned=False, layout="NHWC")
    print("Seed notebook example: roi_align(features (5, 5, 2), box [1, 4, 4, 4], output 4x4,")
    print("sampling_ratio=2), each output row (the 4 rows are equal), channels side by side:")
    print(f"  {'roialign_cy':<28}  seed notebook (wrong)")
    for (a, b), (wa, wb) in zip(pooled[0, 0], NOTEBOOK_ROW):
        print(f"  [{a:9.5f}, {b:9.5f}]        [{wa:9.5f}, {wb:9.5f}]")
    print()
    print("The notebook divides its running sum by count (4) inside the sampling loop, so the")
    print("first sampled row is divided twice; the average must be taken once, after all samples.")
    if args.figure is not None:
        print()
        write_figure(args.figure)


if __name__ == "__main__":
    main()
