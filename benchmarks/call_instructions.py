"""Instructions per seed-sized roi_align call, counted by callgrind: the per-call overhead
without the clock's noise.

    python benchmarks/call_instructions.py [--calls 2000] [--seeds 4] [--pure DIR]

The seed notebook's call (features (1, 2, 5, 5), one box, 4x4, sampling_ratio 2) runs
`--calls` more times in one process than in another, both under `valgrind --tool=callgrind`;
the difference of the two totals over the extra calls is what one call costs, start-up and
imports cancelled out. Instruction counts repeat exactly for the same build and inputs,
whatever else the machine does, so two builds (two commits, or `--pure DIR`: a copy of the
package whose compiled call path was removed, or built with ROIALIGN_CY_PURE_PYTHON=1)
compare where the clock cannot tell 5 us from 5.4 us on a shared VM. The one thing that
moves a count is where strings land in Python's hash tables: a change elsewhere in a module
can move one seed's count by ~800 instructions (2%) and not another's, so each build is
counted under PYTHONHASHSEED 0, 1, ... (`--seeds`) and the median is the figure.
Prints one line per build; exits 0 without valgrind (nothing measured, said so).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CALLS = r"""
import sys
import numpy as np
import roialign_cy
features = np.arange(50, dtype=np.float32).reshape(1, 2, 5, 5)
boxes = np.array([[0, 0.5, 0.5, 3.2, 3.7]], dtype=np.float32)
for _ in range(200 + int(sys.argv[1])):  # 200 warm-up calls in both runs
    roialign_cy.roi_align(features, boxes, 4, 1.0, 2)
"""


def total_instructions(script, calls, pythonpath, folder, hash_seed):
    """Instructions callgrind counts for the whole process running `calls` extra calls."""
    out = os.path.join(folder, f"callgrind.{calls}")
    # The same dict layouts in both processes, and no BLAS or OpenMP threads spinning idle
    # (callgrind counts every thread of the process).
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    ran = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          sys.executable, script, str(calls)], env=env, capture_output=True,
                         text=True, check=True)
    for line in ran.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].replace(",", ""))
    raise RuntimeError(f"no callgrind total in: {ran.stderr[-2000:]}")


def per_call(calls, hash_seed, pythonpath=None):
    """Instructions of one seed call: (total with `calls` - total with 0) / calls."""
    with tempfile.TemporaryDirectory(prefix="call-instructions-") as folder:
        script = os.path.join(folder, "calls.py")
        with open(script, "w") as f:
            f.write(CALLS)
        base = total_instructions(script, 0, pythonpath, folder, hash_seed)
        more = total_instructions(script, calls, pythonpath, folder, hash_seed)
    return (more - base) / calls


def describe(calls, seeds, pythonpath=None):
    """'median (min-max over the hash seeds)' instructions per seed call."""
    counts = sorted(per_call(calls, seed, pythonpath) for seed in range(seeds))
    return (f"{statistics.median(counts):,.0f} instructions per seed call (PYTHONHASHSEED "
            f"0-{seeds - 1}: {counts[0]:,.0f}-{counts[-1]:,.0f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="extra calls (default 2000)")
    parser.add_argument("--seeds", type=int, default=4,
                        help="hash seeds to count each build under (default 4)")
    parser.add_argument("--pure", metavar="DIR",
                        help="also count the package found first on PYTHONPATH=DIR")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("call_instructions.py: valgrind is not installed; nothing measured.")
        return 0
    import roialign_cy._args as args_module

    compiled = args_module.__file__.endswith((".so", ".pyd"))
    print(f"this build ({'compiled' if compiled else 'pure-Python'} call path): "
          f"{describe(args.calls, args.seeds)}")
    if args.pure:
        print(f"PYTHONPATH={args.pure}: {describe(args.calls, args.seeds, args.pure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
