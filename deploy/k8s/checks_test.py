"""Self-test of checks.py (validate.sh runs it): the real files pass, and each defect the checks
exist for, planted in a copy, is reported.

Usage: python3 checks_test.py   (from anywhere; needs PyYAML, which validate.sh's venv has)
"""

import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MANIFESTS = sorted(p.name for p in HERE.glob("*.yaml"))
# The pages checks.py reads besides the manifests, copied by name (the k8s README is README.md).
PAGES = {"README.md": HERE / "README.md", "memory.md": ROOT / "docs/memory.md",
         "configuration.md": ROOT / "docs/configuration.md",
         "operations.md": ROOT / "docs/operations.md"}

# (file, text to replace, replacement, text the report must contain)
CASES = [
    ("pod-sidecar-push.yaml", "--callback-url=https://$(POD_IP)", "--callback-url=http://$(POD_IP)",
     "the gateway calls back over https only"),
    ("pod-sidecar-push.yaml", "--callback-url=https://$(POD_IP)", "--callback-url=https://0.0.0.0",
     "no gateway can call that address"),
    ("pod-sidecar-push.yaml", "              containerPort: 9443", "              containerPort: 9444",
     "the callback port 9443 (--callback-listen) is no containerPort"),
    ("pod-sidecar-push.yaml", "fieldPath: status.podIP", "fieldPath: status.hostIP",
     "POD_IP is not status.podIP"),
    ("pod-sidecar-push.yaml",
     "        - name: ccgw-callback-tls\n          secret:\n            secretName: ccgw-callback-tls\n",
     "        - name: ccgw-callback-tls\n          configMap:\n            name: ccgw-callback-tls\n",
     "--callback-key=/etc/ccgw/callback-tls/tls.key is not mounted from a Secret"),
    ("pod-sidecar-push.yaml", "        - port: callback\n", "        - port: 9444\n",
     "no NetworkPolicy of the file admits the gateway to the callback port 9443"),
    ("pool-replicas-push.yaml", "--callback-url=https://$(POD_IP):9443",
     "--callback-url=https://ivr-app-pool-push.default.svc:9443",
     "is not this pod's own address"),
    ("pool-replicas-push.yaml", "fieldPath: status.podIP", "fieldPath: status.hostIP",
     "POD_IP is not status.podIP"),
    ("pool-replicas-push.yaml", "      ports:\n        - port: callback\n",
     "      ports:\n        - port: admin\n", "no NetworkPolicy of the file admits the gateway"),
    ("pool-replicas-push.yaml",
     "        - name: ccgw-callback-tls\n          secret:\n            secretName: ccgw-callback-tls\n",
     "        - name: ccgw-callback-tls\n          configMap:\n            name: ccgw-callback-tls\n",
     "--callback-key=/etc/ccgw/callback-tls/tls.key is not mounted from a Secret"),
    ("pool-routed-push.yaml", "https://$(CCGW_INSTANCE_NAME).ccgw-pool-push.",
     "https://$(CCGW_INSTANCE_NAME).ccgw-pool-push-any.", "is not this pod's own address"),
    ("pool-routed-push.yaml", "--callback-url=https://$(CCGW_INSTANCE_NAME).",
     "--callback-url=https://ccgw-pool-push-any.", "is not this pod's own address"),
    ("pool-routed-push.yaml",
     "            - name: POD_NAMESPACE\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.namespace\n",
     "", "$(POD_NAMESPACE), which is no env var of the container"),
    ("pool-routed-push.yaml", "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: ccgw-pool-push\n",
     "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: ccgw-pool\n",
     "no NetworkPolicy of the file admits the gateway"),
    ("pool-replicas.yaml", "              memory: 48Mi", "              memory: 32Mi",
     "resources: memory request 32Mi, the comment derives 48Mi"),
    ("pod-sidecar.yaml", "84.8 MiB -> 96Mi", "84.8 MiB -> 128Mi",
     "limit: 128Mi, the formula rounded up to 16Mi gives 96Mi"),
    ("pod-sidecar.yaml", "-> 12 + 2.6 + 7.8 + 24 = 46.4 MiB", "-> 12 + 2.6 + 7.8 + 24 = 32 MiB",
     "request: total 32.0 MiB, the formula gives 46.4 MiB"),
    ("pool-routed.yaml", "x watchers + 1.5 x", "x watchers + 1 x",
     "differs from the memory formula"),
    ("pool-replicas.yaml", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgetX",
     "2 pooled replicas without a PodDisruptionBudget"),
    ("pool-replicas.yaml", "  maxUnavailable: 1\n  selector:", "  minAvailable: 2\n  selector:",
     "allows no eviction of 2 replicas"),
    ("pool-replicas.yaml", "whenUnsatisfiable: DoNotSchedule", "whenUnsatisfiable: ScheduleAnyway",
     "may share a node"),
    ("pool-routed.yaml", "  name: ccgw-pool\n  labels:\n    app.kubernetes.io/name: ccgw-pool\nspec:\n  clusterIP",
     "  name: ccgw-pool-dns\n  labels:\n    app.kubernetes.io/name: ccgw-pool\nspec:\n  clusterIP",
     "subdomain 'ccgw-pool': no Service of that name"),
    ("pool-routed.yaml", "  clusterIP: None\n", "", "must be headless"),
    ("pool-routed.yaml", "--listen=0.0.0.0:50051", "--listen=127.0.0.1:50051", "--listen is loopback"),
    ("pool-routed.yaml", "            - --auth-token-file=/etc/ccgw/token/token\n", "",
     "without --auth-token-file"),
    ("pool-routed.yaml", "fieldPath: metadata.name", "fieldPath: spec.nodeName",
     "CCGW_INSTANCE_NAME from metadata.name"),
    ("pool-routed.yaml", "      targetPort: grpc\n      protocol: TCP\n---\n# The first",
     "      targetPort: grcp\n      protocol: TCP\n---\n# The first", "targetPort 'grcp'"),
    ("pool-routed.yaml", "  selector:\n    app.kubernetes.io/name: ccgw-pool\n  ports",
     "  selector:\n    app.kubernetes.io/name: ccgw-poo\n  ports", "selects no pod template"),
    ("pod-sidecar.yaml", "          restartPolicy: Always", "          restartPolicy: OnFailure",
     "only 'Always' (native sidecar) is allowed"),
    ("README.md", "requests 25m CPU / 48Mi, limit 96Mi", "requests 25m CPU / 32Mi, limit 128Mi",
     "quotes memory request/limit 32Mi/128Mi"),
    ("operations.md", "`memory: 48Mi`, limit `memory: 96Mi`", "`memory: 32Mi`, limit `memory: 96Mi`",
     "quotes memory request/limit 32Mi/96Mi"),
    ("memory.md", "+ 42 KiB × signed-in agents", "+ 40 KiB × signed-in agents",
     "differs from the memory formula"),
    ("configuration.md", "| `CCGW_EVENT_BUDGET` | `16MiB` |", "| `CCGW_EVENT_BUDGET` | `16 MiB` |",
     "the default of --event-budget"),
    ("pool-replicas.yaml", "--etcd-endpoints=https://", "--etcd-endpoints=http://",
     "uses http:// for etcd"),
    ("pool-routed.yaml", "            - --etcd-client-key=/etc/ccgw/etcd/tls.key\n", "",
     "no client certificate for etcd"),
    ("pool-replicas.yaml", "            - --etcd-ca-cert=/etc/ccgw/etcd/ca.crt\n", "",
     "no --etcd-ca-cert"),
    ("pool-replicas.yaml", "        - name: ccgw-etcd-user\n          secret:\n            secretName: ccgw-etcd-user\n",
     "        - name: ccgw-etcd-user\n          configMap:\n            name: ccgw-etcd-user\n",
     "--etcd-password-file=/etc/ccgw/etcd-user/password is not mounted from a Secret"),
]


