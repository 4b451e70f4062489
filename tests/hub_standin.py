"""A stand-in for the Hugging Face Hub's dataset file API, on loopback.

The Hub cannot be reached from the test machine, so this serves the part of
its HTTP surface the trainer uses, from a local folder per repository:

- GET /api/datasets/OWNER/NAME/tree/REVISION[/PATH]?recursive=...: the files
  (type, path, size, oid), paged with a Link header like the Hub's;
- GET /datasets/OWNER/NAME/resolve/REVISION/PATH: a 302 to a second server
  (another origin, like the Hub's CDN) that honours Range requests.

Unknown repositories, revisions and paths answer 404 with the Hub's
X-Error-Code header; `unavailable` makes the API answer 503 for a while. Every
request is recorded (path, Range, whether an Authorization header came along) so
tests can check what was sent where.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = 2  # entries per tree page: small, so paging is exercised


@dataclass
class Seen:
    server: str
    path: str
    range: str | None
    authorized: bool


@dataclass
class Hub:
    repos: dict[str, Path]
    revisions: tuple[str, ...] = ("main",)
    seen: list[Seen] = field(default_factory=list)
    endpoint: str = ""
    cdn: str = ""
    # API requests still to answer 503 (an overloaded or restarting Hub); -1: all.
    unavailable: int = 0
    _servers: list[http.server.ThreadingHTTPServer] = field(default_factory=list)

    def start(self) -> Hub:
        cdn = self._serve(self._cdn_handler())
        self.cdn = f"http://127.0.0.1:{cdn.server_address[1]}"
        # "localhost" for the API and 127.0.0.1 for the CDN: two origins.
        api = self._serve(self._api_handler())
        self.endpoint = f"http://localhost:{api.server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def _serve(self, handler: type[http.server.BaseHTTPRequestHandler]) -> Any:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def _files(self, repo: str, under: str) -> list[dict[str, Any]]:
        root = self.repos[repo]
        base = root / under if under else root
        found = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        return [
            {
                "type": "file",
                "path": str(p.relative_to(root)),
                "size": p.stat().st_size,
                "oid": hashlib.sha1(p.read_bytes()).hexdigest(),  # noqa: S324 (git's blob id)
            }
            for p in found
        ]

    def _record(self, server: str, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.seen.append(
            Seen(
                server,
                handler.path,
                handler.headers.get("Range"),
                "Authorization" in handler.headers,
            )
        )

    def _api_handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        hub = self

        class Api(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _error(self, code: str) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                hub._record("api", self)
                if hub.unavailable:
                    hub.unavailable -= hub.unavailable > 0
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                url = urllib.parse.urlsplit(self.path)
                parts = [urllib.parse.unquote(p) for p in url.path.split("/")]
                if parts[1:3] == ["api", "datasets"] and len(parts) >= 7 and parts[5] == "tree":
                    self._tree(f"{parts[3]}/{parts[4]}", parts[6], "/".join(parts[7:]), url.query)
                elif parts[1] == "datasets" and len(parts) >= 7 and parts[4] == "resolve":
                    self._resolve(f"{parts[2]}/{parts[3]}", parts[5], "/".join(parts[6:]))
                else:
                    self._error("EntryNotFound")

            def _tree(self, repo: str, revision: str, under: str, query: str) -> None:
                if repo not in hub.repos:
                    return self._error("RepoNotFound")
                if revision not in hub.revisions:
                    return self._error("RevisionNotFound")
                if under and not (hub.repos[repo] / under).exists():
                    return self._error("EntryNotFound")
                entries = hub._files(repo, under)
                cursor = int(dict(urllib.parse.parse_qsl(query)).get("cursor", "0"))
                page = entries[cursor : cursor + PAGE]
                body = json.dumps(page).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if cursor + PAGE < len(entries):
                    params = urllib.parse.parse_qsl(query)
                    params = [(k, v) for k, v in params if k != "cursor"]
                    params.append(("cursor", str(cursor + PAGE)))
                    next_url = f"{hub.endpoint}{self.path.split('?')[0]}?" + urllib.parse.urlencode(
                        params
                    )
                    self.send_header("Link", f'<{next_url}>; rel="next"')
                self.end_headers()
                self.wfile.write(body)
                return None

            def _resolve(self, repo: str, revision: str, path: str) -> None:
                if repo not in hub.repos:
                    return self._error("RepoNotFound")
                if revision not in hub.revisions:
                    return self._error("RevisionNotFound")
                if not (hub.repos[repo] / path).is_file():
                    return self._error("EntryNotFound")
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn}/{repo}/{path}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None

        return Api

    def _cdn_handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        hub = self

        class Cdn(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub._record("cdn", self)
                owner, name, rest = urllib.parse.unquote(self.path).lstrip("/").split("/", 2)
                data = (hub.repos[f"{owner}/{name}"] / rest).read_bytes()
                header = self.headers.get("Range")
                start, end = 0, len(data)
                if header:
                    first, _, last = header.removeprefix("bytes=").partition("-")
                    start, end = int(first), min(len(data), int(last) + 1 if last else len(data))
                body = data[start:end]
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Cdn
