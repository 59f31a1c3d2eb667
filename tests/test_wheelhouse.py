"""scripts/wheelhouse.sh and scripts/setup_env.sh --offline on a tiny pure-Python project (tqdm, mdurl): the
wheels are gathered with network, then installed with the network refused, so the air-gapped path cannot rot."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "tinyproj"
version = "0.1"
dependencies = ["tqdm>=4.60"]

[project.optional-dependencies]
cpu = ["mdurl"]
gpu = []
test = []

[tool.setuptools]
packages = ["tinyproj"]
"""
# Proxies on a closed port: any attempt to reach an index fails at once instead of succeeding quietly.
NO_NETWORK = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                                                "ALL_PROXY", "all_proxy")}


def tiny_project(root: Path) -> Path:
    """The runner's two scripts in a project of their own: they act on the project they sit in."""
    (root / "scripts").mkdir(parents=True)
    (root / "tinyproj").mkdir()
    (root / "requirements").mkdir()
    for name in ("wheelhouse.sh", "setup_env.sh"):
        shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "tinyproj" / "__init__.py").write_text("")
    (root / "requirements" / "cpu-overrides.txt").write_text("tqdm==4.67.1\n")   # as the cpu install overrides
    return root


def sh(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """Built once with network (CI has it): (project, wheelhouse folder, python3's version)."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed (scripts/setup_env.sh installs it)")
    proj = tiny_project(tmp_path_factory.mktemp("proj"))
    out = tmp_path_factory.mktemp("wheelhouse")
    python = sh("python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()
    done = sh(proj / "scripts/wheelhouse.sh", "cpu", out, "--python", python,
              "--platform", f"manylinux_2_31_{platform.machine()}")
    assert done.returncode == 0, done.stderr
    return proj, out, python


def test_lock_pins_every_wheel_with_its_hash(wheelhouse):
    _, out, python = wheelhouse
    lines = (out / "requirements.lock").read_text().splitlines()
    assert lines[0].startswith(f"# wheelhouse: cpu install, Python {python}, manylinux_2_31_")
    pins = {line.split("==")[0]: line for line in lines[1:]}
    assert {"tqdm", "mdurl", "setuptools", "uv"} <= set(pins)
    assert pins["tqdm"].startswith("tqdm==4.67.1 --hash=sha256:")   # the override holds in the wheelhouse too
    for name, line in pins.items():
        version, digest = line.split("==")[1].split(" --hash=sha256:")
        (wheel,) = out.glob(f"{name.replace('-', '_')}-{version}-*.whl")
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == digest


def test_offline_install_with_the_network_refused(wheelhouse, tmp_path):
    proj, out, _ = wheelhouse
    check = "import tqdm, mdurl, tinyproj; print('installed tqdm', tqdm.__version__)"
    done = sh(proj / "scripts/setup_env.sh", "cpu", "--offline", out, env={**NO_NETWORK, "SETUP_ENV_CHECK": check})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "installed tqdm 4.67.1"
    assert (proj / ".venv" / "bin" / "python").exists()


def test_offline_install_refuses_a_changed_wheel_and_a_wrong_target(wheelhouse, tmp_path):
    proj, out, _ = wheelhouse
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    (wheel,) = changed.glob("tqdm-*.whl")
    with zipfile.ZipFile(wheel, "a") as z:   # still a valid wheel, but not the bytes the lock pinned
        z.comment = b"changed after the lock was written"
    shutil.rmtree(proj / ".venv", ignore_errors=True)
    done = sh(proj / "scripts/setup_env.sh", "cpu", "--offline", changed, env={**NO_NETWORK,
              "SETUP_ENV_CHECK": "import tqdm"})
    assert done.returncode != 0 and "Hash mismatch for `tqdm==4.67.1`" in done.stderr
    done = sh(proj / "scripts/setup_env.sh", "gpu", "--offline", out, env=NO_NETWORK)
    assert done.returncode == 1
    assert done.stderr.startswith(f"setup_env: {out} holds a different install (cpu install, Python ")
    assert done.stderr.rstrip().endswith("), not gpu")
