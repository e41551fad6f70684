"""benchmarks/generalisation.py --jobs N: the studies scored in worker processes give the rows of
one process, in the same order (only the timings differ)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def test_worker_processes_score_the_one_process_rows(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from generalisation import main

    common = ["--modality", "mr", "--studies", "2", "--methods", "truth", "--size", "48", "--slices", "4"]
    main([*common, "--json", str(tmp_path / "one.json")])
    main([*common, "--jobs", "2", "--json", str(tmp_path / "two.json")])
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in one["rows"]]
    assert len(strip) == 4 and [r["style"] for r in strip] == ["geometric"] * 2 + ["mni"] * 2
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in two["rows"]]
