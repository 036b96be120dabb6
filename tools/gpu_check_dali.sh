#!/bin/bash
# On the GPU machine: unpack the DALI parts of tools/gpu_dali_parts.sh from FOLDER into /tmp/site, then run
# tools/gpu_check.py with it importable; extra arguments go to gpu_check.py. Without the parts the check runs
# and reports its DALI step as skipped.
cd "$(dirname "$0")/.."
parts=${1:?usage: tools/gpu_check_dali.sh FOLDER [gpu_check.py args]}; shift
if ls "$parts"/part? >/dev/null 2>&1; then
  cat "$parts"/part? | xz -d -T0 | tar -x -C /tmp \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
              LD_LIBRARY_PATH=/tmp/site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
else
  echo "gpu-check: no DALI parts in $parts; the DALI step will be skipped"
fi
PYTHONUNBUFFERED=1 exec python3 tools/gpu_check.py "$@"
