"""Read tests/data/golden_ps_torchvision.npz (position-sensitive pooling), written by
tests/data/make_golden_ps.py: golden.py's readers on that file."""

import functools

import golden

load_meta = functools.partial(golden.load_meta, path=golden.PS_PATH)
case_names = functools.partial(golden.case_names, path=golden.PS_PATH)
load_case = functools.partial(golden.load_case, path=golden.PS_PATH)
