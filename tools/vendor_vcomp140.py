"""Bundle MSVC's OpenMP runtime (vcomp140.dll) into a Windows wheel of roialign_cy.

    python tools/vendor_vcomp140.py WHEEL DEST_DIR [--dll PATH]

MSVC's ``/openmp`` links vcomp140.dll, which is part of the Visual C++ redistributable, not
of Windows. This copies it into the wheel as ``roialign_cy/.libs/vcomp140.dll`` and replaces
``roialign_cy/_distributor_init.py`` (imported before any compiled module) with one that loads
it by full path, after which Windows resolves the extensions' import of vcomp140.dll to the
module already loaded. scikit-learn ships its OpenMP runtime the same way. The wheel's RECORD
is rewritten with the new files' hashes. cibuildwheel runs this as the Windows
repair-wheel-command (pyproject.toml).
"""

import argparse
import base64
import csv
import hashlib
import io
import os
import sys
import zipfile

PACKAGE = "roialign_cy"
DLL_NAME = "vcomp140.dll"
DEFAULT_DLL = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", DLL_NAME)
DISTRIBUTOR_INIT = f'''"""Written by tools/vendor_vcomp140.py: loads the bundled OpenMP runtime before any compiled
module of {PACKAGE} needs it."""

import os

if os.name == "nt":
    from ctypes import WinDLL

    WinDLL(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".libs", "{DLL_NAME}"))
'''


def record_hash(data):
    """A RECORD hash: sha256, urlsafe base64 without padding (the wheel spec's form)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def vendor(wheel, dest_dir, dll):
    """Write dest_dir/<wheel's name> with the DLL and the loader in it; return its path."""
    if not os.path.isfile(dll):
        raise SystemExit(f"vendor_vcomp140: {dll} does not exist (is this a Windows runner "
                         "with the Visual C++ runtime installed?)")
    with open(dll, "rb") as f:
        replaced = {
            f"{PACKAGE}/.libs/{DLL_NAME}": f.read(),
            f"{PACKAGE}/_distributor_init.py": DISTRIBUTOR_INIT.encode("utf-8"),
        }
    os.makedirs(dest_dir, exist_ok=True)
    target = os.path.join(dest_dir, os.path.basename(wheel))
    if os.path.abspath(target) == os.path.abspath(wheel):
        raise SystemExit("vendor_vcomp140: DEST_DIR must not be the wheel's own folder")
    with zipfile.ZipFile(wheel) as source, \
            zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        names = source.namelist()
        record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = []
        for name in names:
            if name == record_name or name in replaced:
                continue
            data = source.read(name)
            out.writestr(source.getinfo(name), data)
            rows.append((name, record_hash(data), str(len(data))))
        for name, data in replaced.items():
            out.writestr(name, data)
            rows.append((name, record_hash(data), str(len(data))))
        rows.append((record_name, "", ""))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        out.writestr(record_name, text.getvalue())
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("dest_dir")
    parser.add_argument("--dll", default=DEFAULT_DLL, help=f"the DLL to bundle ({DEFAULT_DLL})")
    args = parser.parse_args(argv)
    print(vendor(args.wheel, args.dest_dir, args.dll))


if __name__ == "__main__":
    sys.exit(main())
