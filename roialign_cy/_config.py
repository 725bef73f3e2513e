"""How this build of roialign_cy was compiled and how many threads it will use."""

import os
import warnings
from typing import Mapping, TypedDict

from roialign_cy import _dispatch, _runtime
from roialign_cy._version import __version__


class Config(TypedDict):
    """What show_config returns."""

    version: str
    openmp: bool
    max_threads: int
    simd: _dispatch.Build


def show_config(print_out: bool = True) -> Config:
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
    config: Config = {
        "version": __version__,
        "openmp": bool(_runtime.OPENMP_ENABLED),
        "max_threads": int(_runtime.openmp_max_threads()),
        "simd": _dispatch.SIMD,
    }
    if print_out:
        for key, value in config.items():
            print(f"{key}: {value}")
    return config


SERIAL_WARNING = (
    "roialign_cy was built without OpenMP, so every call runs on one of this machine's {cpus} "
    "CPUs (same numbers, slower). The build found no OpenMP runtime: on macOS `brew install "
    "libomp`, elsewhere use gcc or clang with libomp, then reinstall from source "
    "(`pip install --no-binary roialign-cy --force-reinstall roialign-cy`), or install a "
    "release wheel. Set ROIALIGN_CY_ALLOW_SERIAL=1 to silence this."
)


def warn_if_serial(openmp: bool, cpus: int, environ: Mapping[str, str] = os.environ) -> None:
    """Warn at import when a build without OpenMP runs where threads would help: pip hides
    the build's own message, so this is where a user learns it. ROIALIGN_CY_ALLOW_SERIAL=1
    (a serial build on purpose) silences it."""
    if openmp or cpus <= 1 or environ.get("ROIALIGN_CY_ALLOW_SERIAL", "") not in ("", "0"):
        return
    warnings.warn(SERIAL_WARNING.format(cpus=cpus), RuntimeWarning, stacklevel=3)
