"""tools/mutate.py's machinery (the mutation run itself is a tool, not a test: see docs/testing.md)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutate", ROOT / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutate)


def test_the_list_is_well_formed():
    ids = [m.id for m in mutate.MUTANTS]
    assert len(ids) == len(set(ids))
    assert {m.kind for m in mutate.MUTANTS} == {"kernels", "tc", "numpy", "api"}
    for m in mutate.MUTANTS:
        assert m.old != m.new and (ROOT / m.path).is_file(), m.id
        assert m.path.startswith(("kernels/", "gpuconv/backends/numpy.py", "gpuconv/_registry.py")) or \
            m.path in mutate.TC_PATHS + mutate.API_PATHS, m.id
        assert mutate.applies(m, ROOT), f"{m.id} no longer applies: update the list (and its version)"


def test_mutate_text_replaces_exactly_one_place():
    m = mutate.Mutant("t", "kernels/x.cu", "a < b", "a <= b", "bound")
    assert mutate.mutate_text("if (a < b) f();", m) == "if (a <= b) f();"
    with pytest.raises(ValueError, match="occurs 0 times"):
        mutate.mutate_text("if (a > b) f();", m)
    with pytest.raises(ValueError, match="occurs 2 times"):
        mutate.mutate_text("a < b; a < b;", m)
    second = m._replace(nth=1)
    assert mutate.mutate_text("a < b; a < b;", second) == "a < b; a <= b;"


def test_scratch_copy_holds_the_tree_and_not_the_environment(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True, check=False).returncode:
        pytest.skip("not a git checkout")
    repo = mutate.scratch_copy(tmp_path)
    assert (repo / "kernels" / "conv_forward.cu").read_text() == (ROOT / "kernels" / "conv_forward.cu").read_text()
    assert (repo / "tools" / "mutate.py").is_file() and not (repo / ".git").exists()
    assert not (repo / ".venv").exists()


def test_list_runs():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "mutate.py"), "--list", "--kind", "numpy"],
                         capture_output=True, text=True, check=False, cwd=ROOT)
    assert "n-relu-fmax" in out.stdout and f"list version {mutate.MUTANTS_VERSION}" in out.stdout
