"""`distrinews deploy-space`: the staged Space repo, and real deploys over HTTP against tests/hub_server.py.

The CLI runs in a subprocess (`python -m distrinews deploy-space ...`) with HF_ENDPOINT pointing at FakeHub
and Xet off, so the real huggingface_hub create_repo / variables / upload_folder code does the talking. A fake
token is planted in HF_TOKEN and searched for everywhere except the Authorization header.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard

import distrinews
from conftest import REPO_ROOT
from distrinews.core.errors import HubInputError
from distrinews.hub.space_deploy import stage_space
from hub_server import FakeHub, assert_token_absent

SPACE_ID = "distrinews-test/news-space"
MODEL_ID = "distrinews-test/ag-news-tiny"
REVISION = "0123456789abcdef0123456789abcdef01234567"
APP_DIR = REPO_ROOT / "app"
PACKAGE_DIR = REPO_ROOT / "distrinews"


def _fake_token() -> str:
    return "hf_" + "".join(random.Random().choices(string.ascii_letters, k=34))


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _package_modules(package_dir: Path) -> dict[str, bytes]:
    return {f"distrinews/{name}": data for name, data in _files(package_dir).items()
            if name.endswith(".py") and "__pycache__" not in name}


def _expected_files() -> dict[str, bytes]:
    """What the Space repo must hold besides README.md: the Dockerfile, the app and its requirements (what the
    Dockerfile installs and runs), the package's .py files."""
    files = {"Dockerfile": (APP_DIR / "Dockerfile").read_bytes()}
    files.update({f"app/{name}": (APP_DIR / name).read_bytes() for name in ("app.py", "requirements.txt")})
    return files | _package_modules(PACKAGE_DIR)


def _dockerfile_copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for line in dockerfile.replace("\\\n", " ").splitlines():  # join continued lines first
        if line.split()[:1] and line.split()[0].upper() in ("COPY", "ADD"):
            words = shlex.split(line)
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def test_stage_space_writes_a_docker_space_repo(tmp_path):
    staged = stage_space(tmp_path / "space", MODEL_ID, REVISION)
    files = _files(staged)
    card = SpaceCard(files.pop("README.md").decode())
    assert card.data.models == [MODEL_ID]
    assert (card.data.sdk, card.data.app_port, card.data.title) == ("docker", 7860, "DistriNews")
    assert card.text == SpaceCard((APP_DIR / "README.md").read_text(encoding="utf-8")).text  # body untouched
    assert REVISION not in json.dumps(card.data.to_dict())  # the pin is a Space variable, not a file
    assert files == _expected_files()
    assert {"Dockerfile", "app/app.py", "app/requirements.txt", "distrinews/__init__.py",
            "distrinews/serving/service.py"} <= set(files)
    assert not [path for path in staged.rglob("*") if path.name == "__pycache__" or path.suffix == ".pyc"]

    # The image builds from this folder as its context: every COPY source of the Dockerfile is in it.
    sources = _dockerfile_copy_sources(files["Dockerfile"].decode())
    assert sources == ["app/requirements.txt", "distrinews", "app"], sources
    assert all((staged / source).exists() for source in sources)

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(HubInputError, match="not an empty folder"):
        stage_space(tmp_path / "busy", MODEL_ID, None)
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]


