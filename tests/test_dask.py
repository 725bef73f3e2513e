"""roialign_cy.dask: on a two-process LocalCluster reading zarr stores written here (one
image per chunk), every result is the in-memory call's bit for bit (roi_align, roi_pool,
multiscale_roi_align; NCHW and NHWC; float32 and float64; unsorted boxes, images without
boxes, no boxes at all, per-image lists; channel chunks; a map chunked along H); each task
receives only its block's boxes; bad input fails when the graph is built; a worker killed
mid-computation changes nothing; and `import roialign_cy` never imports dask.

Skips without dask, distributed or zarr (the dask extra). Every compute has a timeout.
"""

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="dask is not installed (the dask extra)")
distributed = pytest.importorskip("distributed",
                                  reason="distributed is not installed (the dask extra)")
zarr = pytest.importorskip("zarr", reason="zarr is not installed (the dask extra)")
import cloudpickle  # noqa: E402  (distributed's own dependency)
import dask  # noqa: E402
from dask.array.core import PerformanceWarning  # noqa: E402

import roialign_cy  # noqa: E402
from roialign_cy import dask as roi_dask  # noqa: E402

# The worker-killing task below is a function of this module, which the workers cannot
# import (the tests are not a package on their path): ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(roialign_cy.__file__)))
TIMEOUT_S = 120
N_IMAGES, CHANNELS, HEIGHT, WIDTH = 6, 8, 24, 36  # the stride-4 map of a 96 x 144 image
EMPTY_IMAGES = (2, 4)
STRIDES = (4, 8, 16)  # the pyramid's levels


@pytest.fixture(scope="module")
def client():
    """One two-worker, one-thread-per-worker process cluster for the whole module."""
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None, silence_logs=logging.CRITICAL) as cluster:
        with distributed.Client(cluster) as cluster_client:
            yield cluster_client


def compute(client, array):
    """array computed on the cluster, within TIMEOUT_S."""
    return client.compute(array).result(timeout=TIMEOUT_S)


