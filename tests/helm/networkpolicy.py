"""Whether rendered NetworkPolicies admit a connection, by the rules of networking.k8s.io/v1:
a pod selected by any Ingress policy takes only what one of their rules allows; a rule
allows a peer when one of its `from` entries matches (namespaceSelector and podSelector
together: both must), on one of its ports; an absent `from` or `ports` matches all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: str = "inference"
    namespace_labels: dict[str, str] = field(default_factory=dict)


def _selects(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: {} selects everything; matchLabels and In/NotIn/Exists expressions."""
    if selector is None:
        return False
    if set(selector) - {"matchLabels", "matchExpressions"}:
        raise ValueError(f"not a LabelSelector: {selector}")
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        value, op = labels.get(expression["key"]), expression["operator"]
        if op == "In" and value not in expression["values"]:
            return False
        if op == "NotIn" and value in expression["values"]:
            return False
        if op == "Exists" and value is None:
            return False
    return True


def _peer_matches(peer: Manifest, source: Pod, policy_namespace: str) -> bool:
    namespace_ok = (_selects(peer["namespaceSelector"], source.namespace_labels)
                    if "namespaceSelector" in peer else source.namespace == policy_namespace)
    pod_ok = _selects(peer["podSelector"], source.labels) if "podSelector" in peer else True
    return namespace_ok and pod_ok


def admits(policies: list[Manifest], source: Pod, target: Pod, port: int) -> bool:
    """Whether ``source`` may open TCP ``port`` on ``target``."""
    applying = [p for p in policies if p["metadata"].get("namespace", target.namespace)
                == target.namespace and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and _selects(p["spec"]["podSelector"], target.labels)]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and not any(p.get("port") == port for p in ports):
                continue
            peers = rule.get("from")
            if peers is None or any(_peer_matches(p, source, target.namespace) for p in peers):
                return True
    return False
