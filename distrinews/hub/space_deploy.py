"""Deploy the serving Space (app/ + the distrinews package, Docker SDK) wired to a model repo, in one command.

    distrinews deploy-space USER/distrinews --model_id USER/NAME [--revision SHA] [--private]
    distrinews deploy-space USER/distrinews --model_id USER/NAME --stage_only /tmp/space    # build the folder only

Why a command: by hand a deploy is five steps (copy app/ and distrinews/, copy app/README.md and app/Dockerfile
to the root, upload, then set MODEL_ID in the Space settings), and the one easiest to forget, the variable,
is the one the Space cannot start without. Here the Space repo is laid out exactly as app/Dockerfile expects
(its build context is the repository root), the README's Spaces header names the model (``models:``, so the
Space is linked from the model page), and the ``MODEL_ID``/``MODEL_REVISION`` variables are set before the
commit that starts the build, so the container it builds starts with them.

The token is found and guarded as in ``distrinews.hub.push`` (never printed or written); transient failures are
retried the same way, and repeating a deploy is safe: the repo already exists, the variables get the same
values, and an upload with nothing changed makes no commit.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from huggingface_hub import HfApi, SpaceCard, constants

import distrinews

from .. import __version__
from ..core.errors import HubInputError
from .push import check_repo_id, resolve_hub_token, retry_hub_call

# Files of an earlier deploy under these folders that this one does not upload are deleted in the same commit
# (a module removed from the package must not linger in the image); anything else in the Space repo is kept.
OWNED_PATTERNS = ["app/*", "distrinews/*"]
# What a Space is made of, by name: the image runs app/app.py with app/requirements.txt installed (app/Dockerfile),
# at the root go the Dockerfile and the card. Nothing else in app/ travels (a local .env, notes, scratch files):
# a Space is public unless made private.
SPACE_APP_FILES = ("app.py", "requirements.txt")


def repository_app_dir() -> Path:
    """The repository's app/ folder next to the package; absent when distrinews was installed from a wheel."""
    app_dir = Path(distrinews.__file__).resolve().parents[1] / "app"
    missing = [name for name in ("Dockerfile", "README.md", *SPACE_APP_FILES) if not (app_dir / name).is_file()]
    if missing:
        raise HubInputError(f"the Space sources ({', '.join(missing)}) are not in {app_dir}: distrinews seems "
                           "to be installed as a package, not run from a clone. Run deploy-space from a clone of "
                           "the DistriNews repository (`pip install -e .` there).")
    return app_dir


def stage_space(target: Path, model_id: str, revision: str | None) -> Path:
    """Write the Space repo into ``target`` (new or empty): Dockerfile and README.md at the root, the
    ``SPACE_APP_FILES`` in app/, the package's modules in distrinews/; nothing else.

    The README's Spaces header gets ``models: [model_id]``. ``revision`` is only checked: the pin is the
    ``MODEL_REVISION`` Space variable, not a file, so one staged folder serves any revision.
    """
    check_repo_id(model_id, "model id")
    check_revision(revision)
    app_dir = repository_app_dir()
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise HubInputError(f"{target} is not an empty folder: stage the Space into a new or empty one")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HubInputError(f"cannot create the staging folder {target}: {err.strerror or err}") from None

    shutil.copy2(app_dir / "Dockerfile", target / "Dockerfile")
    card = SpaceCard((app_dir / "README.md").read_text(encoding="utf-8"))
    card.data.models = [model_id]
    card.save(target / "README.md")
    (target / "app").mkdir()
    for name in SPACE_APP_FILES:
        shutil.copy2(app_dir / name, target / "app" / name)
    package_dir = Path(distrinews.__file__).resolve().parent
    for source in package_modules(package_dir):
        destination = target / "distrinews" / source.relative_to(package_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    return target


def package_modules(package_dir: Path) -> list[Path]:
    """The package's Python modules: ``*.py`` files outside ``__pycache__`` and outside anything whose name
    starts with a dot (editor and tool leftovers such as ``.ipynb_checkpoints/``, hidden files)."""
    return [source for source in sorted(package_dir.rglob("*.py"))
            if not any(part == "__pycache__" or part.startswith(".")
                       for part in source.relative_to(package_dir).parts)]


def check_revision(revision: str | None) -> None:
    if revision is not None and (not re.fullmatch(r"[\w./-]+", revision) or ".." in revision):
        raise HubInputError(f"revision {revision!r} must be a commit sha, branch or tag name")


def deploy_space(space_id: str, model_id: str, *, revision: str | None = None, private: bool = False,
                 token: str | None = None, attempts: int = 5, backoff_seconds: float = 2.0,
                 log: Callable[[str], None] = print) -> dict:
    """Create (or update) ``space_id`` as a Docker Space serving ``model_id``; return what was deployed.

    One commit uploads the staged folder; the Space variables ``MODEL_ID`` and, with ``revision``,
    ``MODEL_REVISION`` are set first. Without ``revision`` a ``MODEL_REVISION`` left by an earlier deploy is
    deleted, so the Space follows the model's main branch as asked.
    """
    check_repo_id(space_id, "space id")
    check_repo_id(model_id, "model id")
    check_revision(revision)
    if constants.HF_HUB_OFFLINE:
        raise HubInputError(f"HF_HUB_OFFLINE=1 forbids network access; unset it to deploy {space_id}")
    token = token or resolve_hub_token()
    api = HfApi(token=token, library_name="distrinews", library_version=__version__)
    again = f"distrinews deploy-space {space_id} --model_id {model_id}" + \
        (f" --revision {revision}" if revision else "")
    later = f"Run `{again}` again once the problem is fixed; repeating a deploy is safe."

    with tempfile.TemporaryDirectory(prefix="distrinews-space-") as tmp:
        folder = stage_space(Path(tmp) / "space", model_id, revision)

        def deploy_once():
            repo_url = api.create_repo(space_id, repo_type="space", space_sdk="docker", private=private,
                                       exist_ok=True)
            # Variables before the commit: the commit starts the build, and the container it builds should start
            # with the right model rather than boot without MODEL_ID and restart when the variable lands.
            variables = api.add_space_variable(space_id, "MODEL_ID", model_id)
            if revision:
                api.add_space_variable(space_id, "MODEL_REVISION", revision)
            elif "MODEL_REVISION" in variables:  # add_space_variable answers with all variables: no extra lookup
                api.delete_space_variable(space_id, "MODEL_REVISION")
            commit = api.upload_folder(folder_path=folder, repo_id=space_id, repo_type="space",
                                       commit_message=f"Deploy DistriNews serving {model_id}",
                                       commit_description=f"Deployed with DistriNews {__version__}.",
                                       delete_patterns=OWNED_PATTERNS)
            # An existing Space keeps its visibility whatever was asked for, so read it back when it matters.
            is_private = private and api.repo_info(space_id, repo_type="space", revision=commit.oid).private
            return repo_url, commit, is_private

        log(f"Deploying the DistriNews Space to {space_id}, serving {model_id}"
            + (f" at {revision}" if revision else "") + " ...")
        repo_url, commit, is_private = retry_hub_call(deploy_once, space_id, later, attempts, backoff_seconds, log)
    if private and not is_private:
        log(f"Warning: {space_id} already existed as a public Space and stays public; change its visibility in "
            "the Space settings if it should be private.")
    record = {"space_id": space_id, "model_id": model_id, "revision": revision, "commit_sha": commit.oid,
              "url": str(repo_url)}
    log(f"Deployed {space_id} in commit {commit.oid}; the Space builds and starts at {repo_url}")
    return record
