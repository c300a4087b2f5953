"""Hugging Face metadata for downloads: repo listings, file metadata, and safe local paths.

huggingface_hub answers the metadata questions (it knows the Hub's error codes and relative
redirects); the bytes are streamed by ``llamaman.downloads.transfer`` so that throttling, Range requests and
the final rename stay under LlamaMan's control. Every function here blocks: call it in a thread.

huggingface_hub is imported by the functions that use it, on the first download or repo listing:
with the HTTP stack it brings it is about 10 MB of resident memory and a third of a second of
start-up that a LlamaMan which never downloads does not need.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import httpx

from llamaman.core.errors import (
    Conflict,
    Forbidden,
    Invalid,
    LlamaManError,
    NotFound,
    StorageFull,
    UpstreamFailed,
)

DEFAULT_ENDPOINT = "https://huggingface.co"
PART_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(LlamaManError):
    """A download that cannot go on; raised as one of the kinds below."""


class DownloadInvalid(DownloadError, Invalid):
    pass


class DownloadForbidden(DownloadError, Forbidden):
    pass


class DownloadNotFound(DownloadError, NotFound):
    pass


class DownloadConflict(DownloadError, Conflict):
    pass


class DownloadUpstreamFailed(DownloadError, UpstreamFailed):
    pass


class DownloadStorageFull(DownloadError, StorageFull):
    pass


class TransientError(Exception):
    """A failure worth retrying: server errors, dropped connections, a corrupted transfer."""


@dataclass
class RemoteFile:
    name: str
    size: int | None = None
    sha256: str | None = None


@dataclass
class RepoListing:
    repo_id: str
    sha: str
    files: list[RemoteFile] = field(default_factory=list)

    def get(self, name: str) -> RemoteFile | None:
        return next((f for f in self.files if f.name == name), None)


@dataclass
class FileMeta:
    size: int | None
    etag: str | None

    @property
    def sha256(self) -> str | None:
        # LFS files carry their sha256 as ETag; small git files carry a sha1, which proves nothing here.
        etag = (self.etag or "").strip('"').lower()
        return etag if _SHA256_RE.match(etag) else None


def endpoint_of(configured: str | None) -> str:
    return (configured or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def check_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise DownloadInvalid("repo_id is required (e.g. 'bartowski/Qwen2.5-0.5B-Instruct-GGUF')")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise DownloadInvalid(f"invalid repo id {repo_id!r}: {exc}") from None
    if any(part in ("", ".", "..") or part.startswith(".") for part in repo_id.split("/")):
        raise DownloadInvalid(f"invalid repo id {repo_id!r}")
    return repo_id


_UNSAFE_NAME = re.compile(r"[\"'<>\\`\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _shown(name: str) -> str:
    """A name for an error message, with what makes it unsafe escaped."""
    return ascii(name[:200])


def check_rel_path(name: str, what: str = "file name") -> PurePosixPath:
    """A repo-relative path that is safe to re-create under MODELS_DIR: relative, no '..', not hidden.

    Hidden components are refused because the library skips them and ``.downloads`` is ours.
    """
    if not name or not name.strip():
        raise DownloadInvalid(f"empty {what}")
    bad = _UNSAFE_NAME.search(name)
    if bad is not None:
        # Names end up in file paths, commands and the UI: markup or a quote in one is never a model.
        char = bad.group()
        shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
        raise DownloadInvalid(
            f"invalid {what} {_shown(name)}: {shown} is not allowed (no quotes, '<', '>', backslashes "
            "or control characters)"
        )
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise DownloadInvalid(f"invalid {what} {name!r}: absolute paths are not allowed")
    if any(p == ".." for p in path.parts):
        raise DownloadInvalid(f"invalid {what} {name!r}: '..' is not allowed")
    if any(p.startswith(".") for p in path.parts):
        raise DownloadInvalid(f"invalid {what} {name!r}: hidden files and folders are not allowed")
    return path


def inside(root: Path, *parts: str) -> Path:
    """``root/parts...``, refusing anything that would resolve outside ``root``."""
    target = root.joinpath(*parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise DownloadInvalid(f"'{'/'.join(parts)}' would be written outside the models folder")
    return target


def is_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def is_projector(name: str) -> bool:
    return "mmproj" in PurePosixPath(name).name.lower()


def group_key(name: str) -> str:
    """The model a file belongs to: a split's parts share one key, any other file is its own."""
    path = PurePosixPath(name)
    if m := PART_RE.match(path.name):
        return str(path.with_name(f"{m['stem']}-of-{m['total']}"))
    return name


def expand_parts(listing: RepoListing, name: str) -> list[str]:
    """``name`` plus its sibling parts when it is one part of a split GGUF."""
    path = PurePosixPath(name)
    m = PART_RE.match(path.name)
    if m is None:
        return [name]
    total = int(m["total"])
    names = [str(path.with_name(f"{m['stem']}-{n:05d}-of-{total:05d}.gguf")) for n in range(1, total + 1)]
    by_lower = {f.name.lower(): f.name for f in listing.files}
    missing = [n for n in names if n.lower() not in by_lower]
    if missing:
        raise DownloadNotFound(f"{listing.repo_id} lacks part(s) {', '.join(missing)} of {name}")
    return [by_lower[n.lower()] for n in names]


