"""Run every benchmark in this folder (``make bench``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).parent
ORDER = [
    *("phantom", "conventional", "methods", "tiles", "cnn", "dose", "cohort", "training_memory"),
    "tmax_convention",
]


def main() -> int:
    names = [n for n in ORDER if (HERE / f"{n}.py").exists()]
    for name in names:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main()
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
