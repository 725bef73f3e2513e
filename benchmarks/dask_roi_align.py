"""roialign_cy.dask.roi_align on a local Dask cluster against a single-process loop, both
reading the same zarr store.

    python benchmarks/dask_roi_align.py                    # full run: prints Markdown, updates RESULTS.md
    python benchmarks/dask_roi_align.py --quick --no-write # smoke test (CI): seconds, writes nothing

The store: 32 images of features (256, 100, 152) float32 (an 800 x 1216 image at stride 8),
one image per chunk, zarr's default compression, written first into a temporary folder (so
it is in the OS page cache when read). Each image has 512 proposals inside the 800 x 1216
image (log-uniform sides of 16 to 600 pixels, clipped to the image), pooled to 7x7 with
spatial_scale 1/8, sampling_ratio 2, aligned=True, as a per-image list.

The loop reads image i from the store and calls roialign_cy.roi_align on its boxes (one
OpenMP thread, then every usable core); Dask runs roialign_cy.dask.roi_align on a
LocalCluster of processes with one thread each (1 worker, then 2), the pooled rows kept in
the workers' memory (persist), as a pipeline's next stage would consume them there. Each
figure is the median of a few full passes over the store, after a warm-up pass on two
images; the results are checked equal to the loop's first. No assertions on times.
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import environment
import report

SECTION = "## Dask: roi_align from a zarr store (benchmarks/dask_roi_align.py)"
CHANNELS, HEIGHT, WIDTH = 256, 100, 152
IMAGE_SIZE = (800, 1216)  # (height, width) in input pixels: stride 8
SPATIAL_SCALE = 1 / 8
OUTPUT_SIZE, SAMPLING_RATIO, ALIGNED = 7, 2, True
FULL = {"images": 32, "boxes": 512, "repeats": 5}
QUICK = {"images": 4, "boxes": 64, "repeats": 1}
TIMEOUT_S = 600


def progress(message):
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def write_store(path, n_images):
    """The features, one image per chunk, into a zarr store at path (through dask, so that
    any zarr version dask supports writes it); returns the store's size in bytes."""
    import dask.array as da

    shape = (n_images, CHANNELS, HEIGHT, WIDTH)
    features = da.random.default_rng(0).standard_normal(
        shape, chunks=(1, CHANNELS, HEIGHT, WIDTH), dtype=np.float32)
    features.to_zarr(path)
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)


def proposals(n_images, n_boxes, seed=1):
    """One (n_boxes, 4) array of [x1, y1, x2, y2] per image: random centres, log-uniform
    sides of 16 to 600 pixels, clipped to the image (as a detector's proposals are)."""
    rng = np.random.default_rng(seed)
    height, width = IMAGE_SIZE
    per_image = []
    for _ in range(n_images):
        centre = rng.uniform(0, 1, (n_boxes, 2)) * (width, height)
        half = np.exp(rng.uniform(np.log(16), np.log(600), (n_boxes, 2))) / 2
        low = np.clip(centre - half, 0, (width, height))
        high = np.clip(centre + half, 0, (width, height))
        per_image.append(np.column_stack([low, high]))
    return per_image


def loop_pass(path, boxes, num_threads):
    """The single-process baseline: read image i from the store, pool its boxes."""
    import zarr

    import roialign_cy

    store = zarr.open(path, mode="r")
    return [roialign_cy.roi_align(store[i:i + 1], np.column_stack([np.zeros(len(rows)), rows]),
                                  OUTPUT_SIZE, SPATIAL_SCALE, SAMPLING_RATIO, ALIGNED,
                                  num_threads=num_threads)
            for i, rows in enumerate(boxes)]


def dask_pass(client, path, boxes):
    """roialign_cy.dask.roi_align over the store, the result persisted on the workers."""
    import dask.array as da
    import distributed

    from roialign_cy import dask as roi_dask

    features = da.from_zarr(path)[:len(boxes)]
    pooled = roi_dask.roi_align(features, boxes, OUTPUT_SIZE, SPATIAL_SCALE, SAMPLING_RATIO,
                                ALIGNED)
    persisted = client.persist(pooled)
    distributed.wait(persisted, timeout=TIMEOUT_S)
    return persisted


def timed(run, repeats):
    """((median, best) seconds of `repeats` calls of run(), the last call's result)."""
    times, result = [], None
    for _ in range(repeats):
        result = None  # free the previous pass's results first
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return (statistics.median(times), min(times)), result


def check_equal(client, persisted, expected, images):
    """The Dask result's rows of `images` equal the loop's, bit for bit."""
    offsets = np.cumsum([0] + [len(rows) for rows in expected])
    for i in images:
        rows = client.compute(persisted[offsets[i]:offsets[i + 1]]).result(timeout=TIMEOUT_S)
        if not (rows.dtype == expected[i].dtype and np.array_equal(rows, expected[i])):
            raise SystemExit(f"roialign_cy.dask differs from the loop on image {i}")


