"""Checks on the settings as a whole, and on how they were given, each said in one line that names the setting.

`check_listeners` refuses two listeners on one port (gRPC `port`, `http_port`, `metrics_port`): the second one to
bind would otherwise fail with the kernel's "Address already in use", naming neither. `source_warnings` finds
what was given but has no effect: an `AUTOGLM_*` variable that is no setting (a typo goes unnoticed otherwise)
and the HTTP API's address while the HTTP API is off.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoglm_rpc.startup.config import Settings

ENV_PREFIX = "AUTOGLM_"
# AUTOGLM_* variables that are not settings but are read: the config file, the key `autoglm-rpc generate` sends.
OTHER_VARIABLES = frozenset({"AUTOGLM_CONFIG", "AUTOGLM_API_KEY"})
# Kubernetes service links name a Service's address AUTOGLM_RPC_SERVICE_HOST, AUTOGLM_RPC_PORT_50051_TCP, ...
SERVICE_LINK_PREFIX = "AUTOGLM_RPC_"
_WILDCARDS = ("", "0.0.0.0", "::")


def check_listeners(settings: Settings) -> None:
    """Raise ValueError when two listeners are set to the same port on addresses that overlap (port 0 is free)."""
    server, telemetry = settings.server, settings.telemetry
    listeners = [("port", server.host, server.port)]
    if server.http:
        listeners.append(("http_port", server.http_host or server.host, server.http_port))
    if telemetry.metrics_port is not None:
        listeners.append(("metrics_port", telemetry.metrics_host, telemetry.metrics_port))
    for (name, host, port), (other, other_host, other_port) in itertools.combinations(listeners, 2):
        if port and port == other_port and (host == other_host or {host, other_host} & set(_WILDCARDS)):
            raise ValueError(
                f"{other} {other_port} is also {name}: each listener needs its own port (or 0 for any free one)"
            )


def source_warnings(given: Mapping[str, Any], environ: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """One line for each thing given that has no effect. `given`: the settings some source gave (by flat name,
    `config.given_values`); `names`: every setting's flat name."""
    warnings = unknown_variables(environ, names)
    if given.get("http") is False or str(given.get("http", "")).strip().lower() in ("0", "false", "no", "off"):
        inert = sorted(name for name in ("http_port", "http_host") if name in given)
        warnings += [
            f"{name} is set but the HTTP API is off (http false, --no-http): it is ignored" for name in inert
        ]
    return warnings


def unknown_variables(environ: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """A line for each `AUTOGLM_*` variable that is no setting, with the closest setting's variable if any."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in names}
    lines = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in known or variable in OTHER_VARIABLES:
            continue
        if variable.startswith(SERVICE_LINK_PREFIX):
            continue
        close = difflib.get_close_matches(variable, sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{variable} is not a setting and is ignored{hint}")
    return lines
