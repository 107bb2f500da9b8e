"""A recording pass-through between Open WebUI and ember, for `make compat` (compat/run_open_webui.py starts it).

Every request Open WebUI sends to ember goes through unchanged and every answer comes back unchanged, chunk by chunk
as ember writes it (streaming is kept: each chunk is written on as soon as it arrives). Beside that, the log gets a
JSON line when each exchange starts (so one that never ends still shows) and one when it ends: the route, the
request body (long texts shortened, tools by name), the status, how the answer arrived (chunks, time to first
chunk, total time), the first and last chunks, and the whole body of an error (and the whole request that got it,
saved beside the log as request-ID.json). That is how the report names the exact request ember answered wrongly.

    python compat/ember_recorder.py --listen 127.0.0.1:PORT --upstream http://127.0.0.1:EMBER_PORT --log FILE \
        [--watch WORD]
"""

import argparse
import asyncio
import json
import time
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "host"}


def shorten(value, limit: int = 400):
    """The request body as the log keeps it: texts cut to `limit`, tools by name, embeddings by count."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"…(+{len(value) - limit} chars)"
    if isinstance(value, list):
        return [shorten(v, limit) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "tools" and isinstance(v, list):
                out[k] = [(t.get("function") or {}).get("name", "?") if isinstance(t, dict) else "?" for t in v]
            elif k == "images" and isinstance(v, list):
                out[k] = f"<{len(v)} images>"
            else:
                out[k] = shorten(v, limit)
        return out
    return value


def parse_body(raw: bytes):
    if not raw:
        return None
    try:
        return shorten(json.loads(raw))
    except ValueError:
        return shorten(raw.decode("utf-8", "replace"))


class Recorder:
    def __init__(self, upstream: str, log_path: str, watch: list[str]):
        self.upstream = upstream.rstrip("/")
        self.watch = watch
        self.log_dir = Path(log_path).parent
        self.log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open while the server runs
        self.session: ClientSession | None = None
        self.count = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.session is None:
            self.session = ClientSession(timeout=ClientTimeout(total=None, sock_connect=10), auto_decompress=False)
        started = time.monotonic()
        raw = await request.read()
        self.count += 1
        entry = {"id": self.count, "at": round(time.time(), 3), "method": request.method, "path": request.path_qs,
                 "request": parse_body(raw)}
        text = raw.decode("utf-8", "replace")
        if watched := [w for w in self.watch if w in text]:
            entry["watched"] = watched  # the words asked for that the whole body holds (the log shortens it)
        # A line when it starts too, so that an answer that never ends still shows in the log.
        self.log.write(json.dumps({"id": self.count, "started": entry["at"], "method": request.method,
                                   "path": request.path_qs}) + "\n")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        response = None
        try:
            async with self.session.request(request.method, self.upstream + request.path_qs, data=raw or None,
                                            headers=headers, allow_redirects=False) as upstream:
                entry["status"] = upstream.status
                entry["content_type"] = upstream.headers.get("Content-Type", "")
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})
                await response.prepare(request)
                chunks, first, last, body = 0, None, None, b""
                async for chunk in upstream.content.iter_any():
                    if not chunk:
                        continue
                    chunks += 1
                    if first is None:
                        first = time.monotonic() - started
                    if chunks <= 3:
                        entry.setdefault("first_chunks", []).append(chunk[:300].decode("utf-8", "replace"))
                    last = chunk
                    if upstream.status >= 400 and len(body) < 4000:
                        body += chunk
                    await response.write(chunk)
                await response.write_eof()
                entry.update(chunks=chunks, first_chunk_s=round(first, 3) if first is not None else None)
                if last is not None and chunks > 3:
                    entry["last_chunk"] = last[-300:].decode("utf-8", "replace")
                if upstream.status >= 400:
                    entry["error_body"] = body[:4000].decode("utf-8", "replace")
                    if raw:  # the whole request, to replay: curl --data @FILE
                        saved = self.log_dir / f"request-{entry['id']}.json"
                        saved.write_bytes(raw)
                        entry["request_file"] = saved.name
        except (ConnectionResetError, asyncio.CancelledError) as e:  # the client hung up mid-answer
            entry["client_gone"] = type(e).__name__
            raise
        except Exception as e:  # recorded, and answered as a gateway error
            entry["proxy_error"] = f"{type(e).__name__}: {e}"
            if response is None:
                response = web.Response(status=502, text=entry["proxy_error"])
        finally:
            entry["seconds"] = round(time.monotonic() - started, 3)
            self.log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return response

    async def close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()
        self.log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--upstream", required=True, help="ember's URL")
    ap.add_argument("--log", required=True, help="JSON lines, one per exchange")
    ap.add_argument("--watch", action="append", default=[], help="a word to look for in request bodies")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    app = web.Application(client_max_size=1 << 30)
    recorder = Recorder(args.upstream, args.log, args.watch)
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    app.on_cleanup.append(recorder.close)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    main()
