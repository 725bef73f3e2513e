"""The release configuration says what the issue asks, and the tools that run it accept it.

The wheels workflow itself runs only on GitHub's runners. What can be checked here is checked
with the tools' own validators: cibuildwheel's --print-build-identifiers (it refuses unknown
options), validate-pyproject (PEP 621/639 and cibuildwheel's schema), check-jsonschema's
GitHub-workflow schema; and the Windows DLL bundling, which is plain Python, is run on a wheel.
Each check skips where its tool is not installed (`pip install -e ".[release]"`) or where the
tests run from a copy without the source tree.
"""

import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

import roialign_cy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = os.path.join(ROOT, "pyproject.toml")
WORKFLOW = os.path.join(ROOT, ".github", "workflows", "wheels.yml")
VENDOR = os.path.join(ROOT, "tools", "vendor_vcomp140.py")
PYTHONS = ("cp39", "cp310", "cp311", "cp312", "cp313")
# (cibuildwheel platform, architecture) -> the platform tags its wheels must carry
WHEELS = {
    ("linux", "x86_64"): ("manylinux_x86_64", "musllinux_x86_64"),
    ("linux", "aarch64"): ("manylinux_aarch64",),
    ("macos", "x86_64"): ("macosx_x86_64",),
    ("macos", "arm64"): ("macosx_arm64",),
    ("windows", "AMD64"): ("win_amd64",),
}
# The runner each (platform, architecture) is built on in the workflow.
RUNNERS = {"ubuntu-24.04", "ubuntu-24.04-arm", "macos-15-intel", "macos-14", "windows-2022"}


def needs(path):
    return pytest.mark.skipif(not os.path.exists(path),
                              reason=f"{os.path.relpath(path, ROOT)} is not next to the tests")


def tool(module):
    """Skip unless `module` is importable (the release tools are an optional extra)."""
    return pytest.importorskip(module, reason=f"{module} is not installed (the release extra)")


def pyproject():
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli", reason="tomllib needs Python 3.11 (or tomli)")
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)


def workflow():
    yaml = tool("yaml")
    with open(WORKFLOW) as f:
        return yaml.safe_load(f)


@needs(PYPROJECT)
@pytest.mark.parametrize("platform, arch", sorted(WHEELS))
def test_cibuildwheel_builds_every_python_for_every_platform(platform, arch):
    tool("cibuildwheel")
    found = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers",
         "--platform", platform, "--archs", arch],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CIBW_")})  # the file's
    assert found.returncode == 0, found.stderr
    expected = {f"{python}-{tag}" for python in PYTHONS for tag in WHEELS[platform, arch]}
    assert set(found.stdout.split()) == expected


@needs(PYPROJECT)
def test_cibuildwheel_refuses_what_it_does_not_know(tmp_path):
    """The check above means something: a misspelt option is an error, not ignored."""
    tool("cibuildwheel")
    text = open(PYPROJECT).read().replace('test-extras = ["test"]', 'test-extra = ["test"]')
    assert "test-extra =" in text
    (tmp_path / "pyproject.toml").write_text(text)
    found = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers",
         "--platform", "linux", "--archs", "x86_64"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert found.returncode != 0 and "test-extra" in found.stderr


@needs(PYPROJECT)
@needs(WORKFLOW)
def test_workflow_runs_the_cibuildwheel_that_was_checked():
    """The identifiers above come from the installed cibuildwheel: the workflow pins that one."""
    cibuildwheel = tool("cibuildwheel")
    pins = re.findall(r"cibuildwheel==([\w.]+)", open(WORKFLOW).read())
    assert pins == [cibuildwheel.__version__]


@needs(PYPROJECT)
def test_pyproject_is_valid():
    """PEP 621 + PEP 639 metadata and [tool.cibuildwheel], by validate-pyproject's schemas."""
    tool("validate_pyproject")
    from validate_pyproject import api

    validator = api.Validator()
    validator(pyproject())
    bad = pyproject()
    bad["project"]["license"] = {"file": "LICENSE", "text": "BSD"}  # not an SPDX expression
    bad["tool"]["cibuildwheel"]["test-extra"] = ["test"]
    with pytest.raises(Exception, match="license|cibuildwheel"):
        validator(bad)


@needs(PYPROJECT)
def test_metadata_is_complete():
    project = pyproject()["project"]
    assert project["license"] == "BSD-3-Clause" and project["license-files"] == ["LICENSE"]
    assert project["authors"] and project["keywords"]
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(project["urls"])
    classifiers = set(project["classifiers"])
    versions = {f"Programming Language :: Python :: 3.{minor}" for minor in range(9, 14)}
    assert versions <= classifiers and "Typing :: Typed" in classifiers
    assert {"Operating System :: POSIX :: Linux", "Operating System :: MacOS",
            "Operating System :: Microsoft :: Windows"} <= classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: one source
    assert project["requires-python"] == ">=3.9"
    assert project["dynamic"] == ["version"]  # written once, in roialign_cy/_version.py


