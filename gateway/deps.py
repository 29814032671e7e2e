"""Typed accessors for what `create_app` put on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.batches import BatchStore
from gateway.files import Files
from gateway.keep import Detacher
from gateway.metrics import HttpLabels
from gateway.registry import Registry
from gateway.relay import Relay
from gateway.settings import GatewaySettings


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


def _relay(request: Request) -> Relay:
    return request.app.state.relay


def _registry(request: Request) -> Registry:
    return request.app.state.relay.registry


def _keeper(request: Request) -> Detacher:
    return request.app.state.keeper


def _files(request: Request) -> Files:
    return request.app.state.files


def _batches(request: Request) -> BatchStore:
    return request.app.state.batches


def _http_labels(request: Request) -> HttpLabels:
    return HttpLabels.of(request.scope)


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
# The labels HttpMetricsMiddleware counts this request under; a route fills in the model.
HttpLabelsDep = Annotated[HttpLabels, Depends(_http_labels)]
RelayDep = Annotated[Relay, Depends(_relay)]
RegistryDep = Annotated[Registry, Depends(_registry)]
KeeperDep = Annotated[Detacher, Depends(_keeper)]  # kept jobs: their store (.store) and detach timers
FilesDep = Annotated[Files, Depends(_files)]
BatchesDep = Annotated[BatchStore, Depends(_batches)]
