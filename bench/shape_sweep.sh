#!/bin/bash
# Bounded against sequential (and the starter) on each dataset shape that varies one
# factor from the default (1080p, GOP 30, 10 s, 200 names of one file), one interleaved
# `ringload bench` run per shape. Results: bench/results/shape-<name>.json and .txt.
# The budget lets the warm-up drain the ring (a bounded look-ahead of 35 to 40 batches at
# 1080p), so the timed windows measure steady decoding, not the ring filling.
# Bounded reads ahead 35 to 40 batches at 1080p: windows shorter than about three times
# that (WINDOW=90) misjudge it (docs/benchmarks.md, "Long windows").
# Usage: [CONTENDERS=...] [SHAPES="gop10 480p ..."] [ROUNDS=3] [WINDOW=15] [BUDGET=240]
#        [SUFFIX=-long] [OUT=bench/results] bash bench/shape_sweep.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-bench/results}
COMMON=(--contenders "${CONTENDERS:-starter,sequential,bounded}" --sweep none --batch-size 128 --size 224
        --rounds "${ROUNDS:-3}" --window-s "${WINDOW:-15}" --budget-s "${BUDGET:-240}" --no-plots --no-progress)
run() {
    local name=$1; shift
    case " ${SHAPES:-default 5s 60s gop10 gop250 480p 20distinct} " in *" $name "*) ;; *) return ;; esac
    mkdir -p "$OUT"
    echo "shape $name: $* (start $(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
    "$PY" -m ringload.cli bench "${COMMON[@]}" "$@" --out "$OUT/shape-$name${SUFFIX:-}.json" > "$OUT/shape-$name${SUFFIX:-}.txt" 2>&1
    echo "shape $name: rc=$? (end $(date -u +%H:%M:%S))"
}
BASE=(--resolution 1080p --gop 30 --seconds 10 --videos 1 --names 200)
run default "${BASE[@]}"
run 5s --resolution 1080p --gop 30 --seconds 5 --videos 1 --names 200
run 60s --resolution 1080p --gop 30 --seconds 60 --videos 1 --names 200
run gop10 --resolution 1080p --gop 10 --seconds 10 --videos 1 --names 200
run gop250 --resolution 1080p --gop 250 --seconds 10 --videos 1 --names 200
run 480p --resolution 480p --gop 30 --seconds 10 --videos 1 --names 200
run 20distinct --resolution 1080p --gop 30 --seconds 10 --videos 20 --names 200
