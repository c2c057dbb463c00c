#!/usr/bin/env bash
# Validates every manifest in deploy/k8s against the Kubernetes OpenAPI schemas, strictly
# (unknown or misspelled fields are errors), offline; then checks.py checks what the schemas
# cannot (resource figures from docs/memory.md's formula, a pool's disruption budget and node spread,
# per-pod DNS for routing, native sidecars, a pool's etcd reached over TLS with a client certificate
# and Secrets, never http://, push mode's callback address, Secret and NetworkPolicy), and
# checks_test.py that those checks catch what they are for.
#
# Validator: PyPI `kubernetes-validate`, which ships the JSON schemas of each Kubernetes release
# inside the package, so no schema host is contacted. It is installed into a private virtualenv
# on first use (pip only reaches the package registry).
#
# Usage: deploy/k8s/validate.sh [FILE...]        (default: every *.yaml / *.yml beside this script)
# Env:   K8S_VERSION         Kubernetes version to validate against (default 1.33.0: native
#                            sidecars, i.e. restartPolicy on init containers, are GA there)
#        K8S_VALIDATE_VENV   where to install the validator
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s_version="${K8S_VERSION:-1.33.0}"
validator_pin="kubernetes-validate==1.37.0"
venv="${K8S_VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ccgw-bridge/kubernetes-validate-venv}"
kv="$venv/bin/kubernetes-validate"

if [[ ! -x "$kv" ]]; then
  echo "validate.sh: installing $validator_pin into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$validator_pin"
fi

if [[ $# -gt 0 ]]; then
  files=("$@")
else
  shopt -s nullglob
  files=("$here"/*.yaml "$here"/*.yml)
  shopt -u nullglob
fi
if [[ ${#files[@]} -eq 0 ]]; then
  echo "validate.sh: no manifests found in $here" >&2
  exit 1
fi

# kubernetes-validate exits 0 with a WARN line for a kind/apiVersion it has no schema for
# (e.g. a misspelled kind): treat every line that is not INFO as a failure.
set +e
out="$("$kv" --strict --kubernetes-version "$k8s_version" "${files[@]}" 2>&1)"
rc=$?
set -e
printf '%s\n' "$out"

# What the schemas cannot say but the API server, the scheduler or the bridge's own sizing rule
# need (checks.py says what): native sidecars, resource figures derived from the memory formula
# of docs/memory.md (also quoted in docs/operations.md and the k8s README), a PodDisruptionBudget
# and a node spread for a pool, and
# per-pod DNS (subdomain + headless Service) for routing without a sidecar, and a pool's etcd
# secured (https:// only, a client certificate, key and password from Secrets); then
# deploy/prometheus/checks.py: the PodMonitor and PrometheusRule (fields, rules, selection).
set +e
docs="$here/../../docs"
semantic="$("$venv/bin/python" "$here/checks.py" --formula "$docs/memory.md" \
  --flags "$docs/configuration.md" "$docs/operations.md" "$here/README.md" -- "${files[@]}")"
src=$?
set -e
[[ -n "$semantic" ]] && printf '%s\n' "$semantic"
# The prometheus-operator objects beside the alerting rules (deploy/prometheus/checks.py says
# what): no schema for their kinds ships with the validator, so their fields are checked there,
# with the rules they must equal and the pods they must select.
prom="$here/../prometheus"
"$venv/bin/python" "$prom/checks.py" --rules "$prom/ccgw-bridge.rules.yml" \
  --docs "$docs/metrics-and-alerts.md" --pods "$here"/*.yaml -- \
  "$prom/ccgw-bridge.podmonitor.yaml" "$prom/ccgw-bridge.prometheusrule.yaml" || src=1
# The Grafana dashboard: JSON, its variables, a datasource and queries on every panel (that each
# query returns data is tests/pool/dashboard.rs's, against a real Prometheus).
"$venv/bin/python" "$here/../grafana/checks.py" "$here/../grafana/ccgw-bridge.json" || src=1
# The checks themselves: each defect they exist for, planted in a copy, must be reported.
if [[ $# -eq 0 ]]; then
  "$venv/bin/python" "$here/checks_test.py" || src=1
  "$venv/bin/python" "$prom/checks_test.py" || src=1
fi
if [[ $rc -ne 0 || $src -ne 0 ]] || grep -qv '^INFO ' <<<"$out"; then
  echo "validate.sh: FAILED against Kubernetes $k8s_version (strict)" >&2
  exit 1
fi
echo "validate.sh: ${#files[@]} file(s) valid against Kubernetes $k8s_version (strict);" \
  "deploy/prometheus's PodMonitor and PrometheusRule and deploy/grafana's dashboard checked"
