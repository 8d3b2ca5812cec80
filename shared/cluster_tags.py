"""Opt-out and opt-in rules read from cluster tags (one home: discovery, rotation and every entry point ask here)."""

from __future__ import annotations

from collections.abc import Mapping

from shared.aks import ClusterInfo
from shared.settings import Settings

_FALSY = ("false", "no", "0", "off")


def tag_set(tags: Mapping[str, str], name: str) -> bool:
    """A tag counts as set when present (case-insensitive name) and not false-ish."""
    value = {k.lower(): v for k, v in tags.items()}.get(name.lower())
    return value is not None and value.strip().lower() not in _FALSY


def opted_out(settings: Settings, cluster: ClusterInfo) -> bool:
    """OPT_OUT_TAG: the cluster is reported, never rotated."""
    return tag_set(cluster.tags, settings.opt_out_tag)


def certificates_opted_in(settings: Settings, cluster: ClusterInfo) -> bool:
    """ROTATE_CERTIFICATES or CERT_OPT_IN_TAG: the rotator may run rotate-certs (downtime) on the cluster."""
    return settings.rotate_certificates or tag_set(cluster.tags, settings.cert_opt_in_tag)
