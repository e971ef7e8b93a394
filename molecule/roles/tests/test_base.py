"""mailforge_base, verified on the core (a meta dependency of mailforge_core): every package of mailforge_base_packages is installed, the staging directory exists."""

from host_checks import role_defaults

testinfra_hosts = ["ansible://cores"]  # the instances that converge this role (molecule.yml)

DEFAULTS = role_defaults("mailforge_base")


def test_packages_installed(host):
    assert DEFAULTS["mailforge_base_packages"], "the role installs no package?"
    for name in DEFAULTS["mailforge_base_packages"]:
        assert host.package(name).is_installed, name


def test_ca_certificates_work(host):
    # removed in prepare.yml: the role put it back, with its bundle
    assert host.file("/etc/ssl/certs/ca-certificates.crt").is_file


def test_apt_lists_read(host):
    # the image has none; the role read them
    assert host.run("ls /var/lib/apt/lists/ | grep -c _Packages").stdout.strip() not in ("", "0")


def test_staging_directory(host):
    staging = host.file(DEFAULTS["mailforge_base_staging_dir"])
    assert staging.is_directory
    assert staging.user == "root"
    assert staging.group == "root"
    assert staging.mode == 0o700
