#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py says what it runs and its settings): bash benchmarks/gpu_check.sh [RESULTS]
exec python3 "$(dirname "$0")/gpu_check.py" "$@"
