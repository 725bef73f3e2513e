"""Adapters: one function per implementation, returning a ready-to-time callable or None.

Each `make_*` prepares everything a call needs outside the timing (tensor views, ONNX
sessions, argmax for max-pool backward, ...) and returns a zero-argument callable whose
result converts to a NumPy array with `np.asarray`, or None when the implementation is not
installed or does not provide that operation. Peers are optional: a missing import is
never an error. torchvision and ONNX Runtime only take NCHW, so they are always called in
NCHW (the runner reuses that figure for the NHWC rows); the NumPy baseline takes both.

Operations are keyed by (op, direction): ("roi_align" | "roi_pool", "forward" | "backward").
"""

import importlib
import inspect

import numpy as np

import numpy_baseline

PEERS = ("torchvision", "onnxruntime", "numpy")

# ONNX opset for the one-node models: RoiAlign-16 has coordinate_transformation_mode.
ONNX_OPSET = 16
ONNX_IR_VERSION = 8


def _try_import(name):
    """The module `name`, or None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(name)
    except Exception:  # a broken optional install counts as missing
        return None


def versions():
    """{"torch": "2.x" | None, "torchvision": ..., "onnxruntime": ..., "onnx": ..., "matplotlib": ...}."""
    found = {}
    for name in ("torch", "torchvision", "onnxruntime", "onnx", "matplotlib"):
        module = _try_import(name)
        found[name] = getattr(module, "__version__", "?") if module is not None else None
    return found


# ---------------------------------------------------------------------------- roialign_cy


def _accepted_kwargs(function, candidates):
    """The items of `candidates` whose names `function` accepts (by its signature)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return dict(candidates)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(candidates)
    return {k: v for k, v in candidates.items() if k in parameters}


def has_ours(op, direction):
    """Whether this roialign_cy build provides (op, direction)."""
    import roialign_cy

    name = op if direction == "forward" else f"{op}_backward"
    return hasattr(roialign_cy, name)


def make_ours(wl, op, direction, layout, n_threads, out=None):
    """roialign_cy's function for (op, direction) in `layout` on `n_threads`, or None.

    Without `out` each call allocates its result, as the peers' calls do; with `out` (used
    by the memory probe) the result is written there when the function accepts ``out=``.
    """
    import roialign_cy

    features = wl.features(layout)
    if not has_ours(op, direction):
        return None
    extra = {"layout": layout, "num_threads": n_threads}
    if out is not None:
        extra["out"] = out
    if op == "roi_align" and direction == "forward":
        kwargs = _accepted_kwargs(roialign_cy.roi_align, extra)

        def call():
            """roialign_cy.roi_align."""
            return roialign_cy.roi_align(features, wl.boxes, wl.output_size, wl.spatial_scale,
                                         wl.sampling_ratio, wl.aligned, **kwargs)
        return call
    if op == "roi_align":
        grad = wl.grad_output(layout)
        shape = wl.input_shape(layout)
        function = roialign_cy.roi_align_backward
        kwargs = _accepted_kwargs(function, extra)

        def call():
            """roialign_cy.roi_align_backward: gradient w.r.t. the features."""
            return function(grad, wl.boxes, shape, wl.output_size, wl.spatial_scale,
                            wl.sampling_ratio, wl.aligned, **kwargs)
        return call
    if direction == "forward":
        function = roialign_cy.roi_pool
        kwargs = _accepted_kwargs(function, extra)

        def call():
            """roialign_cy.roi_pool (max pooling over quantized bins)."""
            return function(features, wl.boxes, wl.output_size, wl.spatial_scale, **kwargs)
        return call
    grad = wl.grad_output(layout)
    function = roialign_cy.roi_pool_backward
    # Max-pool backward needs the maxima: like torchvision's, it is handed the arg-max its
    # forward recorded (computed here, outside the timing) when this build accepts it;
    # otherwise it finds them again from the features. The third argument is the features
    # themselves (or, in a shape-taking variant, their shape plus input=).
    if "argmax" in _accepted_kwargs(function, {"argmax": None}):
        forward_kwargs = _accepted_kwargs(roialign_cy.roi_pool, {**extra, "return_argmax": True})
        forward_kwargs.pop("out", None)
        _, extra["argmax"] = roialign_cy.roi_pool(features, wl.boxes, wl.output_size,
                                                  wl.spatial_scale, **forward_kwargs)
    third = _third_parameter(function)
    kwargs = _accepted_kwargs(function, {**extra, "input": features})
    first_args = (grad, wl.boxes, features if third == "input" else wl.input_shape(layout))
    if third == "input":
        kwargs.pop("input", None)

    def call():
        """roialign_cy.roi_pool_backward: gradient w.r.t. the features."""
        return function(*first_args, wl.output_size, wl.spatial_scale, **kwargs)
    return call


