"""Read tests/data/golden_torchvision.npz, written by tests/data/make_golden.py (and, with
path=PS_PATH, golden_ps_torchvision.npz, written by tests/data/make_golden_ps.py)."""

import json
import os

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PATH = os.path.join(DATA, "golden_torchvision.npz")
PS_PATH = os.path.join(DATA, "golden_ps_torchvision.npz")


def load_meta(path=PATH):
    """The file's JSON header: torch/torchvision versions and the list of cases."""
    with np.load(path) as data:
        return json.loads(str(data["meta"]))


def case_names(op, path=PATH):
    """Names of the cases of one op ("roi_align", "roi_align_backward", "roi_pool", ...)."""
    return [case["name"] for case in load_meta(path)["cases"] if case["op"] == op]


def load_case(name, path=PATH):
    """(params dict, {array name: ndarray}) of one case."""
    case = next(c for c in load_meta(path)["cases"] if c["name"] == name)
    with np.load(path) as data:
        arrays = {key.split("/", 1)[1]: data[key] for key in data.files
                  if key.startswith(name + "/")}
    return case["params"], arrays
