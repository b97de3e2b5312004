"""Binds the gRPC port, refusing a port that is already in use with a message that says so.

gRPC sets SO_REUSEPORT on its listening sockets by default, so a second server on a port another one serves would
bind too and the kernel would split new connections between the two. `server_options` turns that off
(`grpc.so_reuseport` 0), and `bind` probes the address first with a plain socket, so that a port held by another
program is reported as "in use" rather than grpc's "Failed to bind to address".
"""

from __future__ import annotations

import errno
import socket

import grpc

# Passed to grpc.aio.server: never share a port with another process (see the module docstring).
NO_PORT_SHARING = ("grpc.so_reuseport", 0)


def _port_in_use(host: str, port: int) -> OSError:
    return OSError(
        errno.EADDRINUSE,
        f"port {port} on {host} is in use (another autoglm-rpc or another program listens there); "
        "stop it or choose another --port",
    )


def check_port_free(host: str, port: int) -> None:
    """Raise OSError when `host:port` cannot be bound (in use, or an address this machine does not have)."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does: TIME_WAIT is no conflict
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise _port_in_use(host, port) from None
                raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def bind(server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
    """Add the listening port to `server` and return the port bound; raise OSError naming what is wrong."""
    check_port_free(host, port)
    address = f"{host}:{port}"
    try:
        if credentials is not None:
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:  # grpc's "Failed to bind": the port was taken between the probe and now
        raise _port_in_use(host, port) from None
    if bound == 0:
        raise OSError(f"could not bind {address}")
    return bound
