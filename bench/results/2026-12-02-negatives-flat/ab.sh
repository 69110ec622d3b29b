#!/usr/bin/env bash
# The negatives stage of the commit before streaming (OLD, a tree made with
# `git archive 2f665f1 | tar -x -C /tmp/flat-before`) and of this tree (NEW), on one prepared folder
# made by bench/scale.py (WORK/prepared, WORK/params.yaml), run in turns, ROUNDS each: wall time and
# peak RSS of the process (GNU time: %e, %M), then whether the outputs are the same bytes.
#   bash bench/results/2026-12-02-negatives-flat/ab.sh /tmp/flat30k /tmp/flat-before 2
set -euo pipefail
WORK=$1 OLD=$2 ROUNDS=${3:-2}
NEW=$(cd "$(dirname "$0")/../../.." && pwd)
for round in $(seq "$ROUNDS"); do
  for which in old new; do
    tree=$OLD; [ "$which" = new ] && tree=$NEW
    out=$WORK/ab-$which
    rm -rf "$out"
    (cd "$tree" && TQDM_DISABLE=1 PYTHONPATH=$tree /usr/bin/time -f "$which round $round: %e s wall, %M KiB peak RSS" \
      python stages/negatives.py --params "$WORK/params.yaml" --prepared "$WORK/prepared" --out "$out" \
      --report "$out.json" > /dev/null)
  done
done
for f in train val test; do cmp "$WORK/ab-old/$f.parquet" "$WORK/ab-new/$f.parquet" && echo "$f.parquet: same bytes"; done
cmp "$WORK/ab-old.json" "$WORK/ab-new.json" && echo "report: same bytes"
sha256sum "$WORK"/ab-new/*.parquet "$WORK/ab-new.json"
