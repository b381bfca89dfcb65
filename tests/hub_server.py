"""A small Hub-compatible HTTP endpoint on 127.0.0.1 for testing pushes, and nothing more.

It implements only the routes ``huggingface_hub``'s ``create_repo``, ``create_branch`` and
``upload_folder`` call when Xet is off (``HF_HUB_DISABLE_XET=1``): repo creation, YAML validation,
preupload, the git-LFS batch API with a presigned-style PUT, tree listing, repo info and the NDJSON
commit. It checks what the real Hub checks that matters here (bearer token, LFS content hashes,
binary files must go through LFS, branch existence) and records every request, with the process id
of the client that sent it, so tests can count commits and grep traffic for leaked secrets.

Spaces (for ``distrinews deploy-space``): ``create_repo(repo_type="space", space_sdk=...)``, the same
revision/tree/preupload/commit routes under ``/api/spaces/``, and the Space variables API
(``add_space_variable``: POST ``{"key", "value"[, "description"]}``, ``delete_space_variable``: DELETE
``{"key"}``; both answer with all variables). Spaces live in their own namespace, as on the Hub. The LFS
routes serve model repos only (a Space deploy uploads only text files).

    with FakeHub(token="hf_...") as hub:          # hub.endpoint -> HF_ENDPOINT
        ...                                       # hub.requests, hub.repos["user/name"].files("main")
        ...                                       # hub.spaces["user/space"].sdk, .variables, .files("main")
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import psutil
import yaml

# The .gitattributes the Hub writes into a new model repo (abridged to the patterns that matter here).
LFS_PATTERNS = ["*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.model",
                "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
                "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
                "*.zst", "*tfevents*"]
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
REGULAR_FILE_LIMIT = 10 * 1024 * 1024
SPACE_SDKS = ("gradio", "docker", "static", "streamlit")


@dataclass
class Commit:
    sha: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    repo_type: str = "model"
    sdk: str | None = None  # spaces only
    variables: dict[str, str] = field(default_factory=dict)  # spaces only: key -> value

    def files(self, revision: str = "main") -> dict[str, bytes]:
        return self.commits[self.branches.get(revision, revision)].files

    def history(self, branch: str = "main") -> list[Commit]:
        commits, sha = [], self.branches[branch]
        while sha is not None:
            commits.append(self.commits[sha])
            sha = self.commits[sha].parent
        return commits


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    client_pid: int | None


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class FakeHub:
    def __init__(self, token: str, commit_delay_s: float = 0.0) -> None:
        self.token = token
        self.commit_delay_s = commit_delay_s
        self.repos: dict[str, Repo] = {}  # model repos
        self.spaces: dict[str, Repo] = {}  # space repos (their own namespace, as on the Hub)
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, method: str, path_pattern: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests whose path matches ``path_pattern`` (a regex) with ``status``."""
        self._faults.extend([(method, path_pattern, status)] * times)

    def seed(self, repo_id: str, files: dict[str, bytes], *, space_sdk: str | None = None,
             variables: dict[str, str] | None = None) -> None:
        """An existing repo holding ``files`` on main, as an earlier push would have left it; with ``space_sdk``
        a Space (with ``variables``) instead of a model repo."""
        repo = Repo(repo_id, private=False, repo_type="space" if space_sdk else "model", sdk=space_sdk,
                    variables=dict(variables or {}))
        self._add_commit(repo, "main", None, "earlier push", "", {".gitattributes": GITATTRIBUTES, **files})
        (self.spaces if space_sdk else self.repos)[repo_id] = repo

    def commits_made(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and "/commit/" in r.path and r.status == 200]

    # ---- request handling -------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers: dict, body: bytes):
        for fault in self._faults:
            if fault[0] == method and re.search(fault[1], path):
                self._faults.remove(fault)
                raise _HubError(fault[2], "injected failure")
        if path.startswith("/lfs-upload/"):  # a presigned storage URL: the client sends no token there
            return self._lfs_put(path.rsplit("/", 1)[1], body)
        if headers.get("authorization") != f"Bearer {self.token}":
            raise _HubError(401, "Invalid credentials in Authorization header")
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        match = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)", path)
        if match and method == "POST":
            return self._lfs_batch(match[1], json.loads(body)) if match[2] == "batch" else \
                self._lfs_verify(json.loads(body))
        match = re.fullmatch(r"/api/spaces/([^/]+/[^/]+)/variables", path)
        if match:
            return self._space_variables(method, match[1], json.loads(body) if body else {})
        match = re.fullmatch(r"/api/(models|spaces)/([^/]+/[^/]+)/(revision|tree|preupload|commit|branch)/"
                             r"([^/]+)(/.*)?", path)
        if not match:
            raise _HubError(404, f"no such route: {method} {path}")
        repo = (self.repos if match[1] == "models" else self.spaces).get(match[2])
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        action, revision = match[3], unquote(match[4])
        if action == "branch" and method == "POST":
            return self._create_branch(repo, revision, json.loads(body) if body else {})
        if revision not in repo.branches and revision not in repo.commits:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if action == "revision" and method == "GET":
            sha = repo.branches.get(revision, revision)
            info = {"id": repo.repo_id, "sha": sha, "private": repo.private,
                    "siblings": [{"rfilename": name} for name in sorted(repo.files(sha))]}
            return {**info, "sdk": repo.sdk} if repo.repo_type == "space" else {**info, "modelId": repo.repo_id}
        if action == "tree" and method == "GET":
            return [{"type": "file", "path": name, "size": len(data), "oid": _git_sha1(data)}
                    for name, data in sorted(repo.files(revision).items())]
        if action == "preupload" and method == "POST":
            return self._preupload(repo, revision, json.loads(body))
        if action == "commit" and method == "POST":
            return self._commit(repo, revision, body)
        raise _HubError(405, f"{method} not allowed on {path}")

    def _create_repo(self, payload: dict):
        repo_id = f"{payload['organization']}/{payload['name']}"
        repo_type = payload.get("type", "model")
        if repo_type not in ("model", "space"):
            raise _HubError(400, "this endpoint only hosts model and space repos")
        if repo_type == "space" and payload.get("sdk") not in SPACE_SDKS:
            raise _HubError(400, f"a Space needs an sdk, one of {SPACE_SDKS}")
        repos, url = (self.spaces, f"{self.endpoint}/spaces/{repo_id}") if repo_type == "space" else \
            (self.repos, f"{self.endpoint}/{repo_id}")
        if repo_id in repos:  # the Hub names the existing repo, and clients rely on it
            raise _HubError(409, f"You already created this {repo_type} repo", url=url)
        repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")),
                    repo_type=repo_type, sdk=payload.get("sdk") if repo_type == "space" else None)
        self._add_commit(repo, "main", None, "initial commit", "", {".gitattributes": GITATTRIBUTES})
        repos[repo_id] = repo
        return {"url": url, "name": repo_id}

    def _space_variables(self, method: str, space_id: str, payload: dict):
        space = self.spaces.get(space_id)
        if space is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        if method == "POST":
            if not isinstance(payload.get("key"), str) or not isinstance(payload.get("value"), str):
                raise _HubError(400, "a variable needs a string key and value")
            space.variables[payload["key"]] = payload["value"]
        elif method == "DELETE":
            space.variables.pop(payload.get("key"), None)
        elif method != "GET":
            raise _HubError(405, f"{method} not allowed on /api/spaces/{space_id}/variables")
        return {key: {"value": value, "updatedAt": "2026-01-01T00:00:00.000Z"}
                for key, value in space.variables.items()}

    def _create_branch(self, repo: Repo, branch: str, payload: dict):
        if branch in repo.branches:
            raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = repo.branches.get(payload.get("startingPoint") or "main")
        return {}

    def _validate_yaml(self, payload: dict):
        content = payload["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        try:
            metadata = yaml.safe_load(match[1]) if match else {}
        except yaml.YAMLError as err:
            raise _HubError(400, f"Invalid YAML in README.md: {err}")
        if not isinstance(metadata, dict):
            raise _HubError(400, "README.md metadata must be a mapping")
        return {"errors": [], "warnings": []}

    def _preupload(self, repo: Repo, revision: str, payload: dict):
        current = repo.files(revision)
        answers = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            binary = b"\0" in sample or not _is_utf8(sample)
            lfs = binary or item["size"] > REGULAR_FILE_LIMIT or \
                any(fnmatch.fnmatch(item["path"], pattern) for pattern in LFS_PATTERNS)
            answer = {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if item["path"] in current:
                data = current[item["path"]]
                answer["oid"] = hashlib.sha256(data).hexdigest() if lfs else _git_sha1(data)
            answers.append(answer)
        return {"files": answers, "commitOid": repo.branches.get(revision, revision)}

    def _lfs_batch(self, repo_id: str, payload: dict):
        if repo_id not in self.repos:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-upload/{item['oid']}"},
                    "verify": {"href": f"{self.endpoint}/{repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def _lfs_put(self, oid: str, body: bytes):
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HubError(400, "uploaded content does not match its sha256")
        self.lfs_objects[oid] = body
        return {}

    def _lfs_verify(self, payload: dict):
        stored = self.lfs_objects.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            raise _HubError(404, "object not uploaded")
        return {}

    def _commit(self, repo: Repo, revision: str, body: bytes):
        if revision not in repo.branches:
            raise _HubError(400, f"can only commit to a branch, not {revision}")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]
        if header["key"] != "header":
            raise _HubError(400, "the first NDJSON line must be the header")
        parent = repo.branches[revision]
        if header["value"].get("parentCommit") not in (None, parent):
            raise _HubError(412, "parentCommit is not the head of the branch")
        files = dict(repo.commits[parent].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                data = base64.b64decode(value["content"])
                if b"\0" in data[:1024]:
                    raise _HubError(400, f"{value['path']} is binary: binary files must be uploaded with LFS")
                files[value["path"]] = data
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise _HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = self.lfs_objects[value["oid"]]
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {name: data for name, data in files.items() if not name.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise _HubError(400, f"unsupported commit operation {key}")
        sha = self._add_commit(repo, revision, parent, header["value"]["summary"],
                               header["value"].get("description", ""), files)
        return {"commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{sha}", "commitOid": sha,
                "success": True, "pullRequestUrl": None}

    @staticmethod
    def _add_commit(repo: Repo, branch: str, parent, summary: str, description: str, files: dict) -> str:
        digest = hashlib.sha1(json.dumps([parent, summary, description, time.time_ns(),
                                          sorted((name, _git_sha1(data)) for name, data in files.items())]).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = Commit(sha, parent, summary, description, files)
        repo.branches[branch] = sha
        return sha


def _make_handler(hub: FakeHub):
    pids_by_port: dict[int, int | None] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's HTTP client expects

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _client_pid(self) -> int | None:
            port = self.client_address[1]
            if port not in pids_by_port:
                pids_by_port[port] = next(
                    (c.pid for c in psutil.net_connections(kind="tcp")
                     if c.laddr and c.laddr.port == port and c.laddr.ip == "127.0.0.1" and c.pid != os.getpid()),
                    None)
            return pids_by_port[port]

        def _serve(self) -> None:
            body = self._body()
            url = urlsplit(self.path)
            headers = {key.lower(): value for key, value in self.headers.items()}
            extra_headers = {}
            if hub.commit_delay_s and self.command == "POST" and "/commit/" in url.path:
                time.sleep(hub.commit_delay_s)  # a slow Hub: the committing process is held up this long
            with hub._lock:
                try:
                    status, payload = 200, hub.handle(self.command, unquote(url.path), parse_qs(url.query), headers, body)
                except _HubError as err:
                    status, payload = err.status, {"error": err.message, **err.extra}
                    extra_headers["X-Error-Message"] = err.message
                    if err.code:
                        extra_headers["X-Error-Code"] = err.code
                hub.requests.append(RecordedRequest(self.command, self.path, headers, body, status, self._client_pid()))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra_headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start > len(data) - 4  # a multi-byte character cut at the end of the sample is fine
    return True


def assert_token_absent(token: str, texts: list[str], folders: list[Path], hub: "FakeHub") -> None:
    """The token is nowhere but in Authorization headers: outputs, files, request bodies/paths, committed files."""
    needle = token.encode()
    leaks = [f"output #{i}" for i, text in enumerate(texts) if token in text]
    for folder in folders:
        leaks += [str(path) for path in folder.rglob("*") if path.is_file() and needle in path.read_bytes()]
    for request in hub.requests:
        visible = {key: value for key, value in request.headers.items() if key != "authorization"}
        if needle in request.body or token in json.dumps(visible) or token in request.path:
            leaks.append(f"request {request.method} {request.path}")
    for repo in [*hub.repos.values(), *hub.spaces.values()]:
        leaks += [f"{repo.repo_id}:{name}" for commit in repo.commits.values()
                  for name, data in commit.files.items() if needle in data]
        leaks += [f"{repo.repo_id} variable {key}" for key, value in repo.variables.items() if token in value]
    assert not leaks, f"the token leaked into: {leaks}"
