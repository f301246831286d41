"""What llama.cpp can run on here: the GPUs the operating system shows, and the backends
the installed llama-cpp-python was built with (CPU, CUDA, Metal, Vulkan, ...) with the
devices it sees.

The second half needs ``llama_cpp`` (its shared library), which only worker processes
load: :func:`probe` runs ``python -m msting.hardware`` in a child process, so that
``msting llm doctor`` and ``msting llm install`` never import it into the CLI.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PROBE_TIMEOUT = 60.0
#: PCI vendor ids of GPU makers, and the llama.cpp backends that drive their GPUs.
PCI_VENDORS = {"0x10de": ("NVIDIA", "CUDA or Vulkan"), "0x1002": ("AMD", "HIP (ROCm) or Vulkan"),
               "0x8086": ("Intel", "SYCL or Vulkan")}
GPU_BACKENDS = ("CUDA", "Metal", "Vulkan", "HIP", "ROCm", "SYCL", "OpenCL", "CANN", "MUSA", "Kompute")
#: How to rebuild llama-cpp-python for a GPU the machine has (its documented CMAKE_ARGS).
REBUILD = {"NVIDIA": "-DGGML_CUDA=on", "AMD": "-DGGML_HIP=on", "Intel": "-DGGML_VULKAN=on", "Apple": "-DGGML_METAL=on"}


# ---- the hardware, as the operating system shows it ---------------------------------


def gpu_hardware() -> list[dict[str, str]]:
    """The GPUs of this machine: vendor, name and where that was seen. No llama_cpp."""
    if sys.platform == "darwin":
        if platform.machine() == "arm64":
            return [{"vendor": "Apple", "name": "Apple silicon GPU", "source": "platform", "backends": "Metal"}]
        return []
    found: list[dict[str, str]] = []
    nvidia = Path("/proc/driver/nvidia/gpus")
    if nvidia.is_dir():
        for info in sorted(nvidia.glob("*/information")):
            name = next((line.split(":", 1)[1].strip() for line in _read(info).splitlines() if line.startswith("Model:")), "NVIDIA GPU")
            found.append({"vendor": "NVIDIA", "name": name, "source": str(info), "backends": PCI_VENDORS["0x10de"][1]})
    seen_nvidia = bool(found)
    for vendor_file in sorted(Path("/sys/class/drm").glob("card[0-9]*/device/vendor")):
        if "-" in vendor_file.parent.parent.name:  # card0-HDMI-A-1: a connector, not a card
            continue
        vendor = PCI_VENDORS.get(_read(vendor_file).strip())
        if vendor is None or (vendor[0] == "NVIDIA" and seen_nvidia):
            continue
        device = _read(vendor_file.parent / "device").strip()
        found.append({"vendor": vendor[0], "name": f"{vendor[0]} GPU (PCI device {device or '?'})",
                      "source": str(vendor_file.parent), "backends": vendor[1]})
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# ---- llama.cpp's side, in a child process --------------------------------------------


def probe(timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """llama_cpp as a worker would see it: ``importable``, ``version``, ``backends`` (the
    compiled ones), ``devices`` (name, description, type, memory), ``gpu_offload``; or
    ``importable: False`` with ``error``. Runs in a child process."""
    cmd = [sys.executable, "-m", "msting.hardware"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return {"importable": False, "error": f"importing llama_cpp took longer than {timeout:g} s"}
    except OSError as exc:
        return {"importable": False, "error": f"cannot run {sys.executable}: {exc}"}
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return {"importable": False, "error": f"the probe exited {proc.returncode}: {tail or 'no output'}"}
    return answer


def _probe_here() -> dict[str, Any]:
    """The probe itself (in the child): import llama_cpp the way the worker does."""
    try:
        from msting.worker.engine import import_backend

        llama_cpp = import_backend()
    except Exception as exc:  # ImportError, or a shared library that does not load (OSError)
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {"importable": True, "version": getattr(llama_cpp, "__version__", None),
                            "path": str(Path(llama_cpp.__file__).parent)}
    try:
        info["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        info["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip(" |")
    except Exception as exc:
        info["error"] = f"cannot query llama.cpp: {exc}"
    info.update(_registry(Path(llama_cpp.__file__).parent / "lib"))
    return info


def _registry(lib_dir: Path) -> dict[str, Any]:
    """ggml's backend registry (the backends compiled in or shipped beside it, and their
    devices) through ctypes on the libggml that llama_cpp loaded."""
    import ctypes

    names = {"linux": "libggml.so", "darwin": "libggml.dylib", "win32": "ggml.dll"}
    lib_path = lib_dir / names.get(sys.platform, "libggml.so")
    shipped = sorted({p.name.split(".")[0].removeprefix("lib").removeprefix("ggml-") for p in lib_dir.glob("*ggml-*")} - {"base"})
    out: dict[str, Any] = {"backend_libraries": shipped, "backends": [], "devices": []}
    try:
        g = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        out["registry_error"] = f"cannot open {lib_path}: {exc}"
        return out
    vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for fn, res, args in (("ggml_backend_reg_count", sz, []), ("ggml_backend_reg_get", vp, [sz]), ("ggml_backend_reg_name", cp, [vp]),
                          ("ggml_backend_dev_count", sz, []), ("ggml_backend_dev_get", vp, [sz]), ("ggml_backend_dev_name", cp, [vp]),
                          ("ggml_backend_dev_description", cp, [vp]), ("ggml_backend_dev_type", ctypes.c_int, [vp]),
                          ("ggml_backend_dev_backend_reg", vp, [vp]),
                          ("ggml_backend_dev_memory", None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)])):
        if not hasattr(g, fn):
            out["registry_error"] = f"{lib_path.name} has no {fn} (an older llama.cpp)"
            return out
        getattr(g, fn).restype, getattr(g, fn).argtypes = res, args
    out["backends"] = [g.ggml_backend_reg_name(g.ggml_backend_reg_get(i)).decode() for i in range(g.ggml_backend_reg_count())]
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = sz(0), sz(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out["devices"].append({"name": g.ggml_backend_dev_name(dev).decode(errors="replace"),
                               "description": (g.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                               "backend": g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(dev)).decode(errors="replace"),
                               "type": {0: "cpu", 1: "gpu"}.get(g.ggml_backend_dev_type(dev), "other"),
                               "memory_total": total.value, "memory_free": free.value})
    return out


# ---- one verdict, for doctor and install ---------------------------------------------


def describe(llama: dict[str, Any], hardware: list[dict[str, str]], n_gpu_layers: int) -> dict[str, Any]:
    """``backend`` (what a worker will use: CUDA, Metal, ... or CPU), ``line`` (one
    sentence with the hardware and the compiled support), ``level`` (ok, or warn when
    a GPU goes unused) and ``hint`` (how to use it)."""
    compiled = sorted({*llama.get("backends", []), *(b.upper() for b in llama.get("backend_libraries", []))}, key=str.lower)
    gpu_compiled = [b for b in compiled if b.lower() in {g.lower() for g in GPU_BACKENDS}]
    gpu_devices = [d for d in llama.get("devices", []) if d.get("type") == "gpu"]
    seen = ", ".join(f"{h['name']}" for h in hardware) or "none found"
    built = ", ".join(compiled) or "unknown"
    result: dict[str, Any] = {"compiled": compiled, "gpu_devices": gpu_devices, "hardware": hardware, "level": "ok", "hint": None}
    if gpu_devices and llama.get("gpu_offload"):
        dev = gpu_devices[0]
        mem = f", {dev['memory_total'] / 2**30:.1f} GiB" if dev.get("memory_total") else ""
        result["backend"] = dev.get("backend") or gpu_compiled[0]
        used = "used" if n_gpu_layers else "not used: llm.n_gpu_layers is 0"
        result["line"] = f"{result['backend']} on {dev['description'] or dev['name']}{mem} ({used}; built with {built})"
        if not n_gpu_layers:
            result.update(level="warn", hint="set llm.n_gpu_layers: -1 (or a profile model's n_gpu_layers) to offload the model to the GPU")
        return result
    result["backend"] = "CPU"
    if hardware:
        vendor = hardware[0]["vendor"]
        result["line"] = f"CPU: llama-cpp-python is built with {built} only, but this machine has {seen}"
        flag = REBUILD.get(vendor, "-DGGML_VULKAN=on")
        result.update(level="warn", hint=f"to use the GPU, rebuild llama-cpp-python with its backend: CMAKE_ARGS=\"{flag}\" "
                                         f"{sys.executable} -m pip install --force-reinstall --no-cache-dir llama-cpp-python")
    else:
        result["line"] = f"CPU (no GPU found; built with {built})"
    if n_gpu_layers and result["level"] == "ok":
        result.update(level="warn", hint="llm.n_gpu_layers is set but there is no GPU to offload to: the model runs on the CPU")
    return result


if __name__ == "__main__":
    print(json.dumps(_probe_here()))
