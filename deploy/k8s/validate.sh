#!/usr/bin/env bash
# Validates every manifest in deploy/k8s against the Kubernetes OpenAPI schemas, strictly
# (unknown or misspelled fields are errors), offline.
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

# What the schemas cannot say (the OpenAPI type is a bare string) but the API server enforces:
# an init container's restartPolicy may only be "Always" (a native sidecar).
set +e
semantic="$("$venv/bin/python" - "${files[@]}" <<'PY'
import sys, yaml
bad = 0
for name in sys.argv[1:]:
    with open(name) as f:
        for doc in yaml.safe_load_all(f):
            if not isinstance(doc, dict):
                continue
            spec = doc.get("spec") or {}
            pod = (spec.get("template") or {}).get("spec") or spec
            for c in pod.get("initContainers") or []:
                policy = c.get("restartPolicy")
                if policy is not None and policy != "Always":
                    print(f"ERROR {name}: initContainers[{c.get('name')}].restartPolicy "
                          f"{policy!r}: only 'Always' (native sidecar) is allowed")
                    bad = 1
sys.exit(bad)
PY
)"
src=$?
set -e
[[ -n "$semantic" ]] && printf '%s\n' "$semantic"
if [[ $rc -ne 0 || $src -ne 0 ]] || grep -qv '^INFO ' <<<"$out"; then
  echo "validate.sh: FAILED against Kubernetes $k8s_version (strict)" >&2
  exit 1
fi
echo "validate.sh: ${#files[@]} file(s) valid against Kubernetes $k8s_version (strict)"
