"""Train the bundled weights from scratch (``make weights``; CT ≈ 50 min, MR ≈ 25 min on 2 cores).

    python tools/train_weights.py ct|mr [--work DIR] [--minutes M]

Simulates a phantom cohort (seeds below; never used by the tests, which draw seeds < 1000),
trains fold 0 of a 5-fold split by patient with truth targets, and writes
``src/perfnet/weights/<modality>.pt`` with its model card ``<modality>.md`` and plan ``<modality>-plan.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "src" / "perfnet" / "weights"

#: Shared by both models: small temporal shifts (inputs are bolus-aligned), fold 0 of a 5-fold split.
COMMON = ["--shift=-3,8", "--batch-size", "8", "--folds", "5", "--fold", "0"]

SETTINGS = {
    "ct": {
        "cohort": ["--modality", "ct", "--cases", "120", "--seed", "10000", "--size", "128", "--no-motion"],
        "train": [
            "--model",
            "unet",
            "--width",
            "16",
            "--pixel-mm",
            "1.8",
            "--pretrain-size",
            "128",
            "--pretrain-epochs",
            "4",
            "--crop",
            "128",
            "--epochs",
            "60",
            "--lr-step",
            "12",
            *COMMON,
        ],
        "minutes": 48,
    },
    "mr": {
        "cohort": ["--modality", "mr", "--cases", "60", "--seed", "20000", "--slices", "10", "--no-motion"],
        "train": [
            "--model",
            "temporal",
            "--width",
            "32",
            "--pixel-mm",
            "2.0",
            "--crop",
            "32",
            "--epochs",
            "40",
            "--lr-step",
            "8",
            *COMMON,
            "--val-every",
            "3",
        ],
        "minutes": 25,
    },
}


PAPERS = {"unet": "Gava et al. 2022 U-Net", "temporal": "Hess et al. 2018 temporal network"}


def perfnet(*args: str) -> None:
    cmd = [sys.executable, "-m", "perfnet.cli", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def model_card(modality: str, plan: dict, seconds: float, cohort_args: list[str]) -> str:
    cfg = plan["config"]
    fold = plan["folds"]["0"]
    val = fold["validation"]
    split = plan["splits"][0]
    lines = [
        f"# perfnet bundled {modality.upper()} weights: `{cfg['model']}`",
        "",
        f"- model: `{cfg['model']}` ({PAPERS[cfg['model']]}),"
        f" width {cfg['width']}, maps {', '.join(cfg['maps'])}, loss {cfg['loss']}",
        f"- inputs: concentration resampled to {cfg['frames']} frames × {cfg['frame_interval']} s, starting"
        f" {cfg['align_lead_s']} s before the detected bolus arrival; in-plane pixels {cfg['pixel_mm']} mm",
        f"- data: {len(plan['studies'])} phantom studies, `perfnet simulate {' '.join(cohort_args)}` —"
        " every other parameter drawn from the phantom's documented ranges (anatomy, CBF/CBV, residue"
        " family, delay/dispersion, AIF arrival 2–15 s, frame interval 0.5–2 s, 30–90 frames, dose/SNR,"
        " lesion type, territory and hemisphere)",
        f"- split: 5 folds by patient; fold 0 trained on {len(split['training_subjects'])} patients,"
        f" validated on {len(split['validation_subjects'])}: {', '.join(split['validation_subjects'])}",
        f"- schedule: {fold['epochs']} epochs (pre-train {cfg['pretrain_epochs']} at {cfg['pretrain_size']}²,"
        f" then {cfg['crop']}² windows), Adam lr {cfg['lr']} halved every {cfg['lr_step_epochs']} epochs,"
        f" batch {cfg['batch_size']}, shift augmentation {cfg['shift']} frames, flips,"
        f" ±{cfg['rotation_deg']}°, noise",
        f"- training time: {fold['seconds'] / 60:.1f} min on 2 CPU cores ({seconds / 60:.1f} min with"
        " simulation and loading)",
        "",
        "## Validation (fold 0, held-out patients, truth targets, brain voxels)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(val.items())]
    lines += [
        "",
        "Tmax MAEC is the mean absolute error with both maps clipped to [0, 20] s (Hess et al.);"
        " the hypoperfused Dice uses Tmax > 6 s. The plan with every setting and the split is"
        f" `{modality}-plan.json` beside this card. Reproduce with"
        f" `python tools/train_weights.py {modality}`.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modality", choices=sorted(SETTINGS))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "weights")
    parser.add_argument("--minutes", type=float, help="training time limit")
    args = parser.parse_args()
    s = SETTINGS[args.modality]
    started = time.perf_counter()
    cohort = args.work / f"{args.modality}-cohort"
    run = args.work / f"{args.modality}-run"
    if not cohort.is_dir():
        perfnet("simulate", str(cohort), *s["cohort"])
    minutes = args.minutes or s["minutes"]
    perfnet("train", str(cohort), "--out", str(run), *s["train"], "--max-minutes", str(minutes))
    plan = json.loads((run / "plan.json").read_text())
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "weights.pt", WEIGHTS / f"{args.modality}.pt")
    plan_public = {k: v for k, v in plan.items() if k != "cohort"}
    (WEIGHTS / f"{args.modality}-plan.json").write_text(json.dumps(plan_public, indent=2) + "\n")
    card = model_card(args.modality, plan, time.perf_counter() - started, s["cohort"])
    (WEIGHTS / f"{args.modality}.md").write_text(card)
    print(card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
