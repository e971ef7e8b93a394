"""SMTP and TCP probes, run with the probing host's own python3 (stdlib only).

Reads one JSON object on stdin: {"probes": [...]} and prints one JSON result per
probe.  Kept free of mailforge imports: it is copied to the client container
(or any host named with --probe-from) and runs there.
"""

import json
import smtplib
import socket
import sys
import time


def smtp(probe):
    """One SMTP transaction; records the reply code of each stage it reached."""
    result = {"stages": {}}  # type: dict
    started = time.monotonic()
    try:
        client = smtplib.SMTP(timeout=probe.get("timeout", 30))
        code, text = client.connect(probe["host"], probe.get("port", 25))
        result["stages"]["banner"] = [code, text.decode("utf-8", "replace")]
        code, text = client.ehlo(probe.get("helo", socket.getfqdn()))
        result["stages"]["ehlo"] = [code, text.decode("utf-8", "replace").splitlines()[0] if text else ""]
        code, text = client.mail(probe["sender"])
        result["stages"]["mail"] = [code, text.decode("utf-8", "replace")]
        if code < 400:
            code, text = client.rcpt(probe["recipient"])
            result["stages"]["rcpt"] = [code, text.decode("utf-8", "replace")]
            if code < 400 and probe.get("data") is not None:
                code, text = client.data(probe["data"].encode("utf-8"))
                result["stages"]["data"] = [code, text.decode("utf-8", "replace")]
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            pass
    except smtplib.SMTPResponseException as exc:
        # smtplib raises these with the server's reply, always bytes (typeshed also allows str)
        result["stages"]["error"] = [exc.smtp_code, exc.smtp_error.decode("utf-8", "replace")]  # type: ignore[union-attr]
    except (smtplib.SMTPException, OSError) as exc:
        result["stages"]["error"] = [0, f"{type(exc).__name__}: {exc}"]
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def banner(probe):
    """Connect and wait for a banner: a firewall that holds gives none."""
    started = time.monotonic()
    try:
        with socket.create_connection((probe["host"], probe["port"]), timeout=probe.get("timeout", 5)) as conn:
            conn.settimeout(probe.get("timeout", 5))
            data = conn.recv(512)
            return {"banner": data.decode("utf-8", "replace").strip(), "seconds": round(time.monotonic() - started, 2)}
    except OSError as exc:
        return {"banner": None, "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.monotonic() - started, 2)}


def main():
    request = json.load(sys.stdin)
    results = []
    for probe in request["probes"]:
        handler = {"smtp": smtp, "banner": banner}[probe["kind"]]
        results.append(handler(probe))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
