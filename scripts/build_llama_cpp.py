"""`make llama-cpp`: build llama.cpp's server once per machine, for the llama-cpp engine.

llama.cpp's source comes from the package registry, not from GitHub: the source distribution of
llama-cpp-python (pinned below) carries it whole (vendor/llama.cpp).  pip downloads it (its HTTP
cache keeps the file: a second build downloads nothing), CMake builds only `llama-server`, static,
for this CPU, and the program goes to <cache>/llama.cpp/bin/llama-server (QUEUECHAT_CACHE_DIR,
default ~/.cache/queuechat), where workers look for it.  A build for the same version is kept:
later runs print where it is and return at once.  Needs cmake and a C++17 compiler; about 4
minutes on 2 cores.  Extra CMake flags (e.g. -DGGML_CUDA=ON for NVIDIA GPUs) go in
LLAMA_CPP_CMAKE_ARGS.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workers.engine_kinds import llama_server_path  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

SOURCE_PACKAGE = "llama-cpp-python==0.3.36"  # vendors llama.cpp 0c1e570 (ggml 0.25.3)
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would download the web page's build; the worker starts it with --no-webui
    "-DLLAMA_OPENSSL=OFF",  # it only ever listens on loopback and fetches nothing
]  # fmt: skip


def main() -> int:
    target = llama_server_path(WorkerSettings().cache_dir)
    stamp = target.with_name("llama-server.version")
    extra = shlex.split(os.environ.get("LLAMA_CPP_CMAKE_ARGS", ""))
    wanted = " ".join([SOURCE_PACKAGE, *extra])
    if target.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        print(f"llama.cpp server already built: {target}")
        return 0
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        print(f"cannot build llama.cpp: {', '.join(missing)} not found", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-cpp-build-") as work:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--dest", work, SOURCE_PACKAGE], check=True)  # fmt: skip
        archive = next(Path(work).glob("*.tar.gz"))
        source = _extract_llama_cpp(archive, Path(work) / "src")
        build = Path(work) / "build"
        target.parent.mkdir(parents=True, exist_ok=True)
        log_path = target.with_name("build.log")  # the compiler's warnings are many; kept, not printed
        jobs = str(os.cpu_count() or 2)
        with open(log_path, "w") as log:
            for step in (["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS, *extra],
                         ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs]):  # fmt: skip
                if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                    tail = log_path.read_text(errors="replace").splitlines()[-30:]
                    print("\n".join(tail) + f"\nbuilding llama.cpp failed; the whole log: {log_path}", file=sys.stderr)
                    return 1
        staging = target.with_name(".llama-server.new")
        shutil.copy2(build / "bin" / "llama-server", staging)
        staging.replace(target)  # atomic: a worker never finds half a program
        stamp.write_text(wanted + "\n")
    print(f"built llama.cpp server in {time.monotonic() - started:.0f} s: {target}")
    return 0


def _extract_llama_cpp(archive: Path, into: Path) -> Path:
    """Unpack only vendor/llama.cpp of the source distribution; its folder."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        tar.extractall(into, members=members, filter="data")
    return next(into.glob("*/vendor/llama.cpp"))


if __name__ == "__main__":
    sys.exit(main())
