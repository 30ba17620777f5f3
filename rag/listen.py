"""The server's listening address, checked by binding it ourselves before gRPC does: a port in use (or an address
not of this machine) is then our one-line error, not gRPC's C-core log line followed by a vague RuntimeError."""
import errno
import socket

import grpc


class PortInUse(OSError):
    pass


def address(host: str, port: int) -> str:
    """host:port as gRPC takes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port(host: str, port: int) -> None:
    """Raises PortInUse, or OSError with the reason, when no address of `host` can be bound with `port`. gRPC
    listens as long as one of them can: so does this. The probe's sockets are closed before returning."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {address(host, port)}: {exc.strerror}") from None
    errors = []
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's: TIME_WAIT does not count
                probe.bind(sockaddr)
            return
        except OSError as exc:
            errors.append(exc)
    if any(e.errno == errno.EADDRINUSE for e in errors):
        raise PortInUse(f"port {port} on {host} is already in use")
    reason = errors[0].strerror if errors else "no address"
    raise OSError(f"cannot listen on {address(host, port)}: {reason}")


def add_port(server, host: str, port: int, tls: tuple[bytes, bytes] | None = None) -> int:
    """Binds the grpc server to host:port (TLS with (certificate chain, private key) in PEM); returns the port."""
    where = address(host, port)
    check_port(host, port)
    try:
        if tls:
            cert, key = tls
            bound = server.add_secure_port(where, grpc.ssl_server_credentials([(key, cert)]))
        else:
            bound = server.add_insecure_port(where)
    except RuntimeError as exc:  # taken since check_port, or a reason of gRPC's own
        check_port(host, port)
        raise OSError(f"cannot listen on {where}: {exc}") from None
    if not bound:
        raise OSError(f"cannot listen on {where}")
    return bound
