"""What the benchmark ran on: CPU, cores, OS, load, and the versions of everything timed."""

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np

import peers


def _lscpu():
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
    return _lscpu().get("Model name") or platform.processor() or "unknown"


def machine():
    """Architecture, plus the hypervisor when lscpu reports one (timings in a VM are noisier)."""
    hypervisor = _lscpu().get("Hypervisor vendor")
    return f"{platform.machine()}, {hypervisor} virtual machine" if hypervisor else platform.machine()


def usable_cores():
    """Cores this process may run on (affinity mask when the OS has one, else cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
