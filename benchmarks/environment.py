"""What the benchmark ran on: CPU, cores, OS, load, and the versions of everything timed."""

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np

import peers


def lscpu():
    """lscpu's "Key: value" lines as a dict (empty where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def cpu_model():
    """The CPU model name from /proc/cpuinfo, else lscpu, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return lscpu().get("Model name") or platform.processor() or "unknown"


def machine():
    """Architecture, plus the hypervisor when lscpu reports one (timings in a VM are noisier)."""
    hypervisor = lscpu().get("Hypervisor vendor")
    return f"{platform.machine()}, {hypervisor} virtual machine" if hypervisor else platform.machine()


def usable_cores():
    """Cores this process may run on (affinity mask when the OS has one, else cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def add_threads_option(parser):
    """The --threads option the benchmark scripts share."""
    parser.add_argument("--threads", default="",
                        help="comma-separated thread counts, e.g. 1,2,4,8,16 (default: 1 and the "
                             "usable cores); counts above the usable cores are skipped with a note")


def thread_counts(text):
    """(counts to run, counts skipped) for a --threads value ("" = 1 and the usable cores).

    A count above the cores this process may use would only time oversubscription, so it is
    skipped (and the caller says so); the counts run are sorted, each once.
    """
    usable = usable_cores()
    try:
        asked = [int(t) for t in text.split(",") if t.strip()] or [1, usable]
    except ValueError:
        raise SystemExit(f"--threads takes comma-separated integers, not {text!r}")
    if min(asked) < 1:
        raise SystemExit(f"--threads: thread counts must be >= 1, not {text!r}")
    counts = sorted({n for n in asked if n <= usable})
    skipped = sorted({n for n in asked if n > usable})
    if not counts:
        raise SystemExit(f"--threads {text}: every count is above the {usable} usable cores")
    return counts, skipped


def skipped_note(skipped):
    """The sentence saying which thread counts were skipped ("" when none)."""
    if not skipped:
        return ""
    return (f"thread count(s) {', '.join(map(str, skipped))} skipped: above the "
            f"{usable_cores()} cores this process may use")


def load_average():
    """The 1-minute load average as a string, or "n/a" where the OS has none."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "n/a"


def describe():
    """A dict of everything the report header shows (versions None when not installed)."""
    import roialign_cy

    config = roialign_cy.show_config(print_out=False)
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "roialign_cy": config["version"],
        "openmp": config["openmp"],
        "omp_max_threads": config["max_threads"],
        "simd": config.get("simd", "?"),
        "load_start": load_average(),
    }
    info.update(peers.versions())
    return info
