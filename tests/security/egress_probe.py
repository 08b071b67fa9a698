"""Run INSIDE an agent container by the egress tests (copied into the project): each argument
group is one attempt to reach the outside world, and prints one line saying how it went.

    get URL              through the proxy the run was given (urllib reads HTTP(S)_PROXY),
                         certificates checked against /workspace/ca.pem
    direct IP PORT       a plain TCP connection, bypassing the proxy
    sni HOST SNI         CONNECT HOST:443 through the proxy, then a TLS handshake naming SNI
    dns NAME             a name lookup (3 s at most)
    mark FILE / wait FILE   touch a file / wait (60 s at most) until it exists
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

CA = "/workspace/ca.pem"


def context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=CA)


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, context=context(), timeout=10) as answer:
            return f"OK {answer.status} {answer.read().decode().strip()}"
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        said = "policy-page" if "ad-sandbox" in body else "other-page"
        return f"HTTP {exc.code} {said}"
    except Exception as exc:
        return f"ERR {type(exc).__name__}: {exc}"


def direct(address: str, port: str) -> str:
    try:
        with socket.create_connection((address, int(port)), timeout=3):
            return "OPEN"
    except OSError as exc:
        return f"SHUT {type(exc).__name__}"


def sni(host: str, server_name: str) -> str:
    proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    raw = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    try:
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = raw.recv(4096).decode(errors="replace").splitlines()[0]
        if " 200 " not in f"{head} ":
            return f"CONNECT-REFUSED {head}"
        tls = ssl.create_default_context(cafile=CA)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        with tls.wrap_socket(raw, server_hostname=server_name) as wrapped:
            wrapped.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                            .encode())
            data = b""
            while chunk := wrapped.recv(4096):
                data += chunk
            text = data.decode(errors="replace")
            return f"PASSED {text.splitlines()[-1] if text else ''}"
    except OSError as exc:
        return f"REFUSED {type(exc).__name__}"
    finally:
        raw.close()


def dns(name: str) -> str:
    found: list[str] = []

    def lookup() -> None:
        try:
            found.append(socket.gethostbyname(name))
        except OSError as exc:
            found.append(f"NONE {type(exc).__name__}")

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(3)
    return found[0] if found else "NONE no answer in 3 s"


def main(args: list[str]) -> None:
    while args:
        verb = args.pop(0)
        if verb in ("get", "dns"):
            target = args.pop(0)
            print(f"{verb.upper()} {target} -> {get(target) if verb == 'get' else dns(target)}",
                  flush=True)
        elif verb == "direct":
            address, port = args.pop(0), args.pop(0)
            print(f"DIRECT {address}:{port} -> {direct(address, port)}", flush=True)
        elif verb == "sni":
            host, server_name = args.pop(0), args.pop(0)
            print(f"SNI {host}/{server_name} -> {sni(host, server_name)}", flush=True)
        elif verb == "mark":
            with open(args.pop(0), "w") as marker:
                marker.write("x")
        elif verb == "wait":
            path, deadline = args.pop(0), time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            raise SystemExit(f"unknown verb {verb}")


if __name__ == "__main__":
    main(sys.argv[1:])