def run_loops(path, boxes, repeats, cores):
    """{label: seconds} of the loop at 1 thread and at every usable core; and its results."""
    times = {}
    loop_pass(path, boxes[:2], 1)  # warm-up: imports, page cache
    for threads in sorted({1, cores}):
        label = f"loop, 1 process, {threads} OpenMP thread{'s' if threads > 1 else ''}"
        times[label], expected = timed(lambda n=threads: loop_pass(path, boxes, n), repeats)
        progress(f"{label}: {times[label][0]:.2f} s")
    return times, expected


def run_clusters(path, boxes, repeats, expected, full_check):
    """{label: seconds} of roialign_cy.dask on 1 and 2 workers (1 thread each)."""
    import distributed

    times = {}
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, \
                distributed.Client(cluster) as client:
            dask_pass(client, path, boxes[:2])  # warm-up: imports in the workers
            label = f"roialign_cy.dask, {workers} worker{'s' if workers > 1 else ''} x 1 thread"
            times[label], persisted = timed(lambda: dask_pass(client, path, boxes), repeats)
            progress(f"{label}: {times[label][0]:.2f} s")
            check_equal(client, persisted, expected,
                        range(len(boxes)) if full_check else (0, len(boxes) - 1))
            del persisted
    return times


def versions():
    """dask, distributed and zarr's versions."""
    import dask
    import distributed
    import zarr

    return {"dask": dask.__version__, "distributed": distributed.__version__,
            "zarr": zarr.__version__}


def results_rows(times, n_images, n_boxes):
    """One row per run: seconds (median, best), images/s and boxes/s (of the median), and
    the speedup over the 1-thread loop."""
    baseline = next(iter(times.values()))[0]
    lines = ["| run | time per pass, median (best) (s) | images/s | boxes/s | "
             "vs the 1-thread loop |", "|---|---|---|---|---|"]
    for label, (seconds, best) in times.items():
        lines.append(f"| {label} | {seconds:.2f} ({best:.2f}) | {n_images / seconds:.1f} | "
                     f"{n_images * n_boxes / seconds:,.0f} | {baseline / seconds:.2f}x |")
    return lines


def render(env, sizes, store_bytes, times):
    """The whole section as Markdown."""
    n_images, n_boxes = sizes["images"], sizes["boxes"]
    lines = [SECTION, ""]
    if sizes is QUICK:
        lines += [f"> **Quick run** (`--quick`): {n_images} images, {n_boxes} boxes each, one "
                  "pass. A smoke test, not numbers to quote.", ""]
    raw = n_images * CHANNELS * HEIGHT * WIDTH * 4
    lines += [
        f"{n_images} images of features ({CHANNELS}, {HEIGHT}, {WIDTH}) float32 in a zarr "
        f"store, one image per chunk ({raw / 2**20:.0f} MiB, {store_bytes / 2**20:.0f} MiB on "
        f"disk compressed, in the page cache); {n_boxes} proposals per image inside the "
        f"{IMAGE_SIZE[0]} x {IMAGE_SIZE[1]} image, roi_align to {OUTPUT_SIZE}x{OUTPUT_SIZE}, "
        f"spatial_scale 1/8, sampling_ratio {SAMPLING_RATIO}, aligned=True "
        f"({n_images * n_boxes * CHANNELS * OUTPUT_SIZE**2 * 4 / 2**20:.0f} MiB pooled). "
        "Loop: read image i, `roialign_cy.roi_align` its boxes. Dask: "
        "`roialign_cy.dask.roi_align(da.from_zarr(store), boxes, ...)` on a LocalCluster of "
        "worker processes, one thread each, persisted (the rows stay on the workers). "
        "Median of the passes after a warm-up; the Dask rows were checked bit-identical to "
        "the loop's.",
        "",
    ]
    software = [("dask / distributed / zarr",
                 f"{env['dask']} / {env['distributed']} / {env['zarr']}")]
    lines += [report.environment_table(env, software), ""]
    lines += report.busy_note(env)
    lines += results_rows(times, n_images, n_boxes)
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['images']} images of {QUICK['boxes']} boxes, one pass: "
                             "a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print only; RESULTS.md untouched")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    env = environment.describe()
    env.update(versions())
    boxes = proposals(sizes["images"], sizes["boxes"])
    with tempfile.TemporaryDirectory(prefix="dask-roi-align-") as folder:
        path = os.path.join(folder, "features.zarr")
        progress(f"writing {sizes['images']} images to {path}")
        store_bytes = write_store(path, sizes["images"])
        times, expected = run_loops(path, boxes, sizes["repeats"], environment.usable_cores())
        times.update(run_clusters(path, boxes, sizes["repeats"], expected, args.quick))
    env["load_end"] = environment.load_average()
    env["wall_s"] = time.perf_counter() - started
    env["command"] = report.command_line("dask_roi_align.py", argv)
    report.publish(render(env, sizes, store_bytes, times), SECTION,
                   write=not args.no_write and not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
