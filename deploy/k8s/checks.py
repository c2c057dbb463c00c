"""What the Kubernetes schemas cannot say about deploy/k8s, checked by validate.sh.

Usage: python3 checks.py --formula docs/memory.md --flags docs/configuration.md \
           docs/operations.md deploy/k8s/README.md -- MANIFEST...
   (--formula: the page holding the memory formula; --flags: the page holding the flag table, for
   --event-budget's default; then the pages that quote the manifests' requests and limits)

1. An init container's restartPolicy may only be "Always" (a native sidecar); the API server
   enforces it, the OpenAPI type is a bare string.
2. Resource figures cannot drift: the worst-case memory formula of docs/memory.md is the one
   source. Every ccgw-bridge container states, in a comment, the agents and watchers its
   request and limit are sized for; the terms, the total and the figure (rounded up to 16Mi) are
   recomputed here and must equal the container's resources. The quoting pages (the main docs'
   "Kubernetes" section, the k8s README) must quote the same requests and limits wherever they
   give them.
3. Availability of a pool (a Deployment of more than one replica whose bridge has
   --etcd-endpoints): a PodDisruptionBudget that selects its pods and allows one eviction, and a
   hard spread over nodes (topologySpreadConstraints on kubernetes.io/hostname with
   DoNotSchedule, or required pod anti-affinity on it).
4. Routing: a pod template with `subdomain: X` needs a headless Service X (clusterIP: None) in
   the same file selecting it, and an instance name equal to the pod name (the DNS label); a
   Service that reaches the bridge's API needs an API listener that is not loopback, secured by
   TLS and a token. Every Service's and PodDisruptionBudget's selector selects some pod template of
   its file (a typo would select nothing, which the API server accepts silently).
6. Push mode (--events=push): an https --callback-url the gateway can dial (not 0.0.0.0 or
   loopback; every $(VAR) in it an env var of the container, $(POD_IP) from status.podIP), the
   callback port declared, the certificate's key from a Secret, and a NetworkPolicy of the file
   selecting the pods that admits some source (the gateway) to the callback port. In a pool,
   the callback host is the pod's own: $(POD_IP), or the pod's DNS name
   $(X).{subdomain}.… with X the pod name and {subdomain} the pod's subdomain (a headless
   Service, checked by 4); a shared address (a Service) sends the gateway's callbacks to
   replicas that do not hold the agent.
5. A pooled bridge reaches etcd securely: https:// endpoints only (no `http://`), --etcd-ca-cert,
   a client certificate, and its key and the etcd user's password file mounted from Secrets.
"""

import argparse
import math
import re
import sys

import yaml

errors = []


def error(where, msg):
    errors.append(f"ERROR {where}: {msg}")


# ---- the formula -------------------------------------------------------------------------------

NUM = r"(\d+(?:\.\d+)?)"


def memory_formula(page, flags_doc):
    """(base MiB, KiB per agent, KiB per watcher, budget factor, default budget MiB): the formula
    from `page` (docs/memory.md), --event-budget's default from `flags_doc`
    (docs/configuration.md)."""
    text = open(page, encoding="utf-8").read()
    m = re.search(
        r"RSS ≤ " + NUM + r" MiB.*?\n\s*\+\s*" + NUM + r" KiB × signed-in agents.*?\n\s*\+\s*"
        + NUM + r" KiB × open watchers.*?\n\s*\+\s*" + NUM + r" × --event-budget",
        text,
    )
    if not m:
        error(page, "the memory formula (```text block starting `RSS ≤`) not found")
        return None
    flags_text = open(flags_doc, encoding="utf-8").read()
    d = re.search(r"\| `--event-budget` \| `CCGW_EVENT_BUDGET` \| `(\d+)MiB` \|", flags_text)
    if not d:
        error(flags_doc, "the default of --event-budget (configuration table, in MiB) not found")
        return None
    return tuple(float(x) for x in m.groups()) + (float(d.group(1)),)


def budget_mib(args, default):
    for a in args:
        if a.startswith("--event-budget="):
            v = a.split("=", 1)[1]
            units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
            for unit, scale in units.items():
                if v.endswith(unit):
                    return float(v[: -len(unit)]) * scale
            return float(v) / (1024 * 1024)
    return default


def mi(quantity):
    m = re.fullmatch(r"(\d+)Mi", str(quantity))
    return int(m.group(1)) if m else None