def test_installed_version_is_the_package_version():
    """Whatever installed the package (wheel, editable), its metadata and __version__ agree."""
    assert importlib.metadata.version("roialign_cy") == roialign_cy.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", roialign_cy.__version__)


@needs(os.path.join(ROOT, "CHANGELOG.md"))
def test_changelog_has_the_version():
    text = open(os.path.join(ROOT, "CHANGELOG.md")).read()
    assert f"## {roialign_cy.__version__}" in text and "## Unreleased" in text


@needs(WORKFLOW)
def test_workflow_is_valid():
    """GitHub's workflow schema (as vendored by check-jsonschema) accepts the file."""
    tool("check_jsonschema")
    checked = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
         "vendor.github-workflows", WORKFLOW], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs(WORKFLOW)
def test_workflow_builds_everywhere_and_publishes_tags_by_trusted_publishing():
    flow = workflow()
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "v*" in triggers["push"]["tags"]
    jobs = flow["jobs"]
    assert {row["runner"] for row in jobs["wheels"]["strategy"]["matrix"]["include"]} == RUNNERS
    assert any("cibuildwheel" in step.get("run", "") for step in jobs["wheels"]["steps"])
    publish = jobs["publish"]
    assert set(publish["needs"]) == {"wheels", "sdist"}
    assert publish["permissions"] == {"id-token": "write"}
    assert "refs/tags/v" in publish["if"]
    uses = [step.get("uses", "") for step in publish["steps"]]
    assert any(u.startswith("pypa/gh-action-pypi-publish@") for u in uses)
    assert not any("password" in step.get("with", {}) for step in publish["steps"])  # no token


def _wheel(path, files):
    """Write a minimal wheel: files, and a RECORD listing them with their hashes."""
    record = "roialign_cy-0.1.0.dist-info/RECORD"
    with zipfile.ZipFile(path, "w") as wheel:
        rows = []
        for name, data in files.items():
            wheel.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append(f"{name},sha256={digest.decode()},{len(data)}")
        wheel.writestr(record, "\n".join(rows + [f"{record},,"]) + "\n")


@needs(VENDOR)
def test_windows_wheels_bundle_and_preload_vcomp140(tmp_path):
    files = {
        "roialign_cy/__init__.py": b"from roialign_cy import _distributor_init\n",
        "roialign_cy/_distributor_init.py": b'"""empty in the source tree"""\n',
        "roialign_cy/_runtime.cp312-win_amd64.pyd": b"MZ not really a module",
        "roialign_cy-0.1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n",
    }
    wheel = tmp_path / "roialign_cy-0.1.0-cp312-cp312-win_amd64.whl"
    _wheel(wheel, files)
    dll = tmp_path / "vcomp140.dll"
    dll.write_bytes(b"MZ the OpenMP runtime")
    out = tmp_path / "repaired"
    done = subprocess.run([sys.executable, VENDOR, str(wheel), str(out), "--dll", str(dll)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(out / wheel.name) as repaired:
        names = repaired.namelist()
        assert repaired.read("roialign_cy/.libs/vcomp140.dll") == dll.read_bytes()
        loader = repaired.read("roialign_cy/_distributor_init.py").decode()
        record = list(csv.reader(io.StringIO(
            repaired.read("roialign_cy-0.1.0.dist-info/RECORD").decode())))
        contents = {name: repaired.read(name) for name in names}
    assert "WinDLL" in loader and ".libs" in loader and "vcomp140.dll" in loader
    compile(loader, "_distributor_init.py", "exec")
    # every file once, RECORD hashes and sizes right (pip and installers check them)
    assert len(names) == len(set(names)) == len(files) + 2
    for name, digest, size in record:
        if name.endswith("RECORD"):
            assert digest == size == ""
            continue
        data = contents[name]
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        assert digest == f"sha256={expected.decode()}" and int(size) == len(data)
    assert {row[0] for row in record} == set(names)
    # off Windows the loader does nothing (the package must import anywhere)
    exec(compile(loader, "_distributor_init.py", "exec"), {"__file__": str(tmp_path / "x.py")})


@needs(VENDOR)
def test_windows_bundling_says_when_the_dll_is_missing(tmp_path):
    wheel = tmp_path / "roialign_cy-0.1.0-cp312-cp312-win_amd64.whl"
    _wheel(wheel, {"roialign_cy/__init__.py": b""})
    done = subprocess.run([sys.executable, VENDOR, str(wheel), str(tmp_path / "out"),
                           "--dll", str(tmp_path / "nowhere.dll")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "nowhere.dll does not exist" in done.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@needs(os.path.join(ROOT, ".git"))
def test_no_build_outputs_are_committed():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60).stdout.split()
    # C files in the package are Cython's output; benchmarks/roofline_probe.c is a source.
    built = [name for name in listed
             if re.search(r"^roialign_cy/.*\.c$|\.(so|pyd|whl|o)$|(^|/)build/|\.egg-info/",
                          name)]
    assert not built
