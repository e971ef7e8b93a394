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
                time.sleep(probe.get("hold", 0))  # a slow sender: the session stays open this long
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


def proxy_header(version, source, destination):
    """The PROXY protocol header a balancer sends before the client's first byte (v1 text, v2 binary)."""
    import ipaddress
    import struct

    (src, sport), (dst, dport) = source, destination
    family = ipaddress.ip_address(src).version
    if version == "v1":
        return f"PROXY {'TCP4' if family == 4 else 'TCP6'} {src} {dst} {sport} {dport}\r\n".encode()
    packed = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + struct.pack("!HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11 if family == 4 else 0x21]) + struct.pack("!H", len(packed)) + packed


def greeting(probe):
    """What a balancer's health check does: (PROXY header,) 220, EHLO, 250, QUIT: does this relay take mail?"""
    started = time.monotonic()
    result = {"ok": False, "replies": []}  # type: dict
    try:
        with socket.create_connection((probe["host"], probe["port"]), timeout=probe.get("timeout", 10)) as conn:
            conn.settimeout(probe.get("timeout", 10))
            if probe.get("proxy") in ("v1", "v2"):
                local = conn.getsockname()[:2]
                conn.sendall(proxy_header(probe["proxy"], local, (probe["host"], probe["port"])))
            reader = conn.makefile("rb")

            def reply():
                lines = []
                while True:
                    line = reader.readline(1024)
                    if not line:
                        raise OSError("connection closed")
                    lines.append(line.decode("utf-8", "replace").rstrip())
                    if len(line) < 4 or line[3:4] != b"-":
                        result["replies"].append(lines[-1])
                        return int(line[:3]) if line[:3].isdigit() else 0

            if reply() == 220:
                conn.sendall(("EHLO {}\r\n".format(probe.get("helo", socket.getfqdn()))).encode())
                if reply() == 250:
                    conn.sendall(b"QUIT\r\n")
                    result["ok"] = reply() == 221
    except OSError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _ssl_reason(exc):
    """A TLS failure in a few words: OpenSSL's reason code when there is one."""
    return "{}: {}".format(type(exc).__name__, getattr(exc, "reason", None) or exc)


def starttls(probe):
    """(PROXY header,) banner, EHLO, STARTTLS and a TLS handshake that trusts nothing and checks no
    name: the judging (chain, names, protocol, expiry) is the controller's, from what this returns:
    the peer's chain as PEM (leaf first), the protocol and cipher negotiated, and, from a second
    connection offering only TLSv1.1, whether the server refused it."""
    import ssl

    started = time.monotonic()
    result = {"stages": {}}  # type: dict

    def session(context):
        conn = socket.create_connection((probe["host"], probe["port"]), timeout=probe.get("timeout", 30))
        conn.settimeout(probe.get("timeout", 30))
        if probe.get("proxy") in ("v1", "v2"):
            conn.sendall(proxy_header(probe["proxy"], conn.getsockname()[:2], (probe["host"], probe["port"])))
        reader = conn.makefile("rb")

        def reply(stage):
            lines = []
            while True:
                line = reader.readline(1024)
                if not line:
                    raise OSError("connection closed during " + stage)
                lines.append(line.decode("utf-8", "replace").rstrip())
                if len(line) < 4 or line[3:4] != b"-":
                    code = int(line[:3]) if line[:3].isdigit() else 0
                    result["stages"].setdefault(stage, [code, lines[-1][4:]])
                    return code, lines

        if reply("banner")[0] != 220:
            raise OSError("no 220 banner")
        conn.sendall("EHLO {}\r\n".format(probe.get("helo", socket.getfqdn())).encode())
        code, lines = reply("ehlo")
        if code != 250 or not any(line[4:].upper().startswith("STARTTLS") for line in lines):
            raise OSError("the server does not offer STARTTLS")
        conn.sendall(b"STARTTLS\r\n")
        if reply("starttls")[0] != 220:
            raise OSError("STARTTLS refused")
        return context.wrap_socket(conn, server_hostname=probe.get("server_name") or None)

    def context(oldest=None, newest=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if oldest is not None:
            ctx.set_ciphers("ALL:@SECLEVEL=0")  # so that this side offers what it is asked to offer
            ctx.minimum_version, ctx.maximum_version = oldest, newest
        return ctx

    try:
        with session(context(ssl.TLSVersion.MINIMUM_SUPPORTED, ssl.TLSVersion.MAXIMUM_SUPPORTED)) as tls:  # what the server prefers, even if old
            getter = getattr(tls, "get_unverified_chain", None)  # Python 3.13; before, the C object has it
            chain = getter() if getter else tls._sslobj.get_unverified_chain()
            result["chain"] = [
                c
                if isinstance(c, str)
                else ssl.DER_cert_to_PEM_cert(c)
                if isinstance(c, bytes)
                else c.public_bytes()  # 3.13: DER bytes; 3.10-3.12: Certificate
                for c in chain or []
            ]
            result["version"], result["cipher"] = tls.version(), (tls.cipher() or [""])[0]
            try:
                tls.sendall(b"QUIT\r\n")
                tls.recv(512)
            except OSError:
                pass
    except (ssl.SSLError, OSError) as exc:
        result["error"] = _ssl_reason(exc)
    if "chain" in result:
        try:
            old = context(ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1)
        except (ValueError, ssl.SSLError) as exc:
            result["tls11"] = {"untested": _ssl_reason(exc)}
        else:
            try:
                with session(old) as tls:
                    result["tls11"] = {"refused": False, "detail": f"{tls.version()} negotiated"}
            except ssl.SSLError as exc:
                reason = str(getattr(exc, "reason", "") or "")
                if reason in ("NO_PROTOCOLS_AVAILABLE", "NO_SUITABLE_SIGNATURE_ALGORITHM", "NO_CIPHERS_AVAILABLE"):
                    result["tls11"] = {"untested": _ssl_reason(exc)}  # this side could not offer TLSv1.1 at all
                else:
                    result["tls11"] = {"refused": True, "detail": _ssl_reason(exc)}
            except OSError as exc:
                result["tls11"] = {"refused": True, "detail": _ssl_reason(exc)}
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def stream(probe):
    """A bounded stream of messages at a fixed rate, one connection each, as independent senders
    would send them: each message's outcome, whatever happens to the hosts meanwhile."""
    import threading

    count, rate = int(probe["count"]), float(probe["rate"])
    results = [None] * count

    def send(i):
        token = f"{probe['token']}-{i:04d}"
        data = "From: <{}>\r\nTo: <{}>\r\nSubject: mailforge stream {}\r\nMessage-ID: <{}@lab-sender.test>\r\n\r\nstream {}\r\n".format(
            probe["sender"], probe["recipient"], token, token, token
        )
        outcome = smtp({**probe, "data": data})
        outcome["token"] = token
        outcome["sent_at"] = round(time.monotonic() - started, 2)
        results[i] = outcome

    started = time.monotonic()
    threads = []
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=send, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(probe.get("timeout", 30) * 6 + 10)
    return [
        r if r is not None else {"stages": {"error": [0, "no outcome (still running)"]}, "token": f"{probe['token']}-{i:04d}"} for i, r in enumerate(results)
    ]


HANDLERS = {"smtp": smtp, "banner": banner, "greeting": greeting, "stream": stream, "starttls": starttls}


def main():
    """With "concurrent": true the probes run at once (each waits out its own timeout, so checking twenty walls
    that hold costs one timeout, not twenty); otherwise in order, since a later probe may rely on an earlier one."""
    request = json.load(sys.stdin)
    probes = request["probes"]
    if request.get("concurrent"):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(32, len(probes)))) as pool:
            results = list(pool.map(lambda probe: HANDLERS[probe["kind"]](probe), probes))
    else:
        results = [HANDLERS[probe["kind"]](probe) for probe in probes]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
