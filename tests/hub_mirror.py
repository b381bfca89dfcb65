"""Serve local model folders as Hub model repos through a real ``olah`` server on 127.0.0.1.

Anything that downloads by repo id (``load_classifier``, ``snapshot_download``, ``from_pretrained``, the
Space) can then be tested over real HTTP with ``HF_ENDPOINT`` pointing at the mirror, no internet needed:

    with HubMirror(tmp_path / "mirror") as mirror:
        sha = mirror.commit("org/name", model_folder, "first version")   # a plain git commit, no LFS
        subprocess.run([...], env={**os.environ, **mirror.client_env(tmp_path / "hf-home")})

olah is run offline (``[accessibility] offline = true``) with its upstream pointed at a closed loopback
port, so nothing can leak to the real Hub; repos live under ``mirrors-path`` as ``models/ORG/NAME`` (or
``datasets/ORG/NAME``) git repositories. Metadata caching is off, so new commits are served at once. ``GET /``
answers 500 in olah, hence readiness is probed on a repo route. Its ``model_info`` and ``dataset_info`` need an
explicit ``revision`` (``datasets.load_dataset(..., revision=SHA)``; a dataset repo needs a README.md too).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

GIT_ENV = {"GIT_AUTHOR_NAME": "DistriNews tests", "GIT_AUTHOR_EMAIL": "tests@distrinews.invalid",
           "GIT_COMMITTER_NAME": "DistriNews tests", "GIT_COMMITTER_EMAIL": "tests@distrinews.invalid"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HubMirror:
    def __init__(self, root: Path, startup_timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen | None = None
        self._log = self.root / "olah.log"

    # ---- repositories -------------------------------------------------------------------------------

    def commit(self, repo_id: str, folder: Path, message: str, repo_type: str = "model") -> str:
        """Make the repo's ``main`` hold exactly the files of ``folder``; return the new commit sha."""
        repo = self.mirrors / f"{repo_type}s" / repo_id
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True, exist_ok=True)
            self._git(repo, "init", "-q", "-b", "main")
        for entry in repo.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        shutil.copytree(folder, repo, dirs_exist_ok=True)
        # Without its index git hashes every file again. With it, git trusts the stat data it holds, and a file of
        # the same size and mtime (copytree keeps mtimes) written within the same second as the one it replaces
        # keeps the old blob: a commit of new weights then held the old ones.
        (repo / ".git" / "index").unlink(missing_ok=True)
        self._git(repo, "add", "-A")
        self._git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", message)
        sha = self._git(repo, "rev-parse", "HEAD").strip()
        if self._process is not None:
            self._wait_for(repo_id, sha, repo_type)
        return sha

    @staticmethod
    def _git(repo: Path, *args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                              env={**os.environ, **GIT_ENV}).stdout

    # ---- server -------------------------------------------------------------------------------------

    def client_env(self, hf_home: Path) -> dict[str, str]:
        """Environment for a client process that should download from this mirror into ``hf_home``."""
        return {"HF_ENDPOINT": self.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(hf_home),
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}

    def __enter__(self) -> "HubMirror":
        self.mirrors.mkdir(parents=True, exist_ok=True)
        closed_port = _free_port()  # the "upstream Hub": nothing listens there
        config = self.root / "olah.toml"
        config.write_text(f"""\
[basic]
host = "127.0.0.1"
port = {self.port}
repos-path = "{self.root / 'cache'}"
hf-scheme = "http"
hf-netloc = "127.0.0.1:{closed_port}"
hf-lfs-netloc = "127.0.0.1:{closed_port}"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{self.port}"
mirror-lfs-netloc = "127.0.0.1:{self.port}"
mirrors-path = ["{self.mirrors}"]
metadata-cache-ttl = 0

[accessibility]
offline = true
""")
        with self._log.open("w") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(self.root / "logs")],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for("readiness/probe", None)
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _wait_for(self, repo_id: str, sha: str | None, repo_type: str = "model") -> None:
        """Until olah answers for ``repo_id`` (any HTTP answer when ``sha`` is None; ``main`` at ``sha`` otherwise)."""
        url = f"{self.endpoint}/api/{repo_type}s/{repo_id}/revision/main"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"olah exited with {self._process.returncode}:\n{self._log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = response.read().decode()
                if sha is None or f'"sha":"{sha}"' in body.replace(" ", ""):
                    return
            except urllib.error.HTTPError:
                if sha is None:
                    return  # the server is up; the probe repo just does not exist
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"olah at {self.endpoint} did not serve {repo_id} within {self.startup_timeout} s:\n"
                           f"{self._log.read_text()[-3000:]}")


@contextmanager
def serve_models(root: Path, models: dict[str, Path]) -> Iterator[HubMirror]:
    """A running mirror whose repos ``{repo_id: folder}`` each hold one commit of that folder."""
    with HubMirror(root) as mirror:
        for repo_id, folder in models.items():
            mirror.commit(repo_id, folder, f"Add {repo_id}")
        yield mirror
