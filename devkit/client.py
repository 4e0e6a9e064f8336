"""A small client for a real ComfyUI server: queue an API graph, follow the websocket, read history and files."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import websocket


class ExecutionError(AssertionError):
    """ComfyUI reported execution_error (or refused the graph); the message names the node and the error."""


@dataclass
class RunResult:
    prompt_id: str
    events: list[dict]
    history: dict

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    def node_output(self, node_id: str) -> dict:
        return self.outputs.get(str(node_id), {})

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == kind]

    def progress_of(self, node_id: str) -> list[tuple[int, int]]:
        return [(e["data"]["value"], e["data"]["max"]) for e in self.events_of("progress")
                if str(e["data"].get("node")) == str(node_id)]


@dataclass
class ComfyClient:
    url: str
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def get(self, path: str, **kw) -> requests.Response:
        r = requests.get(self.url + path, timeout=60, **kw)
        r.raise_for_status()
        return r

    def object_info(self) -> dict:
        return self.get("/object_info").json()

    def queue(self, graph: dict) -> str:
        r = requests.post(self.url + "/prompt", json={"prompt": graph, "client_id": self.client_id}, timeout=60)
        if r.status_code != 200:
            raise ExecutionError(f"/prompt refused the graph ({r.status_code}): {r.text[:4000]}")
        body = r.json()
        # ComfyUI accepts a graph with some invalid outputs, runs the rest and reports success: never let that pass
        if body.get("node_errors"):
            raise ExecutionError(f"/prompt found invalid nodes: {str(body['node_errors'])[:4000]}")
        return body["prompt_id"]

    def run(self, graph: dict, timeout: float = 600.0, expect_error: bool = False,
            on_event: Callable[[dict], None] | None = None, expect_interrupted: bool = False) -> RunResult:
        """Queue ``graph`` and follow the websocket until it succeeds (or fails: ExecutionError). ``on_event`` sees
        each event of this prompt as it comes (to interrupt a run, say)."""
        ws = websocket.create_connection(self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}",
                                         timeout=timeout)
        events: list[dict] = []
        try:
            prompt_id = self.queue(graph)
            deadline = time.monotonic() + timeout
            error = None
            interrupted = False
            while time.monotonic() < deadline:
                msg = ws.recv()
                if not isinstance(msg, str):  # binary preview frames
                    continue
                event = json.loads(msg)
                events.append(event)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if on_event is not None:
                    on_event(event)
                kind = event.get("type")
                if kind == "execution_interrupted":
                    interrupted = True
                    break
                if kind == "execution_error":
                    error = data
                    break
                if kind == "execution_success":
                    break
                if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
            else:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s")
        finally:
            ws.close()
        history = self.history(prompt_id)
        if error is not None and not expect_error:
            raise ExecutionError(
                f"node {error.get('node_id')} ({error.get('node_type')}) failed: "
                f"{error.get('exception_type')}: {error.get('exception_message')}\n"
                + "".join(error.get("traceback", [])[-6:]))
        if interrupted != expect_interrupted:
            raise ExecutionError("the run was interrupted" if interrupted else "the run was not interrupted")
        if error is None and expect_error:
            raise AssertionError("the graph ran without the expected execution_error")
        return RunResult(prompt_id, events, history)

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free: what the frontend's "Unload models" / "Free model and node cache" buttons send."""
        requests.post(self.url + "/free", json={"unload_models": unload_models, "free_memory": free_memory},
                      timeout=30).raise_for_status()

    def wait_idle(self, timeout: float = 300.0) -> None:
        """Until nothing is running or pending in the queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            q = self.get("/queue").json()
            if not q["queue_running"] and not q["queue_pending"]:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the queue did not empty within {timeout}s")

    def history(self, prompt_id: str) -> dict:
        for _ in range(50):
            h = self.get(f"/history/{prompt_id}").json()
            if prompt_id in h:
                return h[prompt_id]
            time.sleep(0.1)
        return {}

    def fetch_file(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        return self.get("/view", params={"filename": filename, "subfolder": subfolder, "type": type}).content

    def output_images(self, result: RunResult, node_id: str) -> list[bytes]:
        return [self.fetch_file(i["filename"], i.get("subfolder", ""), i.get("type", "output"))
                for i in result.node_output(node_id).get("images", [])]


def execution_error_of(result: RunResult) -> dict | None:
    errs = result.events_of("execution_error")
    return errs[0]["data"] if errs else None