def pick_files(listing: RepoListing, filename: str | None, *, gguf_only: bool = True) -> list[RemoteFile]:
    """The files a request means: one file (all parts of a split), or the whole repo."""
    if filename:
        check_rel_path(filename)
        wanted = listing.get(filename) or next(
            (f for f in listing.files if f.name.lower() == filename.lower()), None
        )
        if wanted is None:
            raise DownloadNotFound(f"{listing.repo_id} has no file {filename!r}")
        names = expand_parts(listing, wanted.name)
    else:
        names = []
        for f in listing.files:
            parts = PurePosixPath(f.name).parts
            if ".." in parts:
                check_rel_path(f.name)  # refuses, naming the file
            if (is_gguf(f.name) or not gguf_only) and not any(p.startswith(".") for p in parts):
                names.append(f.name)
        if not names:
            kind = "GGUF files" if gguf_only else "files"
            raise DownloadNotFound(f"{listing.repo_id} has no {kind} to download")
    files = [found for n in names if (found := listing.get(n)) is not None]
    for f in files:
        check_rel_path(f.name)
    return files


def _optional(module: str, name: str) -> type[BaseException] | None:
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


@functools.cache
def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection failures as each huggingface_hub generation raises them: 0.x through requests,
    1.x through httpx, 2.x through httpx2 (whose classes are not httpx's)."""
    found: list[type[BaseException]] = [httpx.TransportError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("requests.exceptions", "ConnectionError"),
        ("requests.exceptions", "Timeout"),
    ):
        if (kind := _optional(module, name)) is not None:
            found.append(kind)
    return tuple(found)


def _hub_kinds(*names: str) -> tuple[type[BaseException], ...]:
    """huggingface_hub's error classes of these names; those its release lacks match nothing."""
    return tuple(k for name in names if (k := _optional("huggingface_hub.errors", name)) is not None)


def unreachable(endpoint: str, detail: object = None) -> str:
    """The one message for a hub that cannot be reached, naming the setting that points at it."""
    why = f" ({detail})" if detail else ""
    return f"cannot reach the Hugging Face hub at {endpoint}{why} — check the network or HF_ENDPOINT"


def _hub_error(exc: Exception, repo_id: str, endpoint: str, filename: str | None = None) -> Exception:
    """Translate huggingface_hub's errors into what a user can act on."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, _hub_kinds("OfflineModeIsEnabled")):
        return DownloadUpstreamFailed(
            f"the Hugging Face hub is switched off here (HF_HUB_OFFLINE is set): unset it to "
            f"download {repo_id}"
        )
    if isinstance(exc, _hub_kinds("DisabledRepoError")):
        return DownloadForbidden(f"{repo_id} has been disabled on {endpoint}")
    if isinstance(exc, GatedRepoError):
        return DownloadForbidden(
            f"{repo_id} is gated: accept its terms on the Hub and give a token that has access"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadNotFound(
            f"repository {repo_id!r} not found on {endpoint} (private repos need a Hugging Face token)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadNotFound(f"{repo_id} has no such revision")
    if isinstance(exc, EntryNotFoundError):
        return DownloadNotFound(f"{repo_id} has no file {filename!r}")
    if isinstance(exc, HFValidationError):
        return DownloadInvalid(str(exc))
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            return DownloadForbidden(f"access to {repo_id} denied (HTTP {status}): check the token")
        if status == 429 or status >= 500:
            return TransientError(f"the Hub answered HTTP {status}")
        if status == 404:
            # A mirror (or a hub without huggingface.co's error headers) says only "404".
            if filename:
                return DownloadNotFound(f"{repo_id} has no file {filename!r} on {endpoint}")
            return DownloadNotFound(f"repository {repo_id!r} not found on {endpoint}")
        return DownloadUpstreamFailed(f"the Hub refused the request (HTTP {status}): {exc}")
    if isinstance(exc, transport_errors()):
        return TransientError(unreachable(endpoint, _reason(exc)))
    if isinstance(exc, OSError):
        # huggingface_hub's own OSErrors (FileMetadataError: a HEAD answer without size or ETag).
        return TransientError(f"the Hub at {endpoint} gave an unusable answer: {exc}")
    return exc


def _reason(exc: BaseException) -> str:
    """The innermost cause of a transport error, without the library's wrapping."""
    text = str(exc).strip()
    return text or type(exc).__name__


def list_repo(endpoint: str, repo_id: str, revision: str, token: str | None) -> RepoListing:
    """The repo's commit and files (with sizes and LFS hashes) at ``revision``."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True, token=token or False)
    except Exception as exc:
        err = _hub_error(exc, repo_id, endpoint)
        if isinstance(err, TransientError):
            raise DownloadUpstreamFailed(str(err)) from None
        raise err from exc
    files = [
        RemoteFile(s.rfilename, s.size if s.lfs is None else s.lfs.size, s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
    ]
    return RepoListing(repo_id=repo_id, sha=info.sha or revision, files=files)


def file_url(endpoint: str, repo_id: str, name: str, revision: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, name, revision=revision, endpoint=endpoint)


def file_metadata(endpoint: str, repo_id: str, name: str, revision: str, token: str | None) -> FileMeta:
    """Size and ETag of one file (a HEAD request); raises DownloadError or TransientError."""
    from huggingface_hub import get_hf_file_metadata

    url = file_url(endpoint, repo_id, name, revision)
    try:
        meta = get_hf_file_metadata(url, token=token or False, endpoint=endpoint)
    except Exception as exc:
        raise _hub_error(exc, repo_id, endpoint, name) from exc
    return FileMeta(size=meta.size, etag=meta.etag)


def auth_headers(token: str | None) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    return build_hf_headers(token=token or False)
