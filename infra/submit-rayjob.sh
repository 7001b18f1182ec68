#!/usr/bin/env bash
# Starts one run of a RayJob template (the suspended RayJobs multivae-sweep and multivae-train
# that the overlays deploy): a copy with a fresh name, not suspended, optionally with another
# entrypoint. KubeRay then creates the job's own Ray cluster, runs the entrypoint, and deletes
# the cluster when it ends.
#
#   infra/submit-rayjob.sh sweep
#   infra/submit-rayjob.sh train multivae train --config /opt/multivae/examples/mvae.yaml \
#       --ray --num-workers 4 --gpus-per-worker 1 --set output_dir=/mnt/multivae/runs/mvae
#
# Needs kubectl (with access to the namespace of infra/base/settings.env) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
    sweep|train) template="multivae-$1" ;;
    *) echo "usage: infra/submit-rayjob.sh sweep|train [ENTRYPOINT...]" >&2; exit 2 ;;
esac
shift
namespace="${MULTIVAE_NAMESPACE:-$(sed -n 's/^MULTIVAE_NAMESPACE=//p' infra/base/settings.env)}"
name="${template}-$(date +%Y%m%d-%H%M%S)"

kubectl -n "$namespace" get rayjob "$template" -o json | python3 -c '
import json
import sys

job = json.load(sys.stdin)
name, entrypoint = sys.argv[1], " ".join(sys.argv[2:])
template = job["metadata"]
job["metadata"] = {
    "name": name,
    "namespace": template["namespace"],
    "labels": {**template.get("labels", {}), "multivae.io/template": template["name"]},
}
job.pop("status", None)
job["spec"]["suspend"] = False
if entrypoint:
    job["spec"]["entrypoint"] = entrypoint
json.dump(job, sys.stdout)
' "$name" "$@" | kubectl create -f -

echo "follow it:  kubectl -n $namespace get rayjob $name -w"
echo "its logs:   kubectl -n $namespace logs -f job/$name"