def check_sizing(where, container, comment_lines, formula):
    base, per_agent, per_watcher, factor, default_budget = formula
    budget = budget_mib(container.get("args") or [], default_budget)
    stated = None
    sized = {}
    for line in comment_lines:
        m = re.search(
            r"RSS <= " + NUM + r" MiB \+ " + NUM + r" KiB x agents \+ " + NUM
            + r" KiB x watchers \+ " + NUM + r" x --event-budget \(" + NUM + r" MiB\)",
            line,
        )
        if m:
            stated = tuple(float(x) for x in m.groups())
        m = re.search(
            r"(request|limit): ([\d,]+) agents, ([\d,]+) watchers -> (.+?) = " + NUM
            + r" MiB -> (\d+)Mi",
            line,
        )
        if m:
            kind, agents, watchers, terms, total, figure = m.groups()
            sized[kind] = (int(agents.replace(",", "")), int(watchers.replace(",", "")),
                           [float(t) for t in terms.split(" + ")], float(total), int(figure))
    if stated is None:
        error(where, "no comment `RSS <= … x --event-budget (… MiB)` stating the formula")
        return
    if stated != (base, per_agent, per_watcher, factor, budget):
        error(where, f"the formula in the comment {stated} differs from the memory formula "
                     f"{(base, per_agent, per_watcher, factor)} with --event-budget {budget} MiB")
    resources = container.get("resources") or {}
    actual = {
        "request": mi((resources.get("requests") or {}).get("memory")),
        "limit": mi((resources.get("limits") or {}).get("memory")),
    }
    for kind in ("request", "limit"):
        if kind not in sized:
            error(where, f"no comment `{kind}: N agents, M watchers -> … = X MiB -> NMi`")
            continue
        agents, watchers, terms, total, figure = sized[kind]
        want_terms = [base, agents * per_agent / 1024, watchers * per_watcher / 1024,
                      factor * budget]
        want_total = sum(want_terms)
        want_figure = math.ceil(want_total / 16) * 16
        if len(terms) != 4 or any(abs(a - b) > 0.05 + 1e-9 for a, b in zip(terms, want_terms)):
            error(where, f"{kind}: terms {terms}, the formula gives "
                         f"{[round(t, 1) for t in want_terms]}")
        if abs(total - want_total) > 0.05 + 1e-9:
            error(where, f"{kind}: total {total} MiB, the formula gives {want_total:.1f} MiB")
        if figure != want_figure:
            error(where, f"{kind}: {figure}Mi, the formula rounded up to 16Mi gives {want_figure}Mi")
        if actual[kind] != want_figure:
            error(where, f"resources: memory {kind} {actual[kind]}Mi, the comment derives "
                         f"{want_figure}Mi")
    return actual["request"], actual["limit"], (resources.get("requests") or {}).get("cpu")


def check_quoted_figures(readme, figures):
    """Every 'requests … NMi … limit … MMi' statement in `readme` quotes the manifests' figures."""
    text = re.sub(r"\s+", " ", open(readme, encoding="utf-8").read())
    found = 0
    for m in re.finditer(r"requests?\b[^.]{0,60}?(\d+)Mi\b[^.]{0,40}?limits?\b[^.]{0,30}?(\d+)Mi\b",
                         text):
        found += 1
        pair = (int(m.group(1)), int(m.group(2)))
        if pair not in {(r, l) for r, l, _ in figures}:
            error(readme, f"quotes memory request/limit {pair[0]}Mi/{pair[1]}Mi; the manifests "
                          f"have {sorted({(r, l) for r, l, _ in figures})}: {m.group(0)!r}")
        cpu = re.search(r"(\d+)m\b", m.group(0))
        if cpu and f"{cpu.group(1)}m" not in {c for _, _, c in figures}:
            error(readme, f"quotes CPU request {cpu.group(1)}m; the manifests have "
                          f"{sorted({c for _, _, c in figures})}")
    if not found:
        error(readme, "states no bridge memory request and limit (`requests … NMi, limit … NMi`)")


# ---- manifests ---------------------------------------------------------------------------------

def pod_template(doc):
    spec = doc.get("spec") or {}
    tmpl = spec.get("template")
    if tmpl is not None:
        return (tmpl.get("metadata") or {}).get("labels") or {}, tmpl.get("spec") or {}
    if doc.get("kind") == "Pod":
        return (doc.get("metadata") or {}).get("labels") or {}, spec
    return None, None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def flag(args, name):
    for a in args:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def bridge_containers(pod):
    for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        if "ccgw-bridge" in str(c.get("image", "")):
            yield c


