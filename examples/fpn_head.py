"""A two-stage detector's box head in NumPy, trained for one step through multi-level RoIAlign.

The pieces of a Faster R-CNN head with a feature pyramid (FPN), without a deep-learning
framework:

- a feature pyramid at strides 4, 8, 16 and 32, made without convolutions: a fixed random
  "backbone" map at full resolution, average-pooled to each stride and normalised, each
  level times a learnable gain (a stand-in for the pyramid's learnable layers);
- proposals: random boxes of many sizes, so that they fall on every level;
- ``roialign_cy.multiscale_roi_align`` pools each proposal from its level
  (torchvision's MultiScaleRoIAlign rule) to 7x7;
- a small MLP, flatten -> 128 -> classes, and a softmax cross-entropy loss;
- one step of gradient descent on the MLP *and* the level gains: the gradient reaches
  the pyramid through ``roialign_cy.multiscale_roi_align_backward``.

It prints the loss before and after the step (it decreases). The functions are importable:
tests/test_examples.py checks the gradient against finite differences.

Run: ``python examples/fpn_head.py`` (NumPy and roialign_cy only).
"""

import argparse
import time

import numpy as np

import roialign_cy

STRIDES = (4, 8, 16, 32)
IMAGE_SIZE = (512, 640)   # (height, width) of every image of the batch
CHANNELS = 8
POOLED = 7
SAMPLING_RATIO = 2
HIDDEN = 128
CLASSES = 5
PROPOSALS_PER_IMAGE = 48


def make_batch(rng, n_images=2):
    """The frozen backbone's pyramid (one (N, C, H/s, W/s) map per stride), proposals (a list
    of (K_i, 4) boxes per image) and their class labels."""
    height, width = IMAGE_SIZE
    backbone = rng.standard_normal((n_images, CHANNELS, height, width))
    pyramid = []
    for s in STRIDES:
        level = backbone.reshape(n_images, CHANNELS, height // s, s, width // s, s).mean((3, 5))
        pyramid.append(level / level.std())  # each level normalised, as by a norm layer
    proposals = []
    for _ in range(n_images):
        sizes = np.exp(rng.uniform(np.log(24), np.log(500), (PROPOSALS_PER_IMAGE, 1)))
        sizes = sizes * rng.uniform(0.5, 1.5, (PROPOSALS_PER_IMAGE, 2))  # aspect ratios
        corners = rng.uniform(0, 1, (PROPOSALS_PER_IMAGE, 2)) * np.maximum(
            [width, height] - sizes, 0)
        proposals.append(np.concatenate([corners, corners + sizes], axis=1))
    labels = rng.integers(0, CLASSES, n_images * PROPOSALS_PER_IMAGE)
    return {"pyramid": pyramid, "proposals": proposals, "labels": labels,
            "image_sizes": [IMAGE_SIZE] * n_images}


def init_params(rng):
    """The head's parameters: the level gains and the MLP's weights."""
    n_in = CHANNELS * POOLED * POOLED
    return {"gains": np.ones(len(STRIDES)),
            "w1": rng.standard_normal((n_in, HIDDEN)) * np.sqrt(2 / n_in),
            "b1": np.zeros(HIDDEN),
            "w2": rng.standard_normal((HIDDEN, CLASSES)) * np.sqrt(1 / HIDDEN),
            "b2": np.zeros(CLASSES)}


def levels(params, batch):
    """The pyramid the head sees: each frozen level times its gain."""
    return [gain * level for gain, level in zip(params["gains"], batch["pyramid"])]


def forward(params, batch):
    """(loss, the intermediate values backward needs)."""
    features = levels(params, batch)
    pooled = roialign_cy.multiscale_roi_align(features, batch["proposals"], POOLED,
                                              SAMPLING_RATIO, image_sizes=batch["image_sizes"])
    x = pooled.reshape(len(pooled), -1)
    hidden = np.maximum(x @ params["w1"] + params["b1"], 0.0)
    logits = hidden @ params["w2"] + params["b2"]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    labels = batch["labels"]
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    return loss, {"features": features, "pooled": pooled, "x": x, "hidden": hidden,
                  "log_probs": log_probs}


def loss_and_gradients(params, batch):
    """(loss, gradients of every parameter, and of every pyramid level the head sees)."""
    loss, cache = forward(params, batch)
    labels = batch["labels"]
    d_logits = np.exp(cache["log_probs"])
    d_logits[np.arange(len(labels)), labels] -= 1.0
    d_logits /= len(labels)
    grads = {"w2": cache["hidden"].T @ d_logits, "b2": d_logits.sum(axis=0)}
    d_hidden = (d_logits @ params["w2"].T) * (cache["hidden"] > 0)
    grads["w1"] = cache["x"].T @ d_hidden
    grads["b1"] = d_hidden.sum(axis=0)
    d_pooled = (d_hidden @ params["w1"].T).reshape(cache["pooled"].shape)
    # Back through RoIAlign to every level: the same boxes, sizes and level rule.
    level_grads = roialign_cy.multiscale_roi_align_backward(
        d_pooled, batch["proposals"], [f.shape for f in cache["features"]], POOLED,
        SAMPLING_RATIO, image_sizes=batch["image_sizes"])
    grads["levels"] = level_grads
    grads["gains"] = np.array([(g * level).sum()
                               for g, level in zip(level_grads, batch["pyramid"])])
    return loss, grads


def sgd_step(params, grads, learning_rate):
    """One step of gradient descent on every parameter."""
    return {name: value - learning_rate * grads[name] for name, value in params.items()}


def main(argv=None):
    """Build a batch, take one training step, print the loss before and after."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.5, help="learning rate")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    batch = make_batch(rng)
    params = init_params(rng)
    shapes = ", ".join(str(level.shape[2:]) for level in batch["pyramid"])
    n_boxes = sum(len(p) for p in batch["proposals"])
    assigned = roialign_cy.assign_levels(np.concatenate(batch["proposals"]), 2, 5)
    print(f"pyramid levels P2-P5 {shapes}, {n_boxes} proposals, per level "
          f"{np.bincount(assigned, minlength=len(STRIDES)).tolist()}")
    start = time.perf_counter()
    loss, grads = loss_and_gradients(params, batch)
    elapsed = time.perf_counter() - start
    print(f"loss before: {loss:.6f}")
    print(f"level gain gradients: {np.array2string(grads['gains'], precision=4)}")
    params = sgd_step(params, grads, args.lr)
    after, _ = forward(params, batch)
    print(f"loss after:  {after:.6f}")
    print(f"(forward + backward through multiscale_roi_align in {elapsed * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
