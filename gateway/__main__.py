"""`python -m gateway [--host H] [--port P]` serves the API with uvicorn."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from gateway.connections import guarded_protocol
from gateway.settings import GatewaySettings


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus the gateway's own loggers (one line per request: queuechat.requests)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["queuechat"] = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    config["handlers"]["queuechat"] = {"class": "logging.StreamHandler", "formatter": "queuechat",
                                       "stream": "ext://sys.stderr"}  # fmt: skip
    for name in ("queuechat", "gateway"):
        config["loggers"][name] = {"handlers": ["queuechat"], "level": level.upper(), "propagate": False}
    return config


def serve(host: str, port: int, log_level: str = "info", access_log: bool = False) -> None:
    """uvicorn's access log is off by default: queuechat.requests writes a richer line per request.
    Connections are guarded against slow clients and counted (gateway/connections.py)."""
    settings = GatewaySettings()
    protocol = guarded_protocol(settings.header_timeout, settings.max_connections)
    uvicorn.run("gateway:create_app", factory=True, host=host, port=port, log_level=log_level, http=protocol,
                log_config=log_config(log_level), access_log=access_log)  # fmt: skip


def main() -> None:
    settings = GatewaySettings()
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true", help="also uvicorn's access log")
    args = parser.parse_args()
    serve(args.host, args.port, args.log_level, args.access_log)


if __name__ == "__main__":
    main()
