"""What Grafana needs of deploy/grafana/ccgw-bridge.json, checked offline by deploy/k8s/validate.sh
(that every query returns data is tests/pool/dashboard.rs's job, against a real Prometheus).

Usage: python3 checks.py ccgw-bridge.json

Valid JSON; the `datasource` (type datasource, prometheus) and `instance` template variables;
every panel but a row queries `${datasource}` and has at least one target with an `expr`, each
with its own refId; panel ids are unique.
"""

import json
import sys


def check(path):
    errors = []
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except ValueError as e:
        return [f"ERROR {path}: not JSON: {e}"]
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append(f"ERROR {path}: no `datasource` variable of Prometheus data sources")
    if "instance" not in variables:
        errors.append(f"ERROR {path}: no `instance` variable")
    ids = set()
    for panel in dash.get("panels", []):
        where = f"{path}: panel {panel.get('title')!r}"
        if panel.get("id") in ids:
            errors.append(f"ERROR {where}: id {panel.get('id')} twice")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            errors.append(f"ERROR {where}: datasource is not ${{datasource}}")
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"ERROR {where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            errors.append(f"ERROR {where}: refIds {refs} not unique")
        for t in targets:
            if not (t.get("expr") or "").strip():
                errors.append(f"ERROR {where}: target {t.get('refId')} has no expr")
    return errors


if __name__ == "__main__":
    problems = [e for p in sys.argv[1:] for e in check(p)]
    print("\n".join(problems) if problems else f"grafana: {len(sys.argv) - 1} dashboard(s) valid")
    sys.exit(1 if problems else 0)
