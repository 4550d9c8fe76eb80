#!/usr/bin/env bash
# Set the op-concurrency limit of every GPU-class pool to the number of cards of that class, so
# Dagster never starts more GPU steps of a class than there are cards (hydra_assets/gpu.py puts
# each GPU step in the pool `gpu-<class>` of its profile's first preferred class).
#
# Run it wherever `dagster` reaches the instance. On the cluster, inside the daemon pod:
#   DAGSTER="kubectl -n hydra exec deploy/hydra-dagster-daemon -- dagster" deploy/pool_limits.sh
# Locally (embedded instance): DAGSTER_HOME=var/dagster_home deploy/pool_limits.sh
# Card counts default to the SPEC's one card per class; override per class, e.g.
#   GPU_5070TI=2 GPU_3060=2 deploy/pool_limits.sh
# The pools must match GPU_CLASSES in hydra_assets/domain/workloads.py (tests/test_gpu_profiles.py checks).
set -euo pipefail

DAGSTER=${DAGSTER:-dagster}
GPU_CLASSES=(5090 4090 5070ti 3060)

# Check every count before changing anything, so a typo never leaves the pools half set.
declare -A LIMITS
for gpu_class in "${GPU_CLASSES[@]}"; do
    variable="GPU_${gpu_class^^}"
    limit="${!variable:-1}"
    if ! [[ "$limit" =~ ^[0-9]+$ ]]; then
        echo "pool_limits.sh: $variable must be a whole number of cards, got '$limit'" >&2
        exit 2
    fi
    LIMITS[$gpu_class]=$limit
done

for gpu_class in "${GPU_CLASSES[@]}"; do
    # shellcheck disable=SC2086  # DAGSTER may be a command with arguments (kubectl exec ... --)
    $DAGSTER instance concurrency set "gpu-${gpu_class}" "${LIMITS[$gpu_class]}"
done
# shellcheck disable=SC2086
$DAGSTER instance concurrency get --all