def run(dirpath):
    files = [str(dirpath / m) for m in MANIFESTS]
    out = subprocess.run(
        [sys.executable, str(HERE / "checks.py"), "--formula", str(dirpath / "memory.md"),
         "--flags", str(dirpath / "configuration.md"), str(dirpath / "operations.md"),
         str(dirpath / "README.md"), "--", *files],
        capture_output=True, text=True,
    )
    return out.returncode, out.stdout + out.stderr


def report_planted(tag, originals, cases, run):
    """Writes `originals` ({name: text}) to a temporary folder, checks with `run(folder)` ->
    (returncode, report) that they pass, then plants each case's defect in a copy and checks
    that the report names it. Returns the exit status; prints a line per failure."""
    failures = 0
    with tempfile.TemporaryDirectory(prefix="ccgw-checks-") as tmp:
        tmp = pathlib.Path(tmp)
        for n, t in originals.items():
            (tmp / n).write_text(t)
        rc, out = run(tmp)
        if rc != 0:
            print(f"{tag}: the real files fail:\n{out}")
            return 1
        for file, old, new, expect in cases:
            text = originals[file]
            if old not in text:
                print(f"{tag}: FAIL {file}: {old!r} not found (update the case)")
                failures += 1
                continue
            (tmp / file).write_text(text.replace(old, new, 1))
            rc, out = run(tmp)
            (tmp / file).write_text(text)
            if rc == 0 or expect not in out:
                print(f"{tag}: FAIL {file}: {old!r} -> {new!r} not reported as {expect!r}:\n{out}")
                failures += 1
    print(f"{tag}: {len(cases) - failures}/{len(cases)} planted defects reported")
    return 1 if failures else 0


def main():
    originals = {n: (HERE / n).read_text() for n in MANIFESTS}
    originals.update({n: p.read_text() for n, p in PAGES.items()})
    return report_planted("checks_test", originals, CASES, run)


if __name__ == "__main__":
    sys.exit(main())
