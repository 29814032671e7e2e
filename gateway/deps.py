"""Typed accessors for what `create_app` put on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.registry import Registry
from gateway.relay import Relay
from gateway.settings import GatewaySettings


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


def _relay(request: Request) -> Relay:
    return request.app.state.relay


def _registry(request: Request) -> Registry:
    return request.app.state.relay.registry


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
RelayDep = Annotated[Relay, Depends(_relay)]
RegistryDep = Annotated[Registry, Depends(_registry)]


def metric_label(relay: Relay, model: str) -> str:
    """The model as a metrics label: names outside the models file collapse into "other"."""
    return model if relay.registry.configured(model) else "other"