def random_maps(seed, shape, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def write_zarr(path, array, chunks):
    """Write array to a zarr store at path (one chunk per `chunks`), open it lazily."""
    da.from_array(array, chunks=chunks).to_zarr(str(path))
    return da.from_zarr(str(path))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{(layout, dtype name): (in-memory features, the same from a zarr store, one image
    per chunk)}."""
    folder = tmp_path_factory.mktemp("stores")
    result = {}
    for seed, dtype in enumerate((np.float32, np.float64)):
        nchw = random_maps(seed, (N_IMAGES, CHANNELS, HEIGHT, WIDTH), dtype)
        for layout, features in (("NCHW", nchw), ("NHWC", nchw.transpose(0, 2, 3, 1).copy())):
            name = f"{layout}-{np.dtype(dtype).name}"
            whole = (1,) + features.shape[1:]
            result[layout, np.dtype(dtype).name] = (
                features, write_zarr(folder / f"{name}.zarr", features, whole))
    return result


def random_boxes(seed, n_boxes, image_size=(HEIGHT * 4, WIDTH * 4), empty=EMPTY_IMAGES):
    """(K, 5) rows in a random (unsorted) image order, none on the `empty` images, of
    sizes from a few pixels to most of the image (and some past its border)."""
    rng = np.random.default_rng(seed)
    images = np.setdiff1d(np.arange(N_IMAGES), empty)
    height, width = image_size
    extent = np.array([width, height])
    size = extent * rng.uniform(0.05, 1.0, (n_boxes, 1)) * rng.uniform(0.7, 1.3, (n_boxes, 2))
    corner = extent * rng.uniform(-0.1, 1.0, (n_boxes, 2)) - size / 2
    return np.column_stack([rng.choice(images, n_boxes), corner, corner + size])


def unsorted(boxes):
    """Whether the boxes are out of image order (so the result must be reordered)."""
    return bool(np.any(np.diff(boxes[:, 0]) < 0))


def assert_identical(result, expected):
    assert result.dtype == expected.dtype
    assert result.shape == expected.shape
    assert np.array_equal(result, expected, equal_nan=True)


def assert_known_chunks(array):
    assert not any(np.isnan(size) for sizes in array.chunks for size in sizes)


# ---- the same numbers as the in-memory calls -------------------------------------------


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode, aligned, sampling_ratio", [("avg", False, -1), ("max", True, 2)])
def test_roi_align_is_the_in_memory_call(client, stores, layout, dtype, mode, aligned,
                                         sampling_ratio):
    features, stored = stores[layout, dtype]
    boxes = random_boxes(1, 40)
    assert unsorted(boxes)
    arguments = dict(output_size=(7, 5), spatial_scale=0.25, sampling_ratio=sampling_ratio,
                     aligned=aligned, layout=layout, mode=mode)
    pooled = roi_dask.roi_align(stored, boxes, **arguments)
    assert_known_chunks(pooled)
    expected = roialign_cy.roi_align(features, boxes, **arguments)
    assert pooled.shape == expected.shape and pooled.dtype == expected.dtype
    assert_identical(compute(client, pooled), expected)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_roi_pool_is_the_in_memory_call(client, stores, layout, dtype):
    features, stored = stores[layout, dtype]
    boxes = random_boxes(2, 30)
    pooled = roi_dask.roi_pool(stored, boxes, 7, 0.25, layout=layout)
    assert_identical(compute(client, pooled),
                     roialign_cy.roi_pool(features, boxes, 7, 0.25, layout=layout))


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """(in-memory levels, the levels from zarr stores): strides 4, 8, 16, NCHW, float32."""
    folder = tmp_path_factory.mktemp("pyramid")
    levels, stored = [], []
    for i, stride in enumerate(STRIDES):
        level = random_maps(10 + i, (N_IMAGES, CHANNELS, HEIGHT * 4 // stride,
                                     WIDTH * 4 // stride), np.float32)
        levels.append(level)
        stored.append(write_zarr(folder / f"p{i}.zarr", level, (1,) + level.shape[1:]))
    return levels, stored


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("level_rule, canonical_scale", [("torchvision", 56), ("mmdet", 14)])
def test_multiscale_roi_align_is_the_in_memory_call(client, pyramid, layout, level_rule,
                                                    canonical_scale):
    levels, stored = pyramid
    if layout == "NHWC":
        levels = [level.transpose(0, 2, 3, 1) for level in levels]
        stored = [level.transpose(0, 2, 3, 1) for level in stored]
    boxes = random_boxes(3, 60)
    image_sizes = [(HEIGHT * 4 - 2 * i, WIDTH * 4) for i in range(N_IMAGES)]
    arguments = dict(image_sizes=image_sizes, level_rule=level_rule,
                     canonical_scale=canonical_scale, layout=layout)
    chosen = roialign_cy.assign_levels(boxes, 2, 4, canonical_scale, rule=level_rule)
    assert len(np.unique(chosen)) == len(STRIDES)  # every level pools some boxes
    pooled = roi_dask.multiscale_roi_align(stored, boxes, 7, 2, **arguments)
    assert_identical(compute(client, pooled),
                     roialign_cy.multiscale_roi_align(levels, boxes, 7, 2, **arguments))


def test_boxes_as_a_per_image_list(client, stores):
    features, stored = stores["NCHW", "float32"]
    boxes = random_boxes(4, 25)
    per_image = [boxes[boxes[:, 0] == i, 1:] for i in range(N_IMAGES)]
    assert len(per_image[EMPTY_IMAGES[0]]) == 0
    pooled = roi_dask.roi_align(stored, per_image, 7, 0.25, 2)
    assert_identical(compute(client, pooled),
                     roialign_cy.roi_align(features, per_image, 7, 0.25, 2))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_no_boxes_at_all(client, stores, layout):
    _, stored = stores[layout, "float64"]
    pooled = roi_dask.roi_align(stored, np.zeros((0, 5)), (3, 4), layout=layout)
    expected_shape = (0, CHANNELS, 3, 4) if layout == "NCHW" else (0, 3, 4, CHANNELS)
    assert pooled.shape == expected_shape and pooled.dtype == np.float64
    assert_known_chunks(pooled)
    assert_identical(compute(client, pooled), np.zeros(expected_shape))
    no_boxes = [np.zeros((0, 4))] * N_IMAGES
    assert roi_dask.roi_pool(stored, no_boxes, 2, layout=layout).shape[0] == 0


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_channel_blocks_are_tasks_and_output_chunks(client, stores, tmp_path, layout):
    features, _ = stores[layout, "float32"]
    channel_axis = 1 if layout == "NCHW" else 3
    chunks = [1, features.shape[1], features.shape[2], features.shape[3]]
    chunks[channel_axis] = 3  # blocks of 3, 3 and 2 channels (zarr chunks are regular)
    stored = write_zarr(tmp_path / "channels.zarr", features, tuple(chunks))
    boxes = random_boxes(5, 30)
    pooled = roi_dask.roi_align(stored, boxes, 7, 0.25, layout=layout)
    assert pooled.chunks[channel_axis] == (3, 3, 2)
    assert_identical(compute(client, pooled),
                     roialign_cy.roi_align(features, boxes, 7, 0.25, layout=layout))


def test_a_map_chunked_along_h_is_rechunked_with_a_warning(client, stores, tmp_path):
    features, _ = stores["NCHW", "float32"]
    stored = write_zarr(tmp_path / "rows.zarr", features, (2, CHANNELS, HEIGHT // 3, WIDTH))
    boxes = random_boxes(6, 30)
    with pytest.warns(PerformanceWarning, match="chunked along H or W.*rechunked to whole images"):
        pooled = roi_dask.roi_align(stored, boxes, 7, 0.25, 2)
    assert_identical(compute(client, pooled), roialign_cy.roi_align(features, boxes, 7, 0.25, 2))


def test_pyramid_levels_chunked_differently_are_aligned_with_a_warning(client, pyramid):
    levels, stored = pyramid
    stored = [stored[0], stored[1].rechunk({0: 3}), stored[2].rechunk({2: 1})]
    boxes = random_boxes(7, 30)
    with pytest.warns(PerformanceWarning) as caught:
        pooled = roi_dask.multiscale_roi_align(stored, boxes, 7, scales=[0.25, 0.125, 0.0625])
    messages = [str(warning.message) for warning in caught]
    assert any("features[1] is chunked along N or C" in m for m in messages), messages
    assert any("features[2] is chunked along H or W" in m for m in messages), messages
    assert_identical(compute(client, pooled), roialign_cy.multiscale_roi_align(
        levels, boxes, 7, scales=[0.25, 0.125, 0.0625]))


# ---- the graph: lazy, known chunks, boxes travel with their block only --------------------


def poisoned(block):
    raise AssertionError("a block was computed while the graph was being built")


def test_the_result_is_lazy_with_known_chunks(stores):
    _, stored = stores["NCHW", "float32"]
    never_computed = stored.map_blocks(poisoned, dtype=stored.dtype)
    pooled = roi_dask.roi_align(never_computed, random_boxes(8, 20), 7, 0.25)
    assert isinstance(pooled, da.Array)
    assert_known_chunks(pooled)
    assert sum(pooled.chunks[0]) == 20


def test_each_task_receives_only_its_blocks_boxes(stores, monkeypatch):
    features, stored = stores["NCHW", "float64"]
    stored = stored.rechunk({0: 2})  # image blocks [0, 2), [2, 4), [4, 6)
    boxes = random_boxes(9, 30, empty=(2, 3))  # block [2, 4) has none
    calls = []
    in_memory = roialign_cy.roi_align

    def spy(block, rows, **arguments):
        if len(rows):  # (the stand-in call made while checking the arguments has none)
            calls.append((block.shape[0], np.asarray(rows)[:, 0].copy()))
        return in_memory(block, rows, **arguments)

    monkeypatch.setattr(roialign_cy, "roi_align", spy)
    pooled = roi_dask.roi_align(stored, boxes, 7, 0.25)
    result = pooled.compute(scheduler="sync")
    monkeypatch.undo()
    assert_identical(result, roialign_cy.roi_align(features, boxes, 7, 0.25))
    block_of = boxes[:, 0] // 2
    expected = sorted(int(n) for n in np.bincount(block_of.astype(int)) if n)
    assert sorted(len(rows) for _, rows in calls) == expected  # one task per block with boxes
    for n_images, batch_index in calls:  # renumbered within the block's images
        assert n_images == 2 and batch_index.min() >= 0 and batch_index.max() < 2


def test_a_block_with_many_boxes_is_split_within_the_chunk_size(client, stores):
    features, stored = stores["NHWC", "float32"]
    boxes = random_boxes(10, 50)
    row_bytes = 7 * 7 * CHANNELS * 4
    with dask.config.set({"array.chunk-size": f"{3 * row_bytes}B"}):
        pooled = roi_dask.roi_align(stored, boxes[np.argsort(boxes[:, 0], kind="stable")], 7,
                                    0.25, layout="NHWC")
    assert max(pooled.chunks[0]) == 3 and len(pooled.chunks[0]) >= 50 // 3
    assert_identical(compute(client, pooled), roialign_cy.roi_align(
        features, boxes[np.argsort(boxes[:, 0], kind="stable")], 7, 0.25, layout="NHWC"))


def test_boxes_in_image_order_are_not_reordered(stores):
    _, stored = stores["NCHW", "float32"]
    boxes = random_boxes(11, 30)
    in_order = roi_dask.roi_align(stored, boxes[np.argsort(boxes[:, 0], kind="stable")], 7)
    reordered = roi_dask.roi_align(stored, boxes, 7)
    assert in_order.name.startswith("roi_align-")  # the pooling layer itself: no take
    assert not reordered.name.startswith("roi_align-")
    # one output chunk per image block with boxes, and the take keeps several chunks (no
    # task gathers every pooled row)
    assert len(in_order.chunks[0]) == N_IMAGES - len(EMPTY_IMAGES)
    assert len(reordered.chunks[0]) > 1


# ---- bad input fails when the graph is built ------------------------------------------


def lazy_features(shape=(N_IMAGES, CHANNELS, HEIGHT, WIDTH), dtype=np.float32):
    """A dask array that fails if any block is computed."""
    return da.zeros(shape, dtype=dtype, chunks=(1,) + shape[1:]).map_blocks(poisoned,
                                                                            dtype=dtype)


GOOD_BOXES = np.array([[0, 1.0, 2.0, 30.0, 40.0], [5, 3.0, 4.0, 50.0, 60.0]])
BAD_CALLS = [
    ("boxes of shape (K, 4)", lambda: roi_dask.roi_align(lazy_features(), GOOD_BOXES[:, 1:], 7),
     ValueError, r"boxes must have shape \(K, 5\)"),
    ("batch index out of range",
     lambda: roi_dask.roi_align(lazy_features(), GOOD_BOXES + [[1, 0, 0, 0, 0]] * 2, 7),
     ValueError, r"boxes row 1: batch index 6 is outside \[0, 6\)"),
    ("NaN box",
     lambda: roi_dask.roi_pool(lazy_features(), np.array([[0, 1.0, np.nan, 3.0, 4.0]]), 7),
     ValueError, "boxes row 0 has a NaN"),
    ("a per-image list of the wrong length",
     lambda: roi_dask.roi_align(lazy_features(), [GOOD_BOXES[:, 1:]], 7),
     ValueError, "boxes as a list must hold one"),
    ("NumPy features", lambda: roi_dask.roi_align(np.zeros((1, 1, 4, 4)), GOOD_BOXES[:1], 7),
     TypeError, "features must be a dask array"),
    ("3-D features", lambda: roi_dask.roi_align(lazy_features()[0], GOOD_BOXES[:1], 7),
     ValueError, "features must be 4-D"),
    ("integer features",
     lambda: roi_dask.roi_align(da.zeros((1, 1, 4, 4), dtype=int), GOOD_BOXES[:1], 7),
     TypeError, "features must be float16, float32 or float64"),
    ("unknown chunk sizes",
     lambda: roi_dask.roi_align(lazy_features()[da.ones(N_IMAGES, chunks=1) > 0],
                                GOOD_BOXES, 7),
     ValueError, "features has unknown chunk sizes"),
    ("output_size 0", lambda: roi_dask.roi_align(lazy_features(), GOOD_BOXES, 0),
     ValueError, "output_size must be >= 1"),
    ("bad mode", lambda: roi_dask.roi_align(lazy_features(), GOOD_BOXES, 7, mode="mean"),
     ValueError, "mode must be 'avg' or 'max'"),
    ("bad layout", lambda: roi_dask.roi_pool(lazy_features(), GOOD_BOXES, 7, layout="NWHC"),
     ValueError, "layout must be 'NCHW' or 'NHWC'"),
    ("negative spatial_scale", lambda: roi_dask.roi_pool(lazy_features(), GOOD_BOXES, 7, -1.0),
     ValueError, "spatial_scale must be finite and > 0"),
    ("num_threads 0", lambda: roi_dask.roi_align(lazy_features(), GOOD_BOXES, 7, num_threads=0),
     ValueError, "num_threads must be >= 1"),
    ("levels without scales",
     lambda: roi_dask.multiscale_roi_align([lazy_features()], GOOD_BOXES, 7),
     ValueError, "image_sizes .or scales. is required"),
    ("levels with different C",
     lambda: roi_dask.multiscale_roi_align(
         [lazy_features(), lazy_features((N_IMAGES, 3, 12, 18))], GOOD_BOXES, 7,
         scales=[0.25, 0.125]),
     ValueError, r"features\[1\] has shape .*same N and C"),
    ("levels not a list",
     lambda: roi_dask.multiscale_roi_align(lazy_features(), GOOD_BOXES, 7, scales=[0.25]),
     TypeError, "features must be a non-empty list"),
    ("a bad level rule",
     lambda: roi_dask.multiscale_roi_align([lazy_features()], GOOD_BOXES, 7, scales=[0.25],
                                           level_rule="fpn"),
     ValueError, "level_rule must be one of"),
]


@pytest.mark.parametrize("call, error, message", [row[1:] for row in BAD_CALLS],
                         ids=[row[0] for row in BAD_CALLS])
def test_bad_input_fails_when_the_graph_is_built(call, error, message):
    """The features' blocks would raise AssertionError if computed: the error comes from
    the checks, before any compute."""
    with pytest.raises(error, match=message):
        call()


# ---- a worker killed mid-computation ----------------------------------------------------


def die_once(block, marker, block_info=None):
    """Kill this worker's process the first time image 3 is read (the marker file says it
    happened); return the block on every later attempt."""
    if block_info[0]["chunk-location"][0] == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return block


def test_a_worker_killed_mid_computation_changes_nothing(client, stores, tmp_path):
    features, stored = stores["NCHW", "float32"]
    marker = str(tmp_path / "worker-killed")
    dying = stored.map_blocks(die_once, marker, dtype=stored.dtype)
    boxes = random_boxes(12, 40)
    pooled = roi_dask.roi_align(dying, boxes, 7, 0.25, 2, True)
    assert_identical(compute(client, pooled),
                     roialign_cy.roi_align(features, boxes, 7, 0.25, 2, True))
    assert os.path.exists(marker)  # a worker did die
    client.wait_for_workers(2, timeout=TIMEOUT_S)  # (the nanny restarts it)


# ---- the optional dependency -------------------------------------------------------------


def run_python(code):
    """`python -c code` in a fresh interpreter that imports the package the tests import."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def test_import_roialign_cy_never_imports_dask():
    ran = run_python("""
        import sys
        import roialign_cy
        roialign_cy.roi_align
        roots = ("dask", "distributed", "zarr")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in roots)
        assert not loaded, loaded
        assert "roialign_cy.dask" not in sys.modules
        """)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_without_dask_the_import_names_the_extra():
    ran = run_python("""
        import sys
        sys.modules["dask"] = None  # as if not installed: importing it raises ImportError
        try:
            import roialign_cy.dask
        except ImportError as error:
            print(error)
        """)
    assert ran.returncode == 0, ran.stderr
    assert 'pip install "roialign-cy[dask]"' in ran.stdout, ran.stdout


def test_docstring_examples_run():
    import doctest

    results = doctest.testmod(roi_dask)
    assert results.attempted >= 10 and results.failed == 0
