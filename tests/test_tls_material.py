"""The TLS store: prepare on an empty store, idempotence, re-issue on a changed fqdn, and check_mx's
refusals (mismatched key, other names, expired) and warning (expiring soon), each located."""

from __future__ import annotations

import datetime
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509

from mailforge.inventory import load_topology
from mailforge.tls import internal, material, store_of

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "inventories" / "example"


@pytest.fixture
def example(tmp_path) -> Path:
    directory = tmp_path / "inv"
    shutil.copytree(EXAMPLE, directory)
    return directory


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    """An empty state directory, as on a fresh machine (the CI machine has no ~/.local/state)."""
    base = tmp_path / "empty-state"
    monkeypatch.setenv("MAILFORGE_STATE_DIR", str(base))
    return base


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_prepare_on_an_empty_store_makes_the_ca_host_certificates_and_internal_mx(example, state):
    inv = load_topology(example)
    store = store_of("example")
    assert not state.exists()
    made = material.prepare(inv, store)
    assert store == state / "clusters" / "example" / "tls"
    assert made.mx_source == "internal"
    ca = x509.load_pem_x509_certificate((store / "internal-ca" / "cert.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= datetime.timedelta(days=3649)
    core = x509.load_pem_x509_certificate((store / "hosts" / "core" / "cert.pem").read_bytes())
    assert internal.dns_names(core) == ["core.internal.example.com"]
    core.verify_directly_issued_by(ca)
    usages = core.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usages} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    mx = x509.load_pem_x509_certificate((store / "internal-mx" / "chain.pem").read_bytes())
    assert internal.dns_names(mx) == ["mx.example.com"]
    for name, mode in _modes(store).items():
        path = store / name
        assert mode == (0o700 if path.is_dir() else 0o600), name
    errors, warnings = material.check_mx(inv, store)
    assert errors == []
    # The example asks for ACME, which has issued nothing yet in this empty store: deploy says so.
    assert [(w.message, w.expected) for w in warnings] == [
        (
            "no certificate from the ACME server yet: the relays present the cluster's private CA's, which senders cannot verify",
            "run `mailforge certs INVENTORY --deploy`",
        )
    ]


def test_prepare_is_idempotent_and_reissues_a_changed_fqdn(example, state):
    inv = load_topology(example)
    store = store_of("example")
    material.prepare(inv, store)
    before = {p: p.read_bytes() for p in store.rglob("*.pem")}
    assert material.prepare(inv, store).written == []
    assert {p: p.read_bytes() for p in store.rglob("*.pem")} == before

    topology = example / "topology.yml"
    topology.write_text(topology.read_text().replace("core.internal.example.com", "core2.internal.example.com"))
    again = material.prepare(load_topology(example), store)
    assert again.written == [store / "hosts" / "core" / "cert.pem"]  # the key stays
    cert = x509.load_pem_x509_certificate((store / "hosts" / "core" / "cert.pem").read_bytes())
    assert internal.dns_names(cert) == ["core2.internal.example.com"]


def _pair(tmp: Path, names: list[str], days: int = 90, other_key: bool = False, start_days_ago: int = 0):
    ca = internal.make_ca("elsewhere")
    key, cert = internal.issue(ca, names, days=days)
    if start_days_ago:
        # an old certificate: built by hand, valid from long ago
        builder = (
            x509.CertificateBuilder()
            .subject_name(cert.subject)
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(internal.now() - datetime.timedelta(days=start_days_ago))
            .not_valid_after(internal.now() - datetime.timedelta(days=start_days_ago) + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        )
        from cryptography.hazmat.primitives import hashes

        cert = builder.sign(ca.key, hashes.SHA256())
    if other_key:
        key = internal.new_key()
    (tmp / "mx.pem").write_bytes(internal.cert_pem(cert) + internal.cert_pem(ca.cert))
    (tmp / "mx.key").write_bytes(internal.key_pem(key))
    (tmp / "mx.key").chmod(0o600)


def _with_files(example: Path) -> None:
    topology = example / "topology.yml"
    topology.write_text(topology.read_text().replace("\ntls:\n", "\ntls:\n  cert_file: mx.pem\n  key_file: mx.key\n", 1))  # files win over tls.acme


def _line_of(example: Path, text: str) -> int:
    return next(i for i, line in enumerate((example / "topology.yml").read_text().splitlines(), 1) if text in line)


def test_files_are_copied_into_the_store_and_pass(example, state):
    _pair(example, ["mx.example.com"])
    _with_files(example)
    inv = load_topology(example)
    store = store_of("example")
    made = material.prepare(inv, store)
    assert made.mx_source == "files"
    assert (store / "mx" / "key.pem").read_bytes() == (example / "mx.key").read_bytes()
    assert material.check_mx(inv, store) == ([], [])
    assert material.prepare(inv, store).written == []


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        ("mismatch", {"names": ["mx.example.com"], "other_key": True}, "the private key does not match the certificate"),
        ("names", {"names": ["other.example.net"]}, "is for other.example.net, not for the MX name mx.example.com"),
        ("expired", {"names": ["mx.example.com"], "days": 30, "start_days_ago": 40}, "expired on"),
    ],
)
def test_check_mx_refuses_with_the_line_of_cert_file(example, state, case, kwargs, message):
    _pair(example, **kwargs)
    _with_files(example)
    inv = load_topology(example)
    store = store_of("example")
    material.prepare(inv, store)
    errors, _ = material.check_mx(inv, store)
    assert len(errors) == 1, errors
    text = str(errors[0])
    assert message in text
    assert text.startswith(f"{example / 'topology.yml'}:{_line_of(example, 'cert_file: mx.pem')}:")
    assert "tls.cert_file" in text


