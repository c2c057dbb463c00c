"""Self-test of checks.py (deploy/k8s/validate.sh runs it): the real files pass, and each defect
the checks exist for, planted in a copy, is reported.

Usage: python3 checks_test.py   (from anywhere; needs PyYAML, which validate.sh's venv has)
"""

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "deploy/k8s"))
from checks_test import report_planted  # noqa: E402  (deploy/k8s/checks_test.py)
FILES = {"rules.yml": HERE / "ccgw-bridge.rules.yml",
         "metrics-and-alerts.md": ROOT / "docs/metrics-and-alerts.md",
         "podmonitor.yaml": HERE / "ccgw-bridge.podmonitor.yaml",
         "prometheusrule.yaml": HERE / "ccgw-bridge.prometheusrule.yaml",
         "pool-replicas.yaml": ROOT / "deploy/k8s/pool-replicas.yaml",
         "pod-sidecar.yaml": ROOT / "deploy/k8s/pod-sidecar.yaml"}

# (file, text to replace, replacement, text the report must contain)
CASES = [
    ("podmonitor.yaml", "  podMetricsEndpoints:", "  podMetricEndpoints:",
     ".spec.podMetricEndpoints: no such field"),
    ("podmonitor.yaml", "        - targetLabel: job", "        - targetlabel: job",
     "relabelings[0].targetlabel: no such field"),
    ("podmonitor.yaml", "replacement: ccgw-bridge", "replacement: ccgw",
     "no relabeling sets job to ccgw-bridge"),
    ("podmonitor.yaml", "    - port: admin", "    - port: metrics",
     "port 'metrics' is no port name"),
    ("pod-sidecar.yaml", '        ccgw-bridge/scrape: "true"\n', "",
     "does not select"),
    ("prometheusrule.yaml", "for: 5m", "for: 6m", "spec.groups differ from the groups"),
    ("prometheusrule.yaml", "      rules:", "      rulez:", ".spec.groups[0].rulez: no such field"),
    ("rules.yml", "metrics-and-alerts.md#ccgwbridgedown", "metrics-and-alerts.md#ccgw-bridge-down",
     "anchor #ccgw-bridge-down is no heading"),
    ("metrics-and-alerts.md", "#### CcgwPoolTakeOvers", "#### Pool take-overs",
     "anchor #ccgwpooltakeovers is no heading"),
]


def run(d):
    out = subprocess.run(
        [sys.executable, str(HERE / "checks.py"), "--rules", str(d / "rules.yml"),
         "--docs", str(d / "metrics-and-alerts.md"), "--pods", str(d / "pool-replicas.yaml"),
         str(d / "pod-sidecar.yaml"), "--", str(d / "podmonitor.yaml"),
         str(d / "prometheusrule.yaml")],
        capture_output=True, text=True,
    )
    return out.returncode, out.stdout + out.stderr


def main():
    originals = {n: p.read_text() for n, p in FILES.items()}
    return report_planted("prometheus checks_test", originals, CASES, run)


if __name__ == "__main__":
    sys.exit(main())