def test_stage_space_leaves_out_bytecode_and_needs_a_clone(tmp_path, monkeypatch):
    # A checkout with bytecode next to the sources (the real one has it only when something imported it).
    clone = tmp_path / "clone"
    shutil.copytree(APP_DIR, clone / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PACKAGE_DIR, clone / "distrinews", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in (clone / "app", clone / "distrinews", clone / "distrinews" / "serving"):
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00bytecode")
    monkeypatch.setattr(distrinews, "__file__", str(clone / "distrinews" / "__init__.py"))
    staged = stage_space(tmp_path / "space", MODEL_ID, None)
    assert (staged / "app" / "app.py").is_file() and (staged / "distrinews" / "serving" / "service.py").is_file()
    assert not [path for path in staged.rglob("*") if "__pycache__" in path.parts or path.suffix == ".pyc"]

    # Installed from a wheel: the package has no app/ next to it.
    shutil.rmtree(clone / "app")
    with pytest.raises(HubInputError, match="clone of the DistriNews repository"):
        stage_space(tmp_path / "space2", MODEL_ID, None)


def test_stage_only_leaves_out_everything_but_the_spaces_own_files(tmp_path):
    """A clone with a local .env, a stray file and a scratch folder in app/, and hidden files in the package: the
    Space (public by default) gets the files it is made of and nothing else."""
    clone = tmp_path / "clone"
    shutil.copytree(APP_DIR, clone / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PACKAGE_DIR, clone / "distrinews", ignore=shutil.ignore_patterns("__pycache__"))
    secret = _fake_token()
    (clone / "app" / ".env").write_text(f"HF_TOKEN={secret}\n")
    (clone / "app" / "notes-to-self.txt").write_text(f"token {secret}\n")
    (clone / "app" / "scratch").mkdir()
    (clone / "app" / "scratch" / "try.py").write_text(f"TOKEN = {secret!r}\n")
    (clone / "distrinews" / ".local_settings.py").write_text(f"TOKEN = {secret!r}\n")
    (clone / "distrinews" / ".ipynb_checkpoints").mkdir()
    (clone / "distrinews" / ".ipynb_checkpoints" / "cli-checkpoint.py").write_text(f"TOKEN = {secret!r}\n")
    (clone / "distrinews" / "added_module.py").write_text("ADDED = 1\n")  # shows the clone's package was staged
    env = {**os.environ, "PYTHONPATH": str(clone)}
    result = subprocess.run([sys.executable, "-m", "distrinews", "deploy-space", SPACE_ID, "--model_id", MODEL_ID,
                             "--stage_only", str(tmp_path / "staged")], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    files = _files(tmp_path / "staged")
    assert {name for name in files if not name.startswith("distrinews/")} == \
        {"Dockerfile", "README.md", "app/app.py", "app/requirements.txt"}
    expected_modules = {name: data for name, data in _package_modules(clone / "distrinews").items()
                        if "/." not in name}
    assert "distrinews/added_module.py" in expected_modules
    assert {name: data for name, data in files.items() if name.startswith("distrinews/")} == expected_modules
    assert not [name for name, data in files.items() if secret.encode() in data]


def _deploy(hub: FakeHub, token: str | None, hf_home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_OFFLINE": "0", "HF_HOME": str(hf_home), "HF_TOKEN": token or ""}
    return subprocess.run([sys.executable, "-m", "distrinews", "deploy-space", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_deploy_space_creates_the_space_in_one_commit_with_its_variables(tmp_path):
    token, hf_home = _fake_token(), tmp_path / "hf-home"
    with FakeHub(token) as hub:
        staged = _deploy(hub, token, hf_home, SPACE_ID, "--model-id", MODEL_ID, "--revision", REVISION,
                         "--stage-only", str(tmp_path / "staged"))
        assert staged.returncode == 0, staged.stderr[-3000:]
        assert not hub.requests, "--stage_only must not talk to the Hub"
        result = _deploy(hub, token, hf_home, SPACE_ID, "--model-id", MODEL_ID, "--revision", REVISION, "--private")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert json.loads(staged.stdout.strip().splitlines()[-1])["staged"] == str(tmp_path / "staged")

    create = [json.loads(r.body) for r in hub.requests if r.path == "/api/repos/create"]
    assert create == [{"name": "news-space", "organization": "distrinews-test", "visibility": "private",
                       "type": "space", "sdk": "docker"}]
    assert not hub.repos, "a model repo was created"
    space = hub.spaces[SPACE_ID]
    assert (space.repo_type, space.sdk, space.private) == ("space", "docker", True)
    assert space.variables == {"MODEL_ID": MODEL_ID, "MODEL_REVISION": REVISION}

    commits = hub.commits_made()
    assert len(commits) == 1 and commits[0].path.startswith(f"/api/spaces/{SPACE_ID}/commit/main")
    head = space.history()[0]
    assert head.summary == f"Deploy DistriNews serving {MODEL_ID}" and len(space.history()) == 2
    files = space.files("main")
    assert {"README.md", "Dockerfile", "app/app.py", "distrinews/serving/service.py", ".gitattributes"} <= set(files)
    assert {name: data for name, data in files.items() if name != ".gitattributes"} == \
        _files(tmp_path / "staged"), "the commit differs from what --stage_only writes"
    assert SpaceCard(files["README.md"].decode()).data.models == [MODEL_ID]

    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record == {"space_id": SPACE_ID, "model_id": MODEL_ID, "revision": REVISION, "commit_sha": head.sha,
                      "url": f"{hub.endpoint}/spaces/{SPACE_ID}"}
    assert "stays public" not in output

    assert all(r.headers.get("authorization") == f"Bearer {token}" for r in hub.requests), \
        "the planted token was not the one used"
    assert_token_absent(token, [staged.stdout, staged.stderr, result.stdout, result.stderr],
                         [tmp_path / "staged", hf_home], hub)


def test_redeploy_retries_a_503_and_clears_what_the_last_deploy_left(tmp_path):
    token = _fake_token()
    with FakeHub(token) as hub:
        hub.seed(SPACE_ID, {"README.md": b"---\nsdk: docker\n---\nold\n", "distrinews/removed.py": b"old = 1\n",
                            "app/app.py": b"old app\n", "notes.md": b"kept"},
                 space_sdk="docker", variables={"MODEL_ID": "someone/old-model", "MODEL_REVISION": "abc123",
                                                "QUANTIZE": "int8"})
        hub.fail_next("POST", r"/commit/", 503)
        result = _deploy(hub, token, tmp_path / "hf-home", SPACE_ID, "--model-id", MODEL_ID)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("retrying in") == 1 and "HTTP 503" in output
    assert len(hub.commits_made()) == 1
    space = hub.spaces[SPACE_ID]
    # No --revision: the Space follows the model's main branch, so the old pin goes; other settings stay.
    assert space.variables == {"MODEL_ID": MODEL_ID, "QUANTIZE": "int8"}
    files = space.files("main")
    assert "distrinews/removed.py" not in files and files["notes.md"] == b"kept"
    assert files["app/app.py"] == (APP_DIR / "app.py").read_bytes()
    assert [c.summary for c in space.history()] == [f"Deploy DistriNews serving {MODEL_ID}", "earlier push"]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["revision"] is None and record["commit_sha"] == space.branches["main"]


@pytest.mark.parametrize("case", ["bad space id", "bad model id", "no token"])
def test_bad_input_fails_in_one_line_before_any_request(tmp_path, case):
    token = _fake_token()
    args = {"bad space id": ["not a space", "--model-id", MODEL_ID],
            "bad model id": [SPACE_ID, "--model-id", "../etc"],
            "no token": [SPACE_ID, "--model-id", MODEL_ID]}[case]
    expected = {"bad space id": "error: space id 'not a space' must look like USER/NAME",
                "bad model id": "error: model id '../etc' must look like USER/NAME",
                "no token": "error: no Hugging Face token found"}[case]
    with FakeHub(token) as hub:
        result = _deploy(hub, None if case == "no token" else token, tmp_path / "empty-hf-home", *args)
    assert result.returncode == 2, result.stderr  # bad input: nothing was attempted
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr
    assert not hub.requests and not hub.spaces
