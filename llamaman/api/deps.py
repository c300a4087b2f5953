"""Shared dependencies of the REST routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from llamaman.services import Services


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(503, "LlamaMan is still starting")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
