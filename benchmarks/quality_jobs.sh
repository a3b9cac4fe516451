#!/bin/sh
# The quality suite, as docs/benchmarks.md reports it: every contestant on every corpus at 5, 15 and
# 30 CPU-minutes, one thread per run, two runs at a time (one per core of a 2-core machine), then the
# tables. Cells already in benchmarks/results/quality.jsonl are skipped, so an interrupted suite
# continues where it stopped. Options go to benchmarks/quality.py, e.g.
#
#   sh benchmarks/quality_jobs.sh                               # the whole suite (~1,000 CPU-minutes)
#   sh benchmarks/quality_jobs.sh --corpora shakespeare,tang --budgets 5,15
#   sh benchmarks/quality_jobs.sh --budgets 0.05 --max-chars 100000 --work /tmp/quality-smoke
#
# Progress goes to stderr, each job's log to /tmp/lstmgen-quality/logs/ (--work).
set -eu
cd "$(dirname "$0")/.."
exec python benchmarks/quality.py "$@"
