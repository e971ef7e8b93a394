"""The DNS a cluster needs: the records it should have, and a live check that it has them.

Two halves, kept apart:

- planning, pure (a topology in, records out), in `records`: which names the MX records name
  (`mx_targets`), which hosts send the hosted domains' mail to the Internet and so
  belong in SPF (`outbound_senders`), every record to publish (`zone_records`) and
  their zone-file text (`zone_text`, `zone_file`);
- checking, against a nameserver: `queries.Querier` asks one question at a time with
  dnspython and keeps a timeout, SERVFAIL or REFUSED apart from "no such record";
  `spf.Spf` evaluates the SPF records; `checks.run_checks` turns the answers into rows
  (subject, check, status, evidence).

`nsd` configures an NSD serving the records (the lab, the tests). Callers use the names
below: `from mailforge import dns; dns.zone_text(...)`.
"""

from __future__ import annotations

from .checks import (
    BLOCKED_RESOLVER_CODES,
    ERROR,
    FAIL,
    OK,
    OUTSIDER_V4,
    OUTSIDER_V6,
    SERVFAIL,
    TIMEOUT,
    Check,
    run_checks,
)
from .listings import LISTED, UNKNOWN, cluster_addresses, listing_checks
from .mail_auth import DkimInputs
from .nsd import nsd_conf, zone_file_name
from .queries import Answer, DnsError, Querier, parse_nameserver, system_nameservers
from .records import (
    DEFAULT_TTL,
    DOMAIN_TEST_DEFAULT,
    DOMAIN_TEST_NAMES,
    DOMAIN_TEST_UNLISTED,
    IP_TEST_LISTED,
    IP_TEST_UNLISTED,
    MX_PREFERENCE,
    Record,
    Sender,
    dmarc_name,
    dmarc_record,
    dnsbl_records,
    missing_mx,
    mx_target_addresses,
    mx_targets,
    outbound_senders,
    reverse_name,
    reverse_network,
    reverse_zone,
    rhsbl_test_name,
    served_zones,
    spf_record,
    txt_value,
    zone_file,
    zone_of,
    zone_records,
    zone_sections,
    zone_text,
)
from .spf import Spf, spf_records
from .tls_checks import TlsInputs

__all__ = [
    # records: planning, pure
    "DEFAULT_TTL",
    "MX_PREFERENCE",
    "IP_TEST_LISTED",
    "IP_TEST_UNLISTED",
    "DOMAIN_TEST_UNLISTED",
    "DOMAIN_TEST_DEFAULT",
    "DOMAIN_TEST_NAMES",
    "Sender",
    "Record",
    "mx_targets",
    "mx_target_addresses",
    "missing_mx",
    "outbound_senders",
    "spf_record",
    "rhsbl_test_name",
    "reverse_name",
    "reverse_zone",
    "reverse_network",
    "zone_of",
    "zone_records",
    "zone_text",
    "zone_sections",
    "zone_file",
    "served_zones",
    "dnsbl_records",
    "dmarc_name",
    "dmarc_record",
    "txt_value",
    # queries: asking a nameserver
    "DnsError",
    "Answer",
    "Querier",
    "parse_nameserver",
    "system_nameservers",
    # spf
    "Spf",
    "spf_records",
    # checks: `mailforge dns check`
    "OK",
    "FAIL",
    "TIMEOUT",
    "SERVFAIL",
    "ERROR",
    "BLOCKED_RESOLVER_CODES",
    "OUTSIDER_V4",
    "OUTSIDER_V6",
    "Check",
    "run_checks",
    "TlsInputs",
    # listings: `dns check --listings`
    "LISTED",
    "UNKNOWN",
    "cluster_addresses",
    "listing_checks",
    "DkimInputs",
    # nsd
    "nsd_conf",
    "zone_file_name",
]
