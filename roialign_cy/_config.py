"""How this build of roialign_cy was compiled and how many threads it will use."""

from roialign_cy import _dispatch, _runtime
from roialign_cy._version import __version__


def show_config(print_out=True):
    """Report whether OpenMP is compiled in, the default thread count and the SIMD build.

    Parameters
    ----------
    print_out : bool, default True
        Print the report; the dict is returned either way.

    Returns
    -------
    dict
        ``{"version": str, "openmp": bool, "max_threads": int, "simd": str}``.
        ``max_threads`` is what ``num_threads=None`` uses: ``OMP_NUM_THREADS`` or
        threadpoolctl's limit when set, else every core; always 1 in a serial build.
        ``simd`` is the build of the kernels this CPU runs: ``"avx2"`` or ``"baseline"``
        (same numbers, bit for bit; ``ROIALIGN_CY_SIMD=baseline`` forces the baseline).

    Examples
    --------
    >>> import roialign_cy
    >>> sorted(roialign_cy.show_config(print_out=False))
    ['max_threads', 'openmp', 'simd', 'version']
    """
    config = {
        "version": __version__,
        "openmp": bool(_runtime.OPENMP_ENABLED),
        "max_threads": int(_runtime.openmp_max_threads()),
        "simd": _dispatch.SIMD,
    }
    if print_out:
        for key, value in config.items():
            print(f"{key}: {value}")
    return config
