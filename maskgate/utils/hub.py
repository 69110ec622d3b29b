"""The Hugging Face hub: one revision per run, and every hub failure said in one line.

Why resolve revisions here: params name a branch (`main`) or a commit. A branch moves, so each
run asks the hub once which commit the branch points at, then downloads everything at that
commit (data rows and images zip alike; processor and weights alike) and records it
(`reports/prepare.json`, `verifier.json`). Train, evaluate and the gate then use one repository
at one revision, and a run says which data and weights it used.

Why translate errors: huggingface_hub, datasets and transformers report an unreachable hub, a
gated repository or a missing file with long tracebacks from deep inside their download code.
`errors()` turns each into a `HubError` whose message says what to do; stage scripts print it as
one line. The hub is reached wherever `HF_ENDPOINT` points (the tests serve a local one).
"""
from __future__ import annotations

import contextlib
import os
import re

COMMIT = re.compile(r"[0-9a-f]{40}")


class HubError(RuntimeError):
    """A hub failure, said in one line with what to do about it."""


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline_hint() -> str:
    from huggingface_hub import constants

    return (f"set HF_ENDPOINT to a reachable hub or mirror, or HF_HUB_OFFLINE=1 to use only what the cache "
            f"({constants.HF_HUB_CACHE}) holds")


@contextlib.contextmanager
def errors(what: str, otherwise: str = ""):
    """Re-raise hub and network failures while fetching `what` as one-line HubErrors.

    `otherwise`: what else the user can do when the hub cannot be reached (added to that message).
    """
    import httpx
    from huggingface_hub import errors as E

    def gated():
        token = "the token in HF_TOKEN is not allowed" if os.environ.get("HF_TOKEN") else "no token was given"
        return HubError(f"{what} is gated and {token}: accept its terms on the hub, then set HF_TOKEN "
                        "(or run `hf auth login`)")

    try:
        yield
    except HubError:
        raise
    except E.GatedRepoError:
        raise gated() from None
    except E.RevisionNotFoundError:
        raise HubError(f"{what}: no such revision on {endpoint()} (check the revision in params.yaml)") from None
    except E.RepositoryNotFoundError:
        raise HubError(f"{what}: no such repository on {endpoint()} (or it is private: set HF_TOKEN)") from None
    except E.EntryNotFoundError as e:
        raise HubError(f"{what}: a file is missing from the repository ({_first_line(e)})") from None
    except E.OfflineModeIsEnabled:
        raise HubError(f"{what} is not in the cache and HF_HUB_OFFLINE is set: run once with the hub "
                       f"reachable, or unset HF_HUB_OFFLINE{'; ' + otherwise if otherwise else ''}") from None
    except (E.LocalEntryNotFoundError, httpx.TransportError, ConnectionError, TimeoutError) as e:
        # LocalEntryNotFoundError: the hub could not be reached and the cache does not hold the file
        raise HubError(f"could not reach the Hugging Face hub at {endpoint()} for {what} "
                       f"({type(e).__name__}): {_offline_hint()}{'; ' + otherwise if otherwise else ''}") from None
    except FileNotFoundError as e:
        # datasets wraps gated, missing and unreadable repositories in its DatasetNotFoundError
        if type(e).__name__ != "DatasetNotFoundError":
            raise
        if "gated" in str(e):
            raise gated() from None
        raise HubError(f"{what}: {_first_line(e)}") from None
    except E.HfHubHTTPError as e:
        raise HubError(f"{what}: the hub at {endpoint()} answered {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def resolve(repo: str, revision: str, repo_type: str = "model", otherwise: str = "") -> str:
    """The commit `revision` (a branch, tag or commit) of `repo` points at now."""
    from huggingface_hub import HfApi

    if not isinstance(revision, str) or not revision:
        raise ValueError(f"the revision of {repo} must be a branch, tag or commit, got {revision!r}")
    with errors(f"{repo_type} {repo} at revision {revision}", otherwise):
        info = (HfApi().dataset_info if repo_type == "dataset" else HfApi().model_info)(repo, revision=revision)
    if not info.sha or not COMMIT.fullmatch(info.sha):
        raise HubError(f"{repo_type} {repo}: the hub gave no commit for revision {revision}")
    return info.sha


def is_repo_id(name: object) -> bool:
    """`org/name` as the hub spells repository ids (a local folder is checked before this)."""
    return isinstance(name, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and ".." not in name
