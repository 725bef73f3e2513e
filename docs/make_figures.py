"""Regenerate the README's figures in this folder: `python docs/make_figures.py`.

- sampling_figure.png: the paper's Figure 3 drawn by roialign_cy.plot.sampling_figure, a
  box at stride 16 (x/16, not [x/16]) pooled to 2x2 bins of 2x2 samples each;
- pooling_comparison.png: roialign_cy.plot.pooling_comparison of the same box, 3x3 bins;
- patches.png: the mosaic of examples/extract_patches.py.

Needs the examples extra (`pip install ".[examples]"`). Modest dpi keeps each PNG small.
"""

import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no window

from matplotlib.figure import Figure  # noqa: E402

from roialign_cy import plot  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
BOX = [22.0, 13.0, 68.0, 61.0]   # input-image pixels
SCALE = 1 / 16                    # feature stride 16
DPI = 80


def save(figure, name):
    """Write figure to docs/<name> and say how big it is."""
    path = os.path.join(HERE, name)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")


def main():
    """Draw the three figures."""
    figure = Figure(figsize=(6.0, 6.5))
    plot.sampling_figure((6, 6), BOX, 2, SCALE, 2, False, sample=(0, 0, 1, 0),
                         ax=figure.add_subplot())
    save(figure, "sampling_figure.png")

    figure = Figure(figsize=(11.0, 6.0))
    plot.pooling_comparison((7, 7), BOX, 3, SCALE, 2, False,
                            axes=(figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)))
    save(figure, "pooling_comparison.png")

    patches = os.path.join(HERE, "patches.png")
    subprocess.run([sys.executable, os.path.join(EXAMPLES, "extract_patches.py"), "--out",
                    patches], check=True, stdout=subprocess.DEVNULL)
    print(f"wrote {patches} ({os.path.getsize(patches) // 1024} KB)")


if __name__ == "__main__":
    main()
