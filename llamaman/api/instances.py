"""/api/instances: launch, inspect, stop, restart and remove llama-server instances."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from llamaman.api.deps import ServicesDep
from llamaman.api.sse import object_events, sse
from llamaman.core.events import Event
from llamaman.instances.instance import ManagedInstance
from llamaman.instances.launch import LaunchSettings
from llamaman.services import Services

router = APIRouter(prefix="/api", tags=["instances"])


def _view(services: Services, m: ManagedInstance) -> dict[str, Any]:
    return m.view(services.instance_extra(m))


@router.get("/instances")
async def list_instances(services: ServicesDep) -> list[dict[str, Any]]:
    return [_view(services, m) for m in services.supervisor.list()]


@router.post("/instances", status_code=201)
async def launch_instance(body: LaunchSettings, services: ServicesDep) -> dict[str, Any]:
    m = await services.supervisor.launch(body)
    return _view(services, m)


@router.get("/instances/{instance_id}")
async def get_instance(instance_id: str, services: ServicesDep) -> dict[str, Any]:
    return _view(services, services.supervisor.get(instance_id))


@router.delete("/instances/{instance_id}")
async def stop_instance(instance_id: str, services: ServicesDep) -> dict[str, Any]:
    m = await services.supervisor.stop(instance_id)
    return _view(services, m)


@router.post("/instances/{instance_id}/restart")
async def restart_instance(instance_id: str, services: ServicesDep) -> dict[str, Any]:
    m = await services.supervisor.restart(instance_id)
    return _view(services, m)


@router.delete("/instances/{instance_id}/remove")
async def remove_instance(instance_id: str, services: ServicesDep) -> dict[str, Any]:
    await services.supervisor.remove(instance_id)
    return {"removed": instance_id}


@router.get("/instances/{instance_id}/logs")
async def instance_logs(
    instance_id: str, services: ServicesDep, lines: int = Query(200, ge=0, le=100_000)
) -> dict[str, Any]:
    m = services.supervisor.get(instance_id)
    return {"id": instance_id, "lines": m.proc.tail(lines)}


@router.get("/instances/{instance_id}/logs/stream")
async def instance_log_stream(
    instance_id: str, request: Request, services: ServicesDep, lines: int = Query(100, ge=0, le=10_000)
) -> StreamingResponse:
    """Server-sent events: the last ``lines`` lines, then every new line as it is written."""
    m = services.supervisor.get(instance_id)

    def render(ev: Event) -> tuple[list[str], bool]:
        if ev.topic == "instance.log":
            return [sse(ev.data["line"])], False
        if ev.topic == "instance.state":
            return [sse(ev.data["new"], "state")], False
        return [], ev.topic == "instance.removed"

    def snapshot() -> tuple[list[str], bool]:
        return [sse(line) for line in m.proc.tail(lines)], False

    return object_events(request, services.events, "instance.", instance_id, snapshot, render)


@router.get("/next-port")
async def next_port(services: ServicesDep) -> dict[str, int]:
    return {"port": services.supervisor.next_port()}
