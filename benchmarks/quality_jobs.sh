#!/bin/sh
# Runs the quality harness the way docs/benchmarks.md reports it: every contestant on ONE thread,
# two jobs at a time (one per core of a 2-core machine), budgets in CPU-minutes.
#
#   sh benchmarks/quality_jobs.sh ../shared/corpora/tinyshakespeare.txt shakespeare 5,15
#
# Each line below is one job (contestant:budgets); records already in the results file are skipped,
# so an interrupted run continues where it stopped.
set -eu
corpus=$1 name=$2 budgets=${3:-5,15,30}
cd "$(dirname "$0")/.."
jobs=""
for budget in $(echo "$budgets" | tr ',' ' '); do
    jobs="$jobs gpt:$budget lstmgen:$budget lstmgen-char:$budget"
done
jobs="sgd-lstm:$budgets $jobs"
python benchmarks/quality.py --corpus "$corpus" --name "$name" --threads 1 --prepare  # one tokenizer for the references
printf '%s\n' $jobs | xargs -P 2 -I JOB sh -c '
    contestant=${1%%:*} budgets=${1#*:}
    python benchmarks/quality.py --corpus "$2" --name "$3" --threads 1 --contestants "$contestant" --budgets "$budgets" \
        > "/tmp/lstmgen-quality-$3-$contestant-$(echo "$budgets" | tr , _).log" 2>&1
' _ JOB "$corpus" "$name"
python benchmarks/quality.py --report
