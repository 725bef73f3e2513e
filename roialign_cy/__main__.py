"""Demo: `python -m roialign_cy` runs the seed notebook's example and explains its bug."""

import numpy as np

import roialign_cy

# What the seed notebook printed for every output row of its example: it divides the running
# sum by `count` inside the sampling loop instead of once after it.
NOTEBOOK_ROW = [[57.96875, 58.59375], [58.90625, 59.53125], [59.84375, 60.46875],
                [60.78125, 61.40625]]


def main() -> None:
    """Print the build configuration and the seed example, right beside wrong."""
    config = roialign_cy.show_config(print_out=False)
    threads = f"{config['max_threads']} thread(s)" if config["openmp"] else "serial build"
    print(f"roialign_cy {config['version']}  OpenMP: {'on' if config['openmp'] else 'off'}, {threads}")
    print()

    # The notebook's example: one 5x5 map with 2 channels (NHWC), one RoI, 4x4 output,
    # sampling_ratio=2, legacy (aligned=False) coordinates.
    features = np.arange(100, dtype=np.float32).reshape(2, 5, 5, 2)[1]
    box = np.array([[1.0, 4.0, 4.0, 4.0]])  # x1, y1, x2, y2
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


if __name__ == "__main__":
    main()
