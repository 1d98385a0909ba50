"""The wheel: built from the repository into a temporary folder, it ships the package and the CUDA sources
(the top-level kernels/ folder as gpuconv/kernels/) and declares the ``gpuconv`` console script."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(src: Path, out_dir: Path) -> Path:
    """Build without network access: the already installed build backend (hatchling), no isolation."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling (the build backend) is not installed")
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out_dir), str(src)]
    elif importlib.util.find_spec("pip") is not None:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out_dir),
            str(src),
        ]
    else:
        pytest.skip("neither 'build' nor 'pip' is installed")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=out_dir, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed\n{proc.stdout}\n{proc.stderr}"
    wheels = list(out_dir.glob("gpuconv-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out_dir}, found {wheels}\n{proc.stdout}"
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    # Build from a copy of the working tree so that the build leaves nothing behind in the repository.
    src = tmp_path_factory.mktemp("src") / "gpuconv-src"
    shutil.copytree(
        REPO_ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", ".asv", "*.egg-info",
            ".venv",  # .ci/run's virtual environment, with torch in it: gigabytes, and not part of the source, ".venv"
        ),
    )
    wheel = _build_wheel(src, tmp_path_factory.mktemp("wheel"))
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        return {"names": zf.namelist(), "entry_points": _read_entry_points(zf), "metadata": metadata}


def _read_entry_points(zf: zipfile.ZipFile) -> str:
    names = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
    return zf.read(names[0]).decode() if names else ""


def test_wheel_contains_package_and_kernels(wheel_names):
    names = wheel_names["names"]
    assert "gpuconv/__init__.py" in names
    assert "gpuconv/kernels/README.md" in names, sorted(n for n in names if "kernel" in n)
    # every file of the top-level kernels/ folder ships (the .cu / .cuh sources as they land)
    for path in (REPO_ROOT / "kernels").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(REPO_ROOT / "kernels").as_posix()
            assert f"gpuconv/kernels/{rel}" in names, f"kernels/{rel} is not in the wheel"


def test_wheel_ships_no_tests_or_caches(wheel_names):
    names = wheel_names["names"]
    assert not any(n.startswith("tests/") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_wheel_declares_console_script(wheel_names):
    entry_points = wheel_names["entry_points"]
    assert "[console_scripts]" in entry_points
    assert any(line.replace(" ", "") == "gpuconv=gpuconv.cli:main" for line in entry_points.splitlines())


def test_wheel_is_typed_and_has_one_version(wheel_names):
    import gpuconv

    assert "gpuconv/py.typed" in wheel_names["names"]
    meta = wheel_names["metadata"].splitlines()
    assert f"Version: {gpuconv.__version__}" in meta  # read by hatch from gpuconv/_version.py, the one place
    assert "Classifier: Typing :: Typed" in meta
    extras = {line.split(": ", 1)[1] for line in meta if line.startswith("Provides-Extra: ")}
    assert {"cuda12", "cuda13", "torch", "test"} <= extras
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert "\nversion =" not in text and 'dynamic = ["version"]' in text
