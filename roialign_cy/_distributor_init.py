"""A hook for whoever packages roialign_cy: imported before any compiled module.

Empty in the source tree. The Windows release wheels replace it (tools/vendor_vcomp140.py)
with one that loads the bundled OpenMP runtime, ``.libs/vcomp140.dll``, so that the
extensions find it on machines without the Visual C++ redistributable. scikit-learn ships
its OpenMP runtime the same way.
"""
