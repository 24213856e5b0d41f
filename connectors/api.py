"""The REST API of `simpul connect`, in Kafka Connect's shape: list the connectors, their
status, pause, resume and restart them; plus /metrics and /health. `serve` runs the runtime
(`connectors.runtime`) and this API together until SIGINT/SIGTERM."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.runtime import ConnectRuntime, build_runtime
from simpul.redaction import redacted
from simpul.settings import Settings
from simpul.topology.model import Topology


def _not_found(name: str) -> JSONResponse:
    return JSONResponse(
        {"error_code": 404, "message": f"Connector {name} not found"}, status_code=404
    )


def create_app(runtime: ConnectRuntime) -> FastAPI:
    """The REST API in Kafka Connect's shape (the subset that applies to declared connectors)."""
    app = FastAPI(
        title="Simpul connectors",
        description="Status and control of the connectors `simpul connect` runs.",
        version="1",
    )

    @app.get("/connectors", summary="Names of the connectors (expand=status adds their status)")
    def list_connectors(expand: str | None = None) -> Any:
        if expand == "status":
            return {
                name: {"status": task.status(runtime.worker_id)}
                for name, task in runtime.tasks.items()
            }
        return sorted(runtime.tasks)

    @app.get("/connectors/{name}", summary="A connector's configuration and tasks")
    def get_connector(name: str) -> Any:
        task = runtime.tasks.get(name)
        if task is None:
            return _not_found(name)
        return {
            "name": name,
            "config": redacted(task.spec.declared()),
            "tasks": [{"connector": name, "task": 0}],
            "type": "source",
        }

    @app.get("/connectors/{name}/status", summary="State of the connector and its tasks")
    def get_status(name: str) -> Any:
        task = runtime.tasks.get(name)
        return _not_found(name) if task is None else task.status(runtime.worker_id)

    def act(name: str, action: str, status_code: int) -> Any:
        """Run ``task.<action>()`` on the named connector; 404 when there is none."""
        task = runtime.tasks.get(name)
        if task is None:
            return _not_found(name)
        getattr(task, action)()
        return Response(status_code=status_code)

    @app.put("/connectors/{name}/pause", status_code=202, summary="Pause: stop reading")
    def pause(name: str) -> Any:
        return act(name, "pause", 202)

    @app.put("/connectors/{name}/resume", status_code=202, summary="Resume a paused connector")
    def resume(name: str) -> Any:
        return act(name, "resume", 202)

    @app.post(
        "/connectors/{name}/restart",
        status_code=204,
        response_class=Response,
        response_model=None,
        summary="Restart the task from its durable position (clears FAILED)",
    )
    def restart(name: str) -> Any:
        return act(name, "restart", 204)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", summary="Liveness, and how many tasks run or failed")
    def health() -> Any:
        states = [str(task.state) for task in runtime.tasks.values()]
        return {
            "connectors": len(states),
            "running": states.count("RUNNING"),
            "failed": states.count("FAILED"),
        }

    return app


def serve(settings: Settings, topology: Topology) -> list[dict[str, Any]]:
    """Run every connector and the REST API until SIGINT/SIGTERM; then stop them cleanly and
    return their final status."""
    from simpul.httpauth import TokenAuth, http_token, open_paths
    from simpul.serving import run

    token = http_token(settings, create=True) or ""
    runtime = build_runtime(settings, topology)
    runtime.start()
    try:
        app = TokenAuth(create_app(runtime), token, open_paths(settings))
        run(app, settings.connect.port, settings.http.bind_host, settings.http.max_body_bytes)
    finally:
        runtime.stop()
    return [task.status(runtime.worker_id) for task in runtime.tasks.values()]
