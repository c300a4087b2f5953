"""The launch panel: every launch setting (generated from LaunchSettings), the memory estimate, the
exact command that will run, presets, and Launch."""

from __future__ import annotations

import shlex
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui
from pydantic import ValidationError

from components import fmt
from components.a11y import named
from components.dialogs import confirm
from components.model_form import ModelForm
from llamaman.instances.launch import LaunchSettings, build_argv
from llamaman.instances.supervisor import InstanceError
from llamaman.library.catalog import LibraryError, ModelEntry, estimate_memory
from llamaman.services import Services
from pages.library import launch_url, library_drawer, running_instances
from pages.shell import Shell, fail

LABELS = {
    "port": "Port",
    "n_gpu_layers": "GPU layers",
    "ctx_size": "Context size",
    "threads": "Threads",
    "parallel": "Parallel slots",
    "gpu_devices": "GPU devices",
    "extra_args": "Extra llama-server args",
    "embedding": "Embeddings",
    "mmproj": "Vision projector (mmproj)",
    "idle_timeout_min": "Idle timeout (min)",
    "max_concurrent": "Max concurrent requests",
    "max_queue_depth": "Max queue depth",
    "share_queue": "Share queue with replicas",
    "rpc_workers": "RPC workers (host:port, comma-separated)",
    "sampling": "Sampling overrides",
}
_CACHE_FLAGS = {"-ctk": "k", "--cache-type-k": "k", "-ctv": "v", "--cache-type-v": "v"}


def _cache_types(argv: list[str]) -> dict[str, str]:
    """KV cache types named in extra args, so the estimate matches what llama-server will allocate."""
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        flag, _, inline = arg.partition("=")
        if flag in _CACHE_FLAGS:
            value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
            if value:
                out[f"cache_type_{_CACHE_FLAGS[flag]}"] = value
    return out


