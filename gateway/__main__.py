"""`python -m gateway [--host H] [--port P]` serves the API with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    uvicorn.run(
        "gateway:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level
    )


if __name__ == "__main__":
    main()
