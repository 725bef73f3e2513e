"""RoIAlign and RoIPool as reusable callables that hold their parameters."""

from roialign_cy import _validate as v
from roialign_cy._api import roi_align, roi_align_backward, roi_pool, roi_pool_backward


class RoIAlign:
    """:func:`roi_align` with its parameters fixed, like ``torchvision.ops.RoIAlign``.

    Parameters are validated once, here. Instances are called like the function, have a
    :meth:`backward`, compare equal when their parameters are equal, and pickle (to ship
    them to worker processes).

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import RoIAlign
    >>> pool = RoIAlign(7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    >>> pool
    RoIAlign(output_size=(7, 7), spatial_scale=0.0625, sampling_ratio=2, aligned=True, mode='avg', layout='NCHW')
    >>> features = np.zeros((1, 8, 32, 32), dtype=np.float32)
    >>> pool(features, np.array([[0, 16.0, 16.0, 256.0, 256.0]])).shape
    (1, 8, 7, 7)
    """

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, *,
                 mode="avg", layout="NCHW"):
        self.output_size = v.check_output_size(output_size)
        self.spatial_scale = v.check_spatial_scale(spatial_scale)
        self.sampling_ratio = v.check_int(sampling_ratio, "sampling_ratio")
        self.aligned = bool(aligned)
        self.mode = v.check_mode(mode)
        self.layout = v.check_layout(layout)

    def _params(self):
        """The arguments this instance passes to the functions."""
        return dict(output_size=self.output_size, spatial_scale=self.spatial_scale,
                    sampling_ratio=self.sampling_ratio, aligned=self.aligned)

    def __call__(self, input, boxes, *, out=None, num_threads=None):
        """Forward: :func:`roi_align` of `input` over `boxes`."""
        return roi_align(input, boxes, **self._params(), layout=self.layout, mode=self.mode,
                         out=out, num_threads=num_threads)

    def backward(self, grad_output, boxes, input_shape, *, input=None, out=None,
                 num_threads=None):
        """Gradient w.r.t. the features: :func:`roi_align_backward` (max mode needs `input`)."""
        return roi_align_backward(grad_output, boxes, input_shape, **self._params(),
                                  layout=self.layout, mode=self.mode, input=input, out=out,
                                  num_threads=num_threads)

    def __repr__(self):
        return (f"RoIAlign(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
                f"mode={self.mode!r}, layout={self.layout!r})")

    def __eq__(self, other):
        return type(other) is type(self) and vars(other) == vars(self)

    __hash__ = None  # mutable attributes: not hashable


class RoIPool:
    """:func:`roi_pool` with its parameters fixed, like ``torchvision.ops.RoIPool``.

    Examples
    --------
    >>> import numpy as np
    >>> from roialign_cy import RoIPool
    >>> pool = RoIPool((2, 2), spatial_scale=0.5)
    >>> pool
    RoIPool(output_size=(2, 2), spatial_scale=0.5, layout='NCHW')
    >>> pool(np.ones((1, 3, 8, 8)), np.array([[0, 0.0, 0.0, 8.0, 8.0]])).shape
    (1, 3, 2, 2)
    """

    def __init__(self, output_size, spatial_scale=1.0, *, layout="NCHW"):
        self.output_size = v.check_output_size(output_size)
        self.spatial_scale = v.check_spatial_scale(spatial_scale)
        self.layout = v.check_layout(layout)

    def __call__(self, input, boxes, *, out=None, num_threads=None, return_argmax=False):
        """Forward: :func:`roi_pool` of `input` over `boxes`."""
        return roi_pool(input, boxes, self.output_size, self.spatial_scale,
                        layout=self.layout, out=out, num_threads=num_threads,
                        return_argmax=return_argmax)

    def backward(self, grad_output, boxes, input, *, out=None, num_threads=None, argmax=None):
        """Gradient w.r.t. the features: :func:`roi_pool_backward`."""
        return roi_pool_backward(grad_output, boxes, input, self.output_size,
                                 self.spatial_scale, layout=self.layout, out=out,
                                 num_threads=num_threads, argmax=argmax)

    def __repr__(self):
        return (f"RoIPool(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"layout={self.layout!r})")

    def __eq__(self, other):
        return type(other) is type(self) and vars(other) == vars(self)

    __hash__ = None
