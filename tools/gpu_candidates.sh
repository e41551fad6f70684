#!/usr/bin/env bash
# Several (MR or CT) candidate recipes of tools/train_weights.py trained at once on one GPU machine (an
# exploration, stop 29: docs/cnn.md "GPU exploration"): the bundled recipe's cohorts simulated and
# prepared once with --jobs, shared by every candidate (cohorts linked, slices hard-linked), then one
# `train_weights.py --candidate` process per recipe, each stage capped at MINUTES of wall time.
# usage: tools/gpu_candidates.sh tools/train_weights.py MINUTES JOBS OUTDIR ["mr mr-beta ..."] [EVAL_STUDIES] [SCREEN] [STAGES]
# EVAL_STUDIES > 0: each candidate's weights then scored on that many studies per style of
# benchmarks/generalisation.py (--jobs JOBS, CNN only), the JSON written to OUTDIR.
# SCREEN=1: first each candidate screened by benchmarks/candidate_core.py (the 7 unseen studies of
# tests/models/test_bundled.py and, for CT, the demo study; all candidates at once, on the GPU).
# STAGES=N: the first N stages of each recipe only (CT: preparing all three stages' slices took
# 523 s of a 600-s call on the 16-core machine at stop 30, leaving no time to train).
# The work folder is in /dev/shm when it has room (the stop-29 run spent ~200 s writing 3.4 GB of
# slices to the machine's disk), else a temporary folder.
set -u
TW=$1; MIN=$2; JOBS=$3; O=$4; VARIANTS=${5:-"mr mr-beta mr-lowflow mr-beta-lowflow"}; EVAL=${6:-0}; SCREEN=${7:-0}; STAGES=${8:+--stages $8}
export PYTHONUNBUFFERED=1
if [ "$(df --output=avail -k /dev/shm 2>/dev/null | tail -1)" -gt 30000000 ] 2>/dev/null; then
  W=$(mktemp -d /dev/shm/perfnet-gpu.XXXX)
else
  W=$(mktemp -d)
fi
trap 'rm -rf "$W"' EXIT
mkdir -p $O
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -c "import perfnet.cli, lightning, nibabel, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', lightning.__version__)" || exit 3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
stamp "prepare"
# the cohorts of the modality's bundled recipe (ct or mr, from the first variant's name), shared
B=${VARIANTS%%-*}; B=${B%% *}
python3 $TW $B --work $W/$B --prepare-only $STAGES --jobs $JOBS > $O/prepare.log 2>&1 || { tail -30 $O/prepare.log; exit 4; }
stamp "prepared"; du -sh $W/$B/*

for v in $VARIANTS; do
  if [ $v != $B ]; then
    mkdir -p $W/$v; ln -s $W/$B/$B-cohort $W/$v/$v-cohort
    ln -s $W/$B/$B-cohort-2 $W/$v/$v-cohort-2
    for r in $W/$B/$B-run*; do  # each stage's prepared slices (a stage's key: its cohort and grid)
      mkdir -p $W/$v/$v${r#$W/$B/$B}; cp -al $r/slices $W/$v/$v${r#$W/$B/$B}/
    done
  fi
done
for v in $VARIANTS; do
  OMP_NUM_THREADS=2 python3 $TW $v --work $W/$v --candidate $STAGES --minutes $MIN > $O/$v.log 2>&1 &
done
wait
stamp "trained"
for v in $VARIANTS; do
  cp $W/$v/$v.pt $O/$v.pt 2>/dev/null || echo "$v: no weights"; tail -3 $O/$v.log
  for r in $W/$v/$v-run*; do
    echo "== $r"; awk -F, 'NR==1 || $7!=""' $r/fold-0/metrics.csv 2>/dev/null | cut -d, -f1,3,7- | tail -6
  done
done
if [ "$SCREEN" = 1 ]; then
  M=$(echo $B | tr a-z A-Z)
  for v in $VARIANTS; do
    [ -f $W/$v/$v.pt ] || continue
    OMP_NUM_THREADS=2 python3 benchmarks/candidate_core.py $W/$v/$v.pt --modality $M --device ${SCREEN_DEVICE:-cuda} \
      --json $O/$v-screen.json > $O/$v-screen.log 2>&1 &
  done
  wait
  stamp "screened"
  for v in $VARIANTS; do echo "== $v"; tail -5 $O/$v-screen.log 2>/dev/null; done
fi
if [ "$EVAL" -gt 0 ]; then
  for v in $VARIANTS; do
    [ -f $W/$v/$v.pt ] || continue
    python3 benchmarks/generalisation.py --modality $B --studies $EVAL --methods cnn --weights $W/$v/$v.pt \
      --jobs $JOBS --json $O/$v-generalisation.json > $O/$v-generalisation.log 2>&1
    stamp "scored $v"; grep -A4 "^means" $O/$v-generalisation.log | tail -3
  done
fi
mkdir -p $O/logs
mv $O/*-generalisation.* $O/*-screen.* $O/logs/ 2>/dev/null  # at most 8 files come back: the weights and one archive
for v in $VARIANTS; do
  cp $W/$v/$v.md $O/logs/ 2>/dev/null
  for r in $W/$v/$v-run*; do cp $r/fold-0/metrics.csv $O/logs/$(basename $r).metrics.csv 2>/dev/null; done
  mv $O/$v.log $O/logs/
done
mv $O/prepare.log $O/logs/
tar czf $O/logs.tgz -C $O logs && rm -rf $O/logs
stamp "done"
