"""DKIM keys (RFC 6376, RFC 8463) for the hosted domains' outbound mail: the controller's store and the
lifecycle of a selector (made, signing, published, retired), so that a key signs only once receivers can
find its record. See `keys` for the layout; callers use the names below: `from mailforge import dkim`."""

from __future__ import annotations

from .keys import (
    MADE,
    PUBLISHED,
    RETIRED,
    SIGNING,
    DkimError,
    SigningKey,
    Status,
    check_store,
    dkim_records,
    ensure_keys,
    next_selector_name,
    published_keys,
    record_seen,
    retired,
    rotate,
    signed_domains,
    signing_keys,
    status,
    valid_selector,
    zone_notes,
)

__all__ = [
    "MADE",
    "SIGNING",
    "PUBLISHED",
    "RETIRED",
    "DkimError",
    "SigningKey",
    "Status",
    "check_store",
    "dkim_records",
    "ensure_keys",
    "next_selector_name",
    "published_keys",
    "record_seen",
    "retired",
    "rotate",
    "signed_domains",
    "signing_keys",
    "status",
    "valid_selector",
    "zone_notes",
]
