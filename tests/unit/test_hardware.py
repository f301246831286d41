"""msting.hardware: the verdict from what llama.cpp reports and what the machine has, and
the real probe of the installed llama-cpp-python."""

from __future__ import annotations

from msting import hardware

CPU_ONLY = {"importable": True, "backends": ["CPU"], "backend_libraries": ["cpu"], "gpu_offload": False,
            "devices": [{"name": "CPU", "description": "x86", "backend": "CPU", "type": "cpu", "memory_total": 0}]}
CUDA = {"importable": True, "backends": ["CUDA", "CPU"], "backend_libraries": [], "gpu_offload": True,
        "devices": [{"name": "CUDA0", "description": "NVIDIA RTX 4090", "backend": "CUDA", "type": "gpu", "memory_total": 24 * 2**30},
                    {"name": "CPU", "description": "x86", "backend": "CPU", "type": "cpu", "memory_total": 0}]}
NVIDIA = [{"vendor": "NVIDIA", "name": "NVIDIA GeForce RTX 4090", "source": "/proc/driver/nvidia", "backends": "CUDA or Vulkan"}]


def test_cpu_build_without_a_gpu():
    v = hardware.describe(CPU_ONLY, [], 0)
    assert v["backend"] == "CPU" and v["level"] == "ok" and v["line"] == "CPU (no GPU found; built with CPU)"


def test_cpu_build_on_a_gpu_machine_says_how_to_rebuild():
    v = hardware.describe(CPU_ONLY, NVIDIA, 0)
    assert v["backend"] == "CPU" and v["level"] == "warn"
    assert "NVIDIA GeForce RTX 4090" in v["line"] and '-DGGML_CUDA=on' in v["hint"]


def test_a_gpu_build_that_sees_its_gpu():
    v = hardware.describe(CUDA, NVIDIA, -1)
    assert v["backend"] == "CUDA" and v["level"] == "ok"
    assert v["line"].startswith("CUDA on NVIDIA RTX 4090, 24.0 GiB (used;")
    idle = hardware.describe(CUDA, NVIDIA, 0)
    assert idle["level"] == "warn" and "n_gpu_layers" in idle["hint"]


def test_gpu_layers_asked_for_without_a_gpu():
    v = hardware.describe(CPU_ONLY, [], -1)
    assert v["level"] == "warn" and "no GPU" in v["hint"]


def test_the_real_probe_runs_in_a_child_and_sees_the_cpu_backend():
    import sys

    before = set(sys.modules)
    found = hardware.probe()
    assert "llama_cpp" not in set(sys.modules) - before  # never imported into this process
    assert found["importable"] is True and found["version"]
    assert "CPU" in found["backends"] and any(d["type"] == "cpu" for d in found["devices"])
