"""The Kubernetes Pod Security Standards, as checks over one pod spec.

Check names are those of the Pod Security admission controller (k8s.io/pod-security-admission
policy): what a namespace labelled pod-security.kubernetes.io/enforce=<level> refuses.
"""

from __future__ import annotations

from typing import Any

PodSpec = dict[str, Any]

BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL",
                         "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID",
                         "SYS_CHROOT"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}


def containers(pod: PodSpec) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []),
            *pod.get("ephemeralContainers", [])]


def _context(container: dict[str, Any]) -> dict[str, Any]:
    return container.get("securityContext") or {}


def baseline_violations(pod: PodSpec) -> list[str]:
    found = []
    pod_context = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"hostNamespaces: {field}")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            found.append(f"hostPathVolumes: {volume['name']}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"sysctls: {sysctl['name']}")
    contexts = [pod_context] + [_context(c) for c in containers(pod)]
    if any((ctx.get("seccompProfile") or {}).get("type") == "Unconfined" for ctx in contexts):
        found.append("seccompProfile_baseline: Unconfined")
    for container in containers(pod):
        name, ctx = container["name"], _context(container)
        if ctx.get("privileged"):
            found.append(f"privileged: {name}")
        extra = set((ctx.get("capabilities") or {}).get("add", [])) - BASELINE_CAPABILITIES
        if extra:
            found.append(f"capabilities_baseline: {name} adds {sorted(extra)}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"hostPorts: {name}")
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"procMount: {name}")
    return found


def restricted_violations(pod: PodSpec) -> list[str]:
    """The restricted level's own checks (a pod must also pass baseline)."""
    found = []
    pod_context = pod.get("securityContext") or {}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"restrictedVolumes: {volume['name']} ({', '.join(sorted(kinds))})")
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    for container in containers(pod):
        name, ctx = container["name"], _context(container)
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"allowPrivilegeEscalation: {name}")
        if ctx.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            found.append(f"runAsNonRoot: {name}")
        if ctx.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"runAsUser: {name}")
        seccomp = (ctx.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"seccompProfile_restricted: {name}")
        capabilities = ctx.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"capabilities_restricted: {name} does not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"capabilities_restricted: {name} adds more than NET_BIND_SERVICE")
    return found


def violations(pod: PodSpec, level: str) -> list[str]:
    """What Pod Security admission at ``level`` (baseline or restricted) refuses in ``pod``."""
    if level == "baseline":
        return baseline_violations(pod)
    if level == "restricted":
        return baseline_violations(pod) + restricted_violations(pod)
    raise ValueError(f"unknown Pod Security level {level!r}")
