"""LlamaMan entry point: ``llamaman`` (or ``python main.py``) serves the UI, the REST API and the proxy."""

from __future__ import annotations

import sys

from llamaman.cli import parse_args, settings_from_args
from llamaman.core.config import Settings


def serve(settings: Settings, *, native: bool = False, show_ui: bool = True) -> int:
    if native:
        from llamaman.desktop import check_native_support

        problem = check_native_support()
        if problem:
            print(problem, file=sys.stderr)
            return 2

    import nicegui.server
    from nicegui import app, ui

    import pages
    from llamaman.app import LlamaMan, install, settle_heap
    from llamaman.core.secrets import storage_secret
    from llamaman.gateway.server_clock import share_clock

    # NiceGUI's uvicorn server would wake the idle process ten times a second to look for a stop.
    share_clock(nicegui.server.Server)

    services = LlamaMan(settings)
    install(app, services)

    async def start() -> None:
        await services.start()
        settle_heap()

    app.on_startup(start)
    app.on_shutdown(services.stop)
    if show_ui:
        pages.register(services)
    ui.run(
        host=settings.host,
        port=settings.port,
        title="LlamaMan",
        reload=False,
        show=False,
        native=native,
        storage_secret=storage_secret(settings),
        favicon="🦙",
        language="en-US",
        dark=None,
        # Pages bind UI elements to each other (pushed at once) and follow service events; the
        # polling loop for other bindings only costs idle CPU, so it runs rarely.
        binding_refresh_interval=1.0,
        # uvicorn's httptools protocol plus a header size limit and a header read deadline, with the
        # fast lane for plain model requests (the proxy port's).
        http=services.main_protocol(),
        # uvicorn would take X-Forwarded-For from any local peer as the client's address; LlamaMan
        # reads forwarded headers itself, from LLAMAMAN_TRUSTED_PROXIES only.
        proxy_headers=False,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "bench":
        from llamaman.cli import run_bench

        return run_bench(args)
    if args.command == "worker":
        from llamaman.cli import run_worker

        return run_worker(args)
    return serve(settings_from_args(args), native=args.native, show_ui=not args.no_ui)


if __name__ in {"__main__", "__mp_main__"}:
    sys.exit(main())
