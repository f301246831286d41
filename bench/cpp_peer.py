"""llama.cpp's own C++ ``llama-server``, built from the llama.cpp that the installed
llama-cpp-python vendors (the same engine msting's workers run), cached in bench/.cache:

    bench/.cache/llama-server-<llama-cpp-python version>/llama-server   the static binary
                                                      .../build.json   how it was built
                                                      .../build.log    pip download, cmake (kept when a build fails)
                                                      .../FAILED       why the last build failed (delete it to retry)

The build fetches the sdist from the package index (``pip download --no-binary :all:``) and
runs cmake (Release, no curl, no tests or examples, static), about 15 minutes on 2 cores, once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from harness import CACHE, now

CONFIGURE = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DBUILD_SHARED_LIBS=OFF"]
TARGET = "llama-server"
BUILD_TIMEOUT_SEC = 3600


def folder(llama_cpp_version: str) -> Path:
    return CACHE / f"llama-server-{llama_cpp_version}"


def installed_version() -> str | None:
    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return None


def binary(build: bool = True) -> tuple[Path | None, dict]:
    """(the cached binary, facts about it), building it first when it is missing and `build`;
    (None, {"error": why}) when there is none."""
    ver = installed_version()
    if ver is None:
        return None, {"error": "llama-cpp-python is not installed, so there is no llama.cpp version to build"}
    out = folder(ver)
    exe, failed = out / TARGET, out / "FAILED"
    if not exe.is_file():
        if failed.is_file():
            return None, {"error": f"the build failed earlier ({failed.read_text().strip()[:300]}); log {out / 'build.log'}; "
                                   f"delete {failed} to retry"}
        if not build:
            return None, {"error": f"{exe} is not built"}
        print(f"  building {TARGET} from llama-cpp-python {ver}'s llama.cpp (about 15 minutes on 2 cores, once)", flush=True)
        err = build_binary(ver, out)
        if err:
            failed.write_text(err + "\n")
            return None, {"error": err + f" (log {out / 'build.log'})"}
    facts = json.loads((out / "build.json").read_text()) if (out / "build.json").is_file() else {}
    try:
        v = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
        facts["version"] = (v.stdout + v.stderr).strip().splitlines()[-2:]
    except (OSError, subprocess.SubprocessError) as exc:
        return None, {"error": f"{exe} does not run: {exc}"}
    return exe, {**facts, "path": str(exe), "llama_cpp_python": ver}


def build_binary(ver: str, out: Path) -> str | None:
    """Download, configure, build, copy into `out`; None, or what failed."""
    if not shutil.which("cmake"):
        return "cmake is not installed (apt-get install cmake, or pip install cmake)"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="msbllama"))
    log = out / "build.log"
    t0 = time.monotonic()

    def step(cmd: list[str], cwd: Path) -> str | None:
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=BUILD_TIMEOUT_SEC).returncode
            except (OSError, subprocess.SubprocessError) as exc:
                return f"{cmd[0]} {cmd[1]}: {exc}"
        return None if rc == 0 else f"`{' '.join(cmd[:4])} ...` exited {rc}"

    try:
        pkg = f"llama-cpp-python=={ver}"
        err = step([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(work), pkg], work)
        if err:
            return f"downloading the {pkg} sdist failed: {err}"
        sdists = sorted(work.glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            return f"pip download left no sdist of {pkg} in {work}"
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(work, filter="data")
        src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
        if src is None:
            return f"the {pkg} sdist has no vendor/llama.cpp"
        configure = ["cmake", "-S", ".", "-B", "build", *CONFIGURE]
        build = ["cmake", "--build", "build", "--target", TARGET, "-j2"]
        err = step(configure, src) or step(build, src)
        if err:
            return f"building {TARGET} failed: {err}"
        shutil.copy2(src / "build" / "bin" / TARGET, out / TARGET)
        record(out, ver, sdists[0].name, configure, build, round(time.monotonic() - t0))
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def record(out: Path, ver: str, sdist: str, configure: list[str], build: list[str], seconds: int | None) -> None:
    (out / "build.json").write_text(json.dumps({
        "sdist": sdist, "from": f"llama-cpp-python {ver} (vendor/llama.cpp)", "configure": " ".join(configure),
        "build": " ".join(build), "build_sec": seconds, "built_at": now()}, indent=1) + "\n")


def seed(built: Path, sdist: str = "") -> Path:
    """Put a binary built by hand with the same commands (`built`) into the cache."""
    ver = installed_version() or "unknown"
    out = folder(ver)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, out / TARGET)
    (out / "FAILED").unlink(missing_ok=True)
    record(out, ver, sdist or f"llama_cpp_python-{ver}.tar.gz", ["cmake", "-S", ".", "-B", "build", *CONFIGURE],
           ["cmake", "--build", "build", "--target", TARGET, "-j2"], None)
    return out / TARGET


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--seed":
        print(seed(Path(sys.argv[2])))
    else:
        path, facts = binary()
        print(json.dumps(facts, indent=1))
        sys.exit(0 if path else 1)