def comments_of(raw_lines, container_name):
    """The comment lines of the container block named `container_name`, in file order."""
    out, inside, indent = [], False, None
    for line in raw_lines:
        m = re.match(r"(\s*)- name: (\S+)\s*$", line)
        if m and (indent is None or len(m.group(1)) <= indent):
            inside = m.group(2) == container_name
            indent = len(m.group(1)) if inside else None
            continue
        if inside and line.strip().startswith("#"):
            out.append(line.strip())
    return out


def check_file(name, formula, figures):
    raw = open(name, encoding="utf-8").read()
    docs = [d for d in yaml.safe_load_all(raw) if isinstance(d, dict)]
    pods = []
    for doc in docs:
        kind = doc.get("kind")
        where = f"{name}: {kind}/{(doc.get('metadata') or {}).get('name')}"
        labels, pod = pod_template(doc)
        if pod is None:
            continue
        pods.append((doc, labels, pod, where))
        for c in pod.get("initContainers") or []:
            policy = c.get("restartPolicy")
            if policy is not None and policy != "Always":
                error(where, f"initContainers[{c.get('name')}].restartPolicy {policy!r}: only "
                             f"'Always' (native sidecar) is allowed")
        for c in bridge_containers(pod):
            if formula:
                got = check_sizing(f"{where} container {c.get('name')}", c,
                                   comments_of(raw.splitlines(), c.get("name")), formula)
                if got:
                    figures.append(got)

    services = [d for d in docs if d.get("kind") == "Service"]
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    for d in services + pdbs:
        where = f"{name}: {d['kind']}/{d['metadata']['name']}"
        sel = (d.get("spec") or {}).get("selector") or {}
        sel = sel.get("matchLabels", sel) if d["kind"] == "PodDisruptionBudget" else sel
        if not any(selects(sel, labels) for _, labels, _, _ in pods):
            error(where, f"selector {sel} selects no pod template of {name}")

    for doc, labels, pod, where in pods:
        replicas = (doc.get("spec") or {}).get("replicas", 1)
        for c in bridge_containers(pod):
            args = c.get("args") or []
            env = {e.get("name"): e for e in c.get("env") or []}
            pooled = flag(args, "--etcd-endpoints") is not None or "CCGW_ETCD_ENDPOINTS" in env
            if pooled and replicas >= 2:
                check_availability(name, where, labels, pod, replicas, pdbs)
            if pooled:
                check_etcd_security(where, c, pod, env)
            if flag(args, "--events") == "push" or \
                    (env.get("CCGW_EVENTS") or {}).get("value") == "push":
                check_push(where, c, pod)
                check_callback_ingress(where, c, labels, docs)
                if pooled:
                    check_per_pod_callback(where, c, pod, env)
            listen = flag(args, "--listen") or "127.0.0.1:50051"
            api_port = int(listen.rsplit(":", 1)[1])
            port_names = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for svc in services:
                if not selects((svc.get("spec") or {}).get("selector") or {}, labels):
                    continue
                for p in (svc.get("spec") or {}).get("ports") or []:
                    target = p.get("targetPort", p.get("port"))
                    target = port_names.get(target, target)
                    if isinstance(target, str):
                        error(f"{name}: Service/{svc['metadata']['name']}",
                              f"targetPort {target!r} is no port name of container {c['name']}")
                    elif target == api_port:
                        if listen.startswith(("127.", "localhost", "[::1]")):
                            error(where, f"Service/{svc['metadata']['name']} reaches the API "
                                         f"port, but --listen is loopback ({listen})")
                        for f in ("--tls-cert", "--auth-token-file"):
                            if flag(args, f) is None:
                                error(where, f"the API is reachable through "
                                             f"Service/{svc['metadata']['name']} without {f}")
            sub = pod.get("subdomain")
            if sub:
                inst = env.get("CCGW_INSTANCE_NAME") or {}
                field = ((inst.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                if field != "metadata.name" or pod.get("hostname"):
                    error(where, "with `subdomain`, the instance name callers are told must be "
                                 "the pod's DNS label: CCGW_INSTANCE_NAME from metadata.name and "
                                 "no `hostname`")
        sub = pod.get("subdomain")
        if sub:
            svc = next((s for s in services if s["metadata"]["name"] == sub), None)
            if svc is None:
                error(where, f"subdomain {sub!r}: no Service of that name in {name}, so the pods "
                             f"get no {{pod}}.{sub} DNS record")
            else:
                spec = svc.get("spec") or {}
                if spec.get("clusterIP") != "None":
                    error(where, f"Service/{sub} must be headless (clusterIP: None) for "
                                 f"per-pod DNS records")
                if not selects(spec.get("selector") or {}, labels):
                    error(where, f"Service/{sub} does not select these pods")


def check_availability(name, where, labels, pod, replicas, pdbs):
    pdb = next((p for p in pdbs
                if selects(((p.get("spec") or {}).get("selector") or {}).get("matchLabels"),
                           labels)), None)
    if pdb is None:
        error(where, f"{replicas} pooled replicas without a PodDisruptionBudget in {name}")
    else:
        spec = pdb["spec"]
        if "minAvailable" in spec and not (isinstance(spec["minAvailable"], int)
                                           and spec["minAvailable"] < replicas):
            error(where, f"PodDisruptionBudget minAvailable {spec['minAvailable']!r} allows no "
                         f"eviction of {replicas} replicas: node drains would stall")
        if "maxUnavailable" in spec and spec["maxUnavailable"] in (0, "0%"):
            error(where, "PodDisruptionBudget maxUnavailable 0: node drains would stall")
    spread = any(
        t.get("topologyKey") == "kubernetes.io/hostname"
        and t.get("whenUnsatisfiable") == "DoNotSchedule"
        and selects((t.get("labelSelector") or {}).get("matchLabels"), labels)
        for t in pod.get("topologySpreadConstraints") or []
    )
    anti = any(
        t.get("topologyKey") == "kubernetes.io/hostname"
        and selects((t.get("labelSelector") or {}).get("matchLabels"), labels)
        for t in (((pod.get("affinity") or {}).get("podAntiAffinity") or {})
                  .get("requiredDuringSchedulingIgnoredDuringExecution") or [])
    )
    if not (spread or anti):
        error(where, f"{replicas} pooled replicas may share a node: add topologySpreadConstraints "
                     f"on kubernetes.io/hostname (DoNotSchedule) or required pod anti-affinity "
                     f"selecting these pods")


def secret_mounted(path, container, pod):
    """Whether file `path` lies under a volumeMount of `container` whose volume is a Secret."""
    secrets = {v.get("name") for v in pod.get("volumes") or [] if "secret" in v}
    return any(m.get("name") in secrets
               and path.startswith(m.get("mountPath", "").rstrip("/") + "/")
               for m in container.get("volumeMounts") or [])


def check_etcd_security(where, container, pod, env):
    """A pool's etcd holds who owns each agent: plaintext or unauthenticated, any pod could
    rewrite owners/. TLS with a client certificate, its key and the user's password from
    Secrets (docs/running-replicas.md, "Securing the pool's etcd")."""
    args = container.get("args") or []
    endpoints = flag(args, "--etcd-endpoints") or \
        (env.get("CCGW_ETCD_ENDPOINTS") or {}).get("value") or ""
    for url in filter(None, endpoints.split(",")):
        if not url.startswith("https://"):
            error(where, f"uses http:// for etcd ({url}): any pod could rewrite the pool's "
                         f"owners/; use https:// with a client certificate")
    if flag(args, "--etcd-ca-cert") is None:
        error(where, "no --etcd-ca-cert: etcd must be reached over TLS")
    if flag(args, "--etcd-client-cert") is None or flag(args, "--etcd-client-key") is None:
        error(where, "no client certificate for etcd (--etcd-client-cert and "
                     "--etcd-client-key): run etcd with --client-cert-auth")
    for f in ("--etcd-client-key", "--etcd-password-file"):
        path = flag(args, f)
        if path is not None and not secret_mounted(path, container, pod):
            error(where, f"{f}={path} is not mounted from a Secret")


def check_push(where, container, pod):
    """Push mode (docs/events-poll-or-push.md): the gateway must reach the callback server, so
    --callback-url is https on an address the gateway can dial (not 0.0.0.0, not loopback), the
    callback port is a declared container port, and the certificate's key comes from a Secret."""
    args = container.get("args") or []
    url = flag(args, "--callback-url")
    if url is None:
        error(where, "--events=push without --callback-url")
    elif not url.startswith("https://"):
        error(where, f"--callback-url {url}: the gateway calls back over https only")
    elif re.match(r"https://(0\.0\.0\.0|127\.|localhost|\[::1?\])", url):
        error(where, f"--callback-url {url}: no gateway can call that address; use the pod IP "
                     f"($(POD_IP) from status.podIP) or a name the gateway resolves")
    listen = flag(args, "--callback-listen") or "0.0.0.0:9443"
    port = int(listen.rsplit(":", 1)[1])
    if listen.startswith(("127.", "localhost", "[::1]")):
        error(where, f"--callback-listen {listen} is loopback: the gateway cannot reach it")
    if port not in {p.get("containerPort") for p in container.get("ports") or []}:
        error(where, f"the callback port {port} (--callback-listen) is no containerPort")
    for f in ("--callback-cert", "--callback-key"):
        path = flag(args, f)
        if path is None:
            error(where, f"--events=push without {f}")
        elif f == "--callback-key" and not secret_mounted(path, container, pod):
            error(where, f"{f}={path} is not mounted from a Secret")
    env = {e.get("name"): e for e in container.get("env") or []}
    if url and "$(POD_IP)" in url:
        field = (((env.get("POD_IP") or {}).get("valueFrom") or {}).get("fieldRef") or {})
        if field.get("fieldPath") != "status.podIP":
            error(where, "--callback-url uses $(POD_IP), but POD_IP is not status.podIP")
    for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", url or ""):
        if var not in env:
            error(where, f"--callback-url uses $({var}), which is no env var of the container: "
                         f"the kubelet passes it on unexpanded")


def field_path(env, var):
    """The downward-API field env var `var` comes from (None for anything else)."""
    return (((env.get(var) or {}).get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")


def check_per_pod_callback(where, container, pod, env):
    """A pooled bridge signs its agents in with callBackUri = <--callback-url>/<agent>: the
    gateway must reach exactly this replica there, so the host is the pod's own address."""
    url = flag(container.get("args") or [], "--callback-url") or ""
    host = re.sub(r"^https://", "", url).split("/", 1)[0].rsplit(":", 1)[0]
    if host == "$(POD_IP)":
        return
    m = re.match(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)\.([a-z0-9-]+)\.", host)
    if m and field_path(env, m.group(1)) == "metadata.name" and m.group(2) == pod.get("subdomain"):
        return
    error(where, f"--callback-url host {host!r} is not this pod's own address: in a pool each "
                 f"replica must be called back itself ($(POD_IP) from status.podIP, or "
                 f"$(<pod name>).<the pod's subdomain>.…); a shared address sends callbacks to "
                 f"replicas that do not hold the agent")


def check_callback_ingress(where, container, labels, docs):
    """The gateway opens connections to the callback port: some NetworkPolicy of the file that
    selects the pods must admit a source to it (by number or by the container port's name)."""
    listen = flag(container.get("args") or [], "--callback-listen") or "0.0.0.0:9443"
    port = int(listen.rsplit(":", 1)[1])
    names = {p.get("name") for p in container.get("ports") or [] if p.get("containerPort") == port}
    for np in (d for d in docs if d.get("kind") == "NetworkPolicy"):
        spec = np.get("spec") or {}
        if not selects((spec.get("podSelector") or {}).get("matchLabels"), labels):
            continue
        for rule in spec.get("ingress") or []:
            if rule.get("from") and any(p.get("port") == port or p.get("port") in names
                                        for p in rule.get("ports") or []):
                return
    error(where, f"no NetworkPolicy of the file admits the gateway to the callback port {port}: "
                 f"add one selecting these pods with an ingress rule from the gateway's network")


def main(argv):
    sep = argv.index("--")
    opts = argparse.ArgumentParser(prog="checks.py")
    opts.add_argument("--formula", required=True, help="the page holding the memory formula")
    opts.add_argument("--flags", required=True, help="the page holding the flag table")
    opts.add_argument("readmes", nargs="*", help="pages quoting the requests and limits")
    args = opts.parse_args(argv[:sep])
    readmes, manifests = args.readmes, argv[sep + 1:]
    formula = memory_formula(args.formula, args.flags)
    figures = []
    for m in manifests:
        check_file(m, formula, figures)
    if figures:
        for r in readmes:
            check_quoted_figures(r, figures)
    for e in errors:
        print(e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
