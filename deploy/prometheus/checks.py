"""What promtool and the Kubernetes schemas cannot say about deploy/prometheus, checked by
deploy/k8s/validate.sh.

Usage: python3 checks.py --rules ccgw-bridge.rules.yml --docs docs/metrics-and-alerts.md \
           --pods deploy/k8s/*.yaml -- ccgw-bridge.podmonitor.yaml ccgw-bridge.prometheusrule.yaml

1. The prometheus-operator objects use only fields of the monitoring.coreos.com/v1 API (a
   misspelled field is silently dropped by the API server's pruning: a PodMonitor without its
   relabeling would scrape under another job name, and the target alerts would never fire). The
   fields allowed are the API's, for the parts these objects use.
2. The PrometheusRule's groups equal the rules file's, so the promtool-tested rules are the
   deployed ones.
3. The PodMonitor selects every pod template of deploy/k8s that runs a bridge, on a port of the
   bridge container with the endpoint's name, and sets the job label the target alerts select.
4. Every alert has a runbook_url pointing at a section of docs/metrics-and-alerts.md that exists.
"""

import argparse
import re
import sys

import yaml

errors = []


def error(where, msg):
    errors.append(f"ERROR {where}: {msg}")


META = {"name": None, "namespace": None, "labels": "map", "annotations": "map"}
RELABEL = {"sourceLabels": None, "separator": None, "targetLabel": None, "regex": None,
           "modulus": None, "replacement": None, "action": None}
SELECTOR = {"matchLabels": "map", "matchExpressions": None}
ENDPOINT = {"port": None, "portNumber": None, "targetPort": None, "path": None, "scheme": None,
            "params": "map", "interval": None, "scrapeTimeout": None, "honorLabels": None,
            "honorTimestamps": None, "trackTimestampsStaleness": None, "filterRunning": None,
            "followRedirects": None, "enableHttp2": None, "proxyUrl": None,
            "tlsConfig": "map", "authorization": "map", "basicAuth": "map", "oauth2": "map",
            "bearerTokenSecret": "map", "relabelings": [RELABEL],
            "metricRelabelings": [RELABEL]}
RULE = {"alert": None, "record": None, "expr": None, "for": None, "keep_firing_for": None,
        "labels": "map", "annotations": "map"}
GROUP = {"name": None, "interval": None, "rules": [RULE], "limit": None, "query_offset": None,
         "partial_response_strategy": None, "labels": "map"}
SCHEMAS = {
    "PodMonitor": {"apiVersion": None, "kind": None, "metadata": META, "spec": {
        "jobLabel": None, "podTargetLabels": None, "selector": SELECTOR,
        "namespaceSelector": {"any": None, "matchNames": None}, "sampleLimit": None,
        "targetLimit": None, "labelLimit": None, "labelNameLengthLimit": None,
        "labelValueLengthLimit": None, "keepDroppedTargets": None, "attachMetadata": "map",
        "scrapeClass": None, "scrapeProtocols": None, "bodySizeLimit": None,
        "podMetricsEndpoints": [ENDPOINT]}},
    "PrometheusRule": {"apiVersion": None, "kind": None, "metadata": META,
                       "spec": {"groups": [GROUP]}},
}


def check_fields(where, value, schema, path=""):
    """Every key of `value` is one `schema` names (None: any value; "map": any keys)."""
    if schema is None or schema == "map":
        return
    if isinstance(schema, list):
        for i, item in enumerate(value if isinstance(value, list) else []):
            check_fields(where, item, schema[0], f"{path}[{i}]")
        return
    if not isinstance(value, dict):
        error(where, f"{path or '.'}: expected an object")
        return
    for key, item in value.items():
        if key not in schema:
            error(where, f"{path}.{key}: no such field in monitoring.coreos.com/v1")
        else:
            check_fields(where, item, schema[key], f"{path}.{key}")


def slug(heading):
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def bridge_pods(manifests):
    """(where, pod labels, bridge container) of every pod template running ccgw-bridge."""
    for name in manifests:
        for doc in yaml.safe_load_all(open(name, encoding="utf-8")):
            if not isinstance(doc, dict):
                continue
            tmpl = (doc.get("spec") or {}).get("template")
            if tmpl is None:
                continue
            spec = tmpl.get("spec") or {}
            for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
                if "ccgw-bridge" in str(c.get("image", "")):
                    yield (f"{name}: {doc.get('kind')}/{doc['metadata']['name']}",
                           (tmpl.get("metadata") or {}).get("labels") or {}, c)


def check_pod_monitor(where, pm, pods):
    spec = pm.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    endpoints = spec.get("podMetricsEndpoints") or []
    if not any(r.get("targetLabel") == "job" and r.get("replacement") == "ccgw-bridge"
               for e in endpoints for r in e.get("relabelings") or []):
        error(where, "no relabeling sets job to ccgw-bridge, the job the target alerts select")
    for pod_where, labels, c in pods:
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            error(where, f"selector {selector} does not select {pod_where}")
            continue
        ports = {p.get("name") for p in c.get("ports") or []}
        for e in endpoints:
            if e.get("port") not in ports:
                error(where, f"port {e.get('port')!r} is no port name of {pod_where}'s "
                             f"{c.get('name')} container")


def check_runbooks(rules_file, groups, docs):
    anchors = {slug(m.group(1)) for m in
               re.finditer(r"^#+ (.+)$", open(docs, encoding="utf-8").read(), re.M)}
    page = docs.rsplit("/", 1)[-1]
    for g in groups:
        for r in g.get("rules") or []:
            if "alert" not in r:
                continue
            url = (r.get("annotations") or {}).get("runbook_url", "")
            m = re.search(re.escape(page) + r"#([\w-]+)$", url)
            if not m:
                error(rules_file, f"{r['alert']}: runbook_url {url!r} points at no section of "
                                  f"{page}")
            elif m.group(1) not in anchors:
                error(rules_file, f"{r['alert']}: runbook_url anchor #{m.group(1)} is no "
                                  f"heading of {docs}")


def main(argv):
    sep = argv.index("--")
    opts = argparse.ArgumentParser(prog="checks.py")
    opts.add_argument("--rules", required=True)
    opts.add_argument("--docs", required=True)
    opts.add_argument("--pods", nargs="+", required=True)
    args = opts.parse_args(argv[:sep])
    groups = yaml.safe_load(open(args.rules, encoding="utf-8"))["groups"]
    check_runbooks(args.rules, groups, args.docs)
    pods = list(bridge_pods(args.pods))
    kinds = set()
    for name in argv[sep + 1:]:
        for doc in yaml.safe_load_all(open(name, encoding="utf-8")):
            if not isinstance(doc, dict):
                continue
            kind = doc.get("kind")
            where = f"{name}: {kind}/{(doc.get('metadata') or {}).get('name')}"
            if kind not in SCHEMAS or doc.get("apiVersion") != "monitoring.coreos.com/v1":
                error(where, "not a monitoring.coreos.com/v1 PodMonitor or PrometheusRule")
                continue
            kinds.add(kind)
            check_fields(where, doc, SCHEMAS[kind])
            if kind == "PodMonitor":
                check_pod_monitor(where, doc, pods)
            elif (doc.get("spec") or {}).get("groups") != groups:
                error(where, f"spec.groups differ from the groups of {args.rules}")
    for kind in sorted(set(SCHEMAS) - kinds):
        error("deploy/prometheus", f"no {kind}")
    for e in errors:
        print(e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