def _third_parameter(function):
    """Name of the third positional parameter of `function` (None when unknown)."""
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None
    return names[2] if len(names) > 2 else None


# ---------------------------------------------------------------------------- torchvision


def make_torchvision(wl, op, direction, n_threads):
    """torchvision's CPU kernel for (op, direction), NCHW, after torch.set_num_threads(n)."""
    torch = _try_import("torch")
    if torch is None or _try_import("torchvision") is None:
        return None
    torch.set_num_threads(n_threads)
    ops = torch.ops.torchvision
    features = torch.from_numpy(wl.features("NCHW"))
    rois = torch.from_numpy(wl.boxes)
    ph, pw = wl.output_size
    n, c, h, w = wl.nchw_shape
    scale = float(wl.spatial_scale)
    if op == "roi_align" and direction == "forward":
        return lambda: ops.roi_align(features, rois, scale, ph, pw, wl.sampling_ratio, wl.aligned)
    grad = torch.from_numpy(wl.grad_output("NCHW"))
    if op == "roi_align":
        return lambda: ops._roi_align_backward(grad, rois, scale, ph, pw, n, c, h, w,
                                               wl.sampling_ratio, wl.aligned)
    if direction == "forward":
        return lambda: ops.roi_pool(features, rois, scale, ph, pw)[0]
    _, argmax = ops.roi_pool(features, rois, scale, ph, pw)  # outside the timing
    return lambda: ops._roi_pool_backward(grad, rois, argmax, scale, ph, pw, n, c, h, w)


# ---------------------------------------------------------------------------- onnxruntime


def _onnx_model(wl, op):
    """A one-node ONNX model: RoiAlign (opset 16) or MaxRoiPool, inputs named as fed."""
    onnx = _try_import("onnx")
    helper, tensor = onnx.helper, onnx.TensorProto
    ph, pw = wl.output_size
    features = helper.make_tensor_value_info("X", tensor.FLOAT, list(wl.nchw_shape))
    output = helper.make_tensor_value_info("Y", tensor.FLOAT, None)
    if op == "roi_align":
        node = helper.make_node(
            "RoiAlign", ["X", "rois", "batch_indices"], ["Y"], mode="avg",
            output_height=ph, output_width=pw, spatial_scale=float(wl.spatial_scale),
            sampling_ratio=max(wl.sampling_ratio, 0),  # ONNX: 0 = adaptive, negatives refused
            coordinate_transformation_mode="half_pixel" if wl.aligned else "output_half_pixel",
        )
        inputs = [features,
                  helper.make_tensor_value_info("rois", tensor.FLOAT, [None, 4]),
                  helper.make_tensor_value_info("batch_indices", tensor.INT64, [None])]
    else:
        node = helper.make_node("MaxRoiPool", ["X", "rois"], ["Y"], pooled_shape=[ph, pw],
                                spatial_scale=float(wl.spatial_scale))
        inputs = [features, helper.make_tensor_value_info("rois", tensor.FLOAT, [None, 5])]
    graph = helper.make_graph([node], op, inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = ONNX_IR_VERSION
    return model


def make_onnxruntime(wl, op, direction, n_threads):
    """ONNX Runtime (CPU) RoiAlign / MaxRoiPool, forward only, intra_op_num_threads=n."""
    ort = _try_import("onnxruntime")
    if ort is None or _try_import("onnx") is None or direction != "forward":
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(_onnx_model(wl, op).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    if op == "roi_align":
        feed = {"X": wl.features("NCHW"), "rois": np.ascontiguousarray(wl.boxes[:, 1:]),
                "batch_indices": wl.boxes[:, 0].astype(np.int64)}
    else:
        feed = {"X": wl.features("NCHW"), "rois": wl.boxes}
    return lambda: session.run(None, feed)[0]


# ---------------------------------------------------------------------------- NumPy


def make_numpy(wl, op, direction, layout):
    """The vectorized NumPy baseline (roi_align only; single-threaded), or None."""
    if op != "roi_align":
        return None
    args = (wl.output_size, wl.spatial_scale, wl.sampling_ratio, wl.aligned)
    if direction == "forward":
        features = wl.features(layout)
        return lambda: numpy_baseline.roi_align(features, wl.boxes, *args, layout=layout)
    grad = wl.grad_output(layout)
    shape = wl.input_shape(layout)
    return lambda: numpy_baseline.roi_align_backward(grad, wl.boxes, shape, *args, layout=layout)
