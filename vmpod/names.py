"""Kubernetes name rules (DNS labels and subdomains) used to validate manifests."""

from __future__ import annotations

import re

__all__ = ["is_dns_label", "is_dns_subdomain", "is_label_key", "is_label_value"]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def is_dns_label(name: str) -> bool:
    """RFC 1123 label: at most 63 lower-case alphanumerics or '-', alphanumeric at both ends."""
    return len(name) <= 63 and _DNS_LABEL.fullmatch(name) is not None


def is_dns_subdomain(name: str) -> bool:
    """RFC 1123 subdomain: dot-separated labels, at most 253 characters (pod and object names)."""
    return 0 < len(name) <= 253 and all(is_dns_label(part) for part in name.split("."))


def is_label_value(value: str) -> bool:
    """A Kubernetes label value: at most 63 characters, alphanumeric ends, ``-_.`` inside."""
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None


def is_label_key(key: str) -> bool:
    """A Kubernetes label key: ``[prefix/]name`` with a DNS-subdomain prefix."""
    prefix, _, name = key.rpartition("/")
    if prefix and not is_dns_subdomain(prefix):
        return False
    return 0 < len(name) <= 63 and _LABEL_VALUE.fullmatch(name) is not None
