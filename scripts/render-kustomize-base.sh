#!/usr/bin/env bash
# Re-renders the kustomize base's operator objects (and the production
# overlay's optional ones) from the Helm chart, after a change to its
# templates. e2e/tests/install.rs fails while the two differ.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin_dir=$(bash e2e/controlplane/build.sh | tail -n 1)
render() { # FOLDER HEADER HELM-ARGS...
  local folder=$1 header=$2; shift 2
  "$bin_dir/helm" template countersign charts/countersign --namespace countersign-system "$@" |
    FOLDER="$folder" HEADER="$header" python3 -c '
import os, re, sys
docs = [d for d in re.split(r"^---\s*$", sys.stdin.read(), flags=re.M) if d.strip()]
files = {}
for d in docs:
    name = re.search(r"^# Source: countersign/templates/(\S+)", d, re.M).group(1)
    d = re.sub(r"^# Source: .*\n", "", d, flags=re.M)
    # Helm'"'"'s own labels; kustomize sets its own.
    d = re.sub(r"^\s+(app\.kubernetes\.io/(instance|version|managed-by)|helm\.sh/chart): .*\n", "", d, flags=re.M)
    files.setdefault(name, []).append(d.strip("\n"))
for name, parts in files.items():
    body = "\n---\n".join(parts)
    if name == "migrations-job.yaml":
        # Under Argo CD the Job is a PreSync hook, as the chart'"'"'s Helm hook is.
        body = re.sub(r"  annotations:\n(    (helm\.sh/|#).*\n)+",
            "  annotations:\n"
            "    # Under Argo CD the Job is a PreSync hook, as the chart'"'"'s Helm hook is;\n"
            "    # with plain `kubectl apply -k`, delete the finished Job before applying\n"
            "    # a new version (a Job'"'"'s pod template cannot change).\n"
            "    argocd.argoproj.io/hook: PreSync\n"
            "    argocd.argoproj.io/hook-delete-policy: BeforeHookCreation\n", body + "\n").rstrip("\n")
    header = os.environ["HEADER"].replace("NAME", name)
    with open(os.path.join(os.environ["FOLDER"], name), "w") as f:
        f.write(header + "\n" + body + "\n")
'
}
render kustomize/base "# The chart's default NAME (charts/countersign/templates/NAME),
# rendered by scripts/render-kustomize-base.sh; e2e/tests/install.rs fails if
# the two drift apart." \
  --show-only templates/serviceaccount.yaml --show-only templates/operator-rbac.yaml \
  --show-only templates/deployment.yaml --show-only templates/pdb.yaml \
  --show-only templates/service.yaml --show-only templates/migrations-job.yaml
render kustomize/overlays/production "# The chart's NAME with production values (scripts/render-kustomize-base.sh)." \
  --set serviceMonitor.enabled=true --set networkPolicy.enabled=true \
  --show-only templates/servicemonitor.yaml --show-only templates/networkpolicy.yaml
