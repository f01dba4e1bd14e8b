"""`http`: call an API through a connection from the config.

The connection supplies the base URL, headers (secrets resolved there, never in
the flow) and timeout; the step gives method, path, query, json/body, headers
and the status codes it `expect`s (default: any 2xx). Transport errors and 5xx
are retryable; other unexpected statuses are not.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from runner.errors import StepFailed
from runner.steps.base import BaseKind, Done, StepContext
from runner.timeutil import parse_duration

MAX_BODY = 16 * 1024 * 1024


class HttpKind(BaseKind):
    name = "http"

    def rendered_effect(self, ctx: StepContext) -> dict[str, Any]:
        """The request as it would be sent, named by its connection (whose secrets stay in the config)."""
        body = {"json": ctx.spec["json"]} if "json" in ctx.spec else {"body": ctx.spec.get("body")}
        return {"connection": ctx.spec["connection"], "method": ctx.spec.get("method", "GET"),
                "path": ctx.spec.get("path", "/"), "query": ctx.spec.get("query"),
                "headers": ctx.spec.get("headers"), **body, "expect": ctx.spec.get("expect")}

    def describe_effect(self, effect: dict[str, Any]) -> str:
        sent = json.dumps(effect["json"], sort_keys=True, default=str) if "json" in effect else effect.get("body")
        return f"{effect['method']} {effect['connection']} {effect['path']}" + (f" {sent}" if sent else "")

    async def execute(self, ctx: StepContext) -> Done:
        if ctx.config is None:
            raise StepFailed("http steps need a config with connections (--config / SIGNOFF_CONFIG)",
                             retryable=False)
        conn = ctx.config.connection(ctx.spec["connection"], draft=ctx.draft)
        if conn.kind != "http":
            raise StepFailed(f"connection '{conn.name}' is a {conn.kind} connection, not http", retryable=False)
        headers = {k: v for k, v in (conn.spec.get("headers") or {}).items() if isinstance(v, str)}
        headers.update({k.split(".", 1)[1]: v for k, v in conn.secret_values.items() if k.startswith("headers.")})
        headers.update({k: str(v) for k, v in (ctx.spec.get("headers") or {}).items()})
        timeout = parse_duration(conn.spec.get("timeout", "30s"))
        request: dict[str, Any] = {"params": ctx.spec.get("query") or None, "headers": headers}
        if "json" in ctx.spec:
            request["json"] = ctx.spec["json"]
        elif "body" in ctx.spec:
            request["content"] = str(ctx.spec["body"]).encode()
        method = ctx.spec.get("method", "GET")
        url = conn.spec["base_url"].rstrip("/") + "/" + str(ctx.spec.get("path", "/")).lstrip("/")
        try:
            async with httpx.AsyncClient(timeout=timeout, verify=conn.spec.get("verify_tls", True),
                                         follow_redirects=False) as client:
                async with client.stream(method, url, **request) as response:
                    body = await self._read(response)
        except httpx.TimeoutException:
            raise StepFailed(f"{method} {url}: no answer within {conn.spec.get('timeout', '30s')}") from None
        except httpx.HTTPError as exc:
            raise StepFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        outputs = self._outputs(response, body)
        expected = ctx.spec.get("expect")
        wanted = [expected] if isinstance(expected, int) else expected
        ok = response.status_code in wanted if wanted else 200 <= response.status_code < 300
        if not ok:
            raise StepFailed(f"{method} {url} answered {response.status_code}, expected "
                             f"{', '.join(map(str, wanted)) if wanted else 'a 2xx status'}",
                             retryable=response.status_code >= 500 or response.status_code == 429, outputs=outputs)
        return Done(outputs)

    async def _read(self, response: httpx.Response) -> bytes:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY:
                raise StepFailed(f"response body is over {MAX_BODY:,} bytes", retryable=False)
            chunks.append(chunk)
        return b"".join(chunks)

    def _outputs(self, response: httpx.Response, body: bytes) -> dict[str, Any]:
        outputs: dict[str, Any] = {"status": response.status_code, "headers": dict(response.headers)}
        if "json" in response.headers.get("content-type", ""):
            try:
                outputs["json"] = json.loads(body)
                return outputs
            except ValueError:
                pass
        outputs["body"] = body.decode("utf-8", "replace")
        return outputs


KIND = HttpKind()