class LaunchPanel:
    def __init__(self, services: Services, model: str | None, instance: str | None = None) -> None:
        self.services = services
        # Editing a running instance: its settings fill the form, and Launch replaces it.
        self.replacing = services.supervisor.instances.get(instance) if instance else None
        self.entry: ModelEntry | None = None
        self.preset: dict[str, Any] | None = None
        launchable = [m for m in services.library.models if m.launchable]
        options = {m.rel_path: f"{m.name}  ({m.rel_path})" for m in launchable}
        initial = model if model in options else None
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-3"):
            with ui.row().classes("w-full items-center gap-3"):
                ui.label("Launch a model").classes("text-h6")
                ui.space()
                self.preset_note = ui.label("").classes("text-xs opacity-75")
            self.model = (
                ui.select(
                    options, value=initial, label="Model", with_input=True, on_change=self._model_changed
                )
                .props("outlined dense options-dense")
                .classes("w-full")
                .mark("launch-model")
            )
            cfg = services.settings
            hints = {"port": f"blank: next free port {cfg.port_range_start}-{cfg.port_range_end}"}
            self.form = ModelForm(
                LaunchSettings, skip={"model_path"}, labels=LABELS, on_change=self.refresh, hints=hints
            )
            self.general_error = ui.label("").classes("text-sm text-negative")
            with ui.row().classes("w-full gap-3 items-stretch"):
                with ui.card().props("flat bordered").classes("grow basis-64 q-pa-sm gap-1 lm-soft"):
                    ui.label("Estimated memory").classes("text-subtitle2")
                    self.memory = ui.label(fmt.DASH).classes("text-sm lm-mono").style("white-space: pre-line")
                with ui.card().props("flat bordered").classes("grow-[3] basis-96 q-pa-sm gap-1 lm-soft"):
                    ui.label("Command").classes("text-subtitle2")
                    self.command = ui.code("", language="bash").classes("w-full text-xs lm-wrap")
                    self.command.mark("command")
                    if getattr(self.command, "copy_button", None) is not None:
                        named(self.command.copy_button, "Copy the command")
            with ui.row().classes("w-full justify-end gap-2"):
                ui.button("Reset", icon="undo", on_click=self._reset).props("flat")
                ui.button("Load preset", icon="file_open", on_click=self._load_preset).props("outline")
                ui.button("Save preset", icon="save", on_click=self._save_preset).props("outline")
                self.launch_btn = ui.button(
                    "Relaunch" if self.replacing else "Launch", icon="rocket_launch", on_click=self._launch
                ).mark("launch")
        if initial:
            self._select(initial)
        if self.replacing is not None:
            self.form.set_values(self.replacing.settings.model_dump(exclude={"model_path"}))
            self.preset_note.text = (
                f"editing {self.replacing.record.model_name} on port {self.replacing.record.port}: "
                "Relaunch stops it and starts these settings"
            )
        self.refresh()

    # ---- model -------------------------------------------------------------------------------
    def _select(self, rel_path: str | None) -> None:
        self.entry = self.services.library.find(rel_path) if rel_path else None
        layers = self.entry.info.block_count if self.entry and self.entry.info else None
        self.form.set_suffix("n_gpu_layers", f"/ {layers} layers" if layers else "/ ? layers")
        # Set as a value, never spliced into a props string: file names are data, and NiceGUI reads
        # ":name" props of a props string as JavaScript.
        mmproj_input = self.form.inputs["mmproj"]
        if self.entry and self.entry.mmproj:
            mmproj_input.props["placeholder"] = f"auto: {self.entry.mmproj}"
        else:
            mmproj_input.props.pop("placeholder", None)

    async def _model_changed(self, e: Any) -> None:
        self._select(e.value)
        self.preset = await self.services.presets.get(e.value) if e.value else None
        self.preset_note.text = "a preset is saved for this model" if self.preset else ""
        self.refresh()

    # ---- validation, estimate, preview -------------------------------------------------------
    def settings(self, *, show_errors: bool = True) -> LaunchSettings | None:
        values = {"model_path": self.model.value or "", **self.form.values()}
        try:
            ls = LaunchSettings(**values)
        except ValidationError as exc:
            if show_errors:
                errors = [e for e in exc.errors() if list(e.get("loc", ())) != ["model_path"]]
                self.general_error.text = "; ".join(self.form.show_errors(errors))  # type: ignore[arg-type]
            return None
        self.form.clear_errors()
        self.general_error.text = ""
        return ls

    def refresh(self) -> None:
        ls = self.settings()
        self.launch_btn.enabled = ls is not None and self.entry is not None
        if self.entry is None:
            self.memory.text = "Choose a model."
            self.command.content = "# choose a model"
            return
        if ls is None:
            self.memory.text = "Fix the highlighted settings."
            return
        self.memory.text = self._estimate(ls)
        self.command.content = self._command(ls)

    def _estimate(self, ls: LaunchSettings) -> str:
        assert self.entry is not None
        try:
            est = estimate_memory(
                self.entry,
                ls.ctx_size,
                ls.n_gpu_layers,
                parallel=ls.parallel,
                **_cache_types(ls.extra_argv()),
            )
        except LibraryError as exc:
            return f"no estimate: {exc}"
        on_gpu = f"{est.gpu_layers}/{est.n_layers} layers" + (" + output" if est.output_on_gpu else "")
        return (
            f"GPU    {fmt.size(est.gpu_bytes)}  ({on_gpu})\n"
            f"CPU    {fmt.size(est.cpu_bytes)}\n"
            f"Total  {fmt.size(est.total_bytes)}\n"
            f"weights {fmt.size(est.weights_bytes)} · KV cache {fmt.size(est.kv_bytes)} "
            f"· ctx {est.ctx_size}"
        )

    def _command(self, ls: LaunchSettings) -> str:
        assert self.entry is not None
        sup, settings = self.services.supervisor, self.services.settings
        if sup.binary is None:
            return f"# no llama-server: {sup.binary_error or 'not found'}"
        behind_listener = sup.always_listen or ls.needs_listener()
        try:
            port = ls.port or sup.next_port()
            if behind_listener:
                port = sup.internal_ports.next_free()
        except Exception:
            port = 0  # the pool is full: Launch will say so
        mmproj = ls.mmproj or self.entry.mmproj
        try:
            extra = sup.checked_extra(ls)
        except InstanceError as exc:
            return f"# refused: {exc.message}"
        argv = build_argv(
            sup.binary.argv_prefix,
            model_file=str(settings.models_dir / self.entry.rel_path),
            host="127.0.0.1" if behind_listener else settings.host,
            port=port,
            alias=self.entry.name,
            settings=ls,
            mmproj_file=str(settings.models_dir / mmproj) if mmproj else None,
            extra=extra,
        )
        env = f"CUDA_VISIBLE_DEVICES={ls.gpu_devices} " if ls.gpu_devices else ""
        return env + shlex.join(argv)

    # ---- actions -----------------------------------------------------------------------------
    def _reset(self) -> None:
        self.form.reset()
        self.refresh()

    def _preset_values(self) -> dict[str, Any] | None:
        ls = self.settings()
        if ls is None:
            fail("Fix the highlighted settings first")
            return None
        return ls.model_dump(exclude={"model_path", "port"})

    async def _save_preset(self) -> None:
        if self.entry is None:
            fail("Choose a model first")
            return
        values = self._preset_values()
        if values is None:
            return
        try:
            self.preset = await self.services.presets.put(self.entry.rel_path, values)
        except (ValidationError, ValueError) as exc:
            fail(f"Could not save the preset: {exc}")
            return
        self.preset_note.text = "a preset is saved for this model"
        ui.notify(f"Preset saved for {self.entry.name}", type="positive")

    async def _load_preset(self) -> None:
        if self.entry is None:
            fail("Choose a model first")
            return
        preset = await self.services.presets.get(self.entry.rel_path)
        if not preset:
            fail(f"No preset saved for {self.entry.name}")
            return
        self.form.reset()
        self.form.set_values(preset)
        self.refresh()
        ui.notify(f"Preset loaded for {self.entry.name}", type="info")

    async def _launch(self) -> None:
        if self.entry is None:
            fail("Choose a model first")
            return
        ls = self.settings()
        if ls is None:
            fail("Fix the highlighted settings first")
            return
        running = [
            m for m in running_instances(self.services, self.entry.rel_path) if m is not self.replacing
        ]
        if running:
            where = ", ".join(f"port {m.record.port} ({m.state.value})" for m in running)
            confirm(
                f"{self.entry.name} already runs",
                [
                    f"It runs on {where}.",
                    "Another instance loads the model a second time and takes memory of its own.",
                ],
                "Launch another",
                lambda: self._launch_now(ls),
                color="warning",
            )
            return
        await self._launch_now(ls)

    async def _launch_now(self, ls: LaunchSettings) -> None:
        self.launch_btn.props("loading")
        try:
            if self.replacing is not None:
                # Its port and memory are freed first, so the new settings can take them.
                await self.services.supervisor.remove(self.replacing.id)
                self.replacing = None
            m = await self.services.supervisor.launch(ls)
        except InstanceError as exc:
            fail(f"Launch failed: {exc.message}")
            return
        except Exception as exc:
            fail(f"Launch failed: {exc}")
            return
        finally:
            self.launch_btn.props(remove="loading")
        ui.notify(f"Launching {m.record.model_name} on port {m.record.port}", type="positive")
        ui.navigate.to("/")


def register(services: Services, shell: Shell) -> None:
    @ui.page("/launch")
    async def launch_page(
        request: Request, model: str | None = None, instance: str | None = None
    ) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        panel: LaunchPanel | None = None

        def pick(entry: Any) -> None:
            if panel is None:
                ui.navigate.to(launch_url(entry.rel_path))
                return
            panel.model.value = entry.rel_path

        drawer = library_drawer(services, selected=model, on_launch=pick)
        with shell.frame("/launch", user=user, drawer=drawer):
            panel = LaunchPanel(services, model, instance)
        return None