def test_check_mx_warns_within_expiry_warning_days(example, state):
    _pair(example, ["mx.example.com"], days=10)
    _with_files(example)
    inv = load_topology(example)
    material.prepare(inv, store_of("example"))
    errors, warnings = material.check_mx(inv, store_of("example"))
    assert errors == []
    assert len(warnings) == 1 and "expires on" in str(warnings[0]) and "in 9 days" in str(warnings[0])


def test_check_mx_reports_unreadable_and_non_pem_files(example, state):
    _with_files(example)
    (example / "mx.pem").write_text("not a certificate\n")
    inv = load_topology(example)
    store = store_of("example")
    material.prepare(inv, store)
    errors, _ = material.check_mx(inv, store)
    assert [e.key for e in errors] == ["tls.key_file"]  # the key file is missing
    assert "cannot read" in str(errors[0]) and "mx.key" in str(errors[0])
    (example / "mx.key").write_text("nor a key\n")
    errors, _ = material.check_mx(inv, store)
    assert [e.key for e in errors] == ["tls.cert_file", "tls.key_file"]
    assert "holds no PEM certificate" in str(errors[0]) and "no unencrypted PEM private key" in str(errors[1])
    assert not (store / "mx").exists()


def test_shipment_and_assembled_files(example, state, tmp_path):
    inv = load_topology(example)
    store = store_of("example")
    material.prepare(inv, store)
    ship = material.shipment(inv, store)
    assert sorted(ship) == ["core", "lb", "relay1", "relay2"]
    assert sorted(ship["lb"]) == ["/etc/mailforge/tls/mta-sts.pem"]  # the example serves its MTA-STS policy (tls.mta_sts)
    assert sorted(ship["core"]) == ["/etc/mailforge/tls/host.pem", "/etc/mailforge/tls/internal-ca.pem"]
    assert sorted(ship["relay1"]) == ["/etc/mailforge/tls/host.pem", "/etc/mailforge/tls/internal-ca.pem", "/etc/mailforge/tls/mx.pem"]
    staged = material.assemble(ship, tmp_path / "stage")
    mx = next(e for e in staged["relay1"] if e["path"] == "/etc/mailforge/tls/mx.pem")
    content = Path(mx["src"]).read_text()
    assert content.startswith("-----BEGIN PRIVATE KEY-----") and content.count("BEGIN CERTIFICATE") == 1
    assert stat.S_IMODE((tmp_path / "stage").stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(mx["src"]).stat().st_mode) == 0o600
    prints = material.fingerprints(inv, store)
    import hashlib

    assert prints["relay1"]["/etc/mailforge/tls/mx.pem"] == hashlib.sha256(content.encode()).hexdigest()
