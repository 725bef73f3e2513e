"""How this build of roialign_cy was compiled and how many threads it will use."""

from roialign_cy import _kernels


def show_config(print_out=True):
    """Report whether OpenMP is compiled in and the default thread count.

    Parameters
    ----------
    print_out : bool, default True
        Print the report; the dict is returned either way.

    Returns
    -------
    dict
        ``{"version": str, "openmp": bool, "max_threads": int}``. ``max_threads`` is what
        ``num_threads=None`` uses: ``OMP_NUM_THREADS`` or threadpoolctl's limit when set,
        else every core; always 1 in a serial build.

    Examples
    --------
    >>> import roialign_cy
    >>> sorted(roialign_cy.show_config(print_out=False))
    ['max_threads', 'openmp', 'version']
    """
    from roialign_cy import __version__

    config = {
        "version": __version__,
        "openmp": bool(_kernels.OPENMP_ENABLED),
        "max_threads": int(_kernels.openmp_max_threads()),
    }
    if print_out:
        for key, value in config.items():
            print(f"{key}: {value}")
    return config
