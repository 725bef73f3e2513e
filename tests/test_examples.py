"""The scripts in examples/ run as documented, and do what they say: the patch mosaic holds
true crop-and-resize patches, the FPN head's training step lowers its loss, and its gradient
through multiscale_roi_align_backward matches finite differences.

They live beside the tests in the repository only: where the tests are copied elsewhere
(the wheel checks), these skip.
"""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
pytestmark = pytest.mark.skipif(not os.path.isdir(EXAMPLES),
                                reason="examples/ is not beside the tests")


def load(name):
    """Import examples/<name>.py as a module (its main() does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name, *args, cwd):
    """Run examples/<name>.py in a fresh interpreter; its stdout."""
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, f"{name}.py"), *args],
                            cwd=cwd, env=dict(os.environ, MPLBACKEND="Agg"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_extract_patches_writes_crop_and_resize_patches(tmp_path):
    pytest.importorskip("skimage", reason="scikit-image is not installed (the examples extra)")
    image = pytest.importorskip("matplotlib.image",
                                reason="matplotlib is not installed (the plot extra)")
    example = load("extract_patches")
    out = tmp_path / "patches.png"
    stdout = run_example("extract_patches", "--out", str(out), cwd=tmp_path)
    assert f"wrote {out}" in stdout
    mosaic = np.rint(image.imread(str(out))[..., :3] * 255).astype(np.uint8)
    count = len(example.OBJECTS) + example.N_RANDOM
    rows = -(-count // example.COLUMNS)
    size, gap = example.PATCH, example.GAP
    assert mosaic.shape == (rows * size + (rows + 1) * gap,
                            example.COLUMNS * size + (example.COLUMNS + 1) * gap, 3)
    # The face box is 128x128 on whole-pixel corners: with aligned=True and sampling_ratio=2
    # every sample lands on a pixel, so each output pixel is the mean of a 2x2 block.
    name, (x1, y1, x2, y2) = example.OBJECTS[0]
    assert name == "face" and x2 - x1 == y2 - y1 == 2 * size
    photo = example.load_photo().astype(np.float64)
    blocks = photo[y1:y2, x1:x2].reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    expected = np.clip(np.rint(blocks), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(mosaic[gap:gap + size, gap:gap + size], expected)


def test_fpn_head_step_lowers_the_loss(tmp_path):
    stdout = run_example("fpn_head", cwd=tmp_path)
    before = float(re.search(r"loss before: ([0-9.]+)", stdout).group(1))
    after = float(re.search(r"loss after: +([0-9.]+)", stdout).group(1))
    assert after < before, stdout


def test_fpn_head_gradient_matches_finite_differences():
    example = load("fpn_head")
    rng = np.random.default_rng(1)
    batch = example.make_batch(rng)
    params = example.init_params(rng)
    params["gains"] = rng.uniform(0.5, 1.5, len(example.STRIDES))
    _, grads = example.loss_and_gradients(params, batch)
    eps = 1e-6

    def loss_with(change):
        return example.forward(change(), batch)[0]

    # One entry of every pyramid level the head sees (where that level's gradient is
    # largest), through multiscale_roi_align_backward: perturb the frozen level, divided by
    # the level's gain so that the seen level moves by eps.
    for level, level_grad in enumerate(grads["levels"]):
        if not level_grad.any():
            continue
        at = np.unravel_index(np.abs(level_grad).argmax(), level_grad.shape)
        frozen = batch["pyramid"][level]
        original = frozen[at]
        losses = []
        for sign in (1, -1):
            frozen[at] = original + sign * eps / params["gains"][level]
            losses.append(example.forward(params, batch)[0])
        frozen[at] = original
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert numeric == pytest.approx(level_grad[at], rel=1e-4, abs=1e-9), level

    for level in range(len(example.STRIDES)):
        def shifted(sign, level=level):
            gains = params["gains"].copy()
            gains[level] += sign * eps
            return {**params, "gains": gains}

        numeric = (loss_with(lambda: shifted(1)) - loss_with(lambda: shifted(-1))) / (2 * eps)
        assert numeric == pytest.approx(grads["gains"][level], rel=1e-4, abs=1e-9), level

    w1 = params["w1"]
    i, j = np.unravel_index(np.abs(grads["w1"]).argmax(), w1.shape)
    original = w1[i, j]
    losses = []
    for sign in (1, -1):
        w1[i, j] = original + sign * eps
        losses.append(example.forward(params, batch)[0])
    w1[i, j] = original
    assert (losses[0] - losses[1]) / (2 * eps) == pytest.approx(grads["w1"][i, j], rel=1e-4)
