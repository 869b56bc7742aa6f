"""Storage URIs through fsspec: the filesystem of a URI, and its errors in one line.

A path (no scheme, or file://) is the local filesystem (a PVC mount in a pod). s3://, gs://
and az:// use the fsspec package installed for them: s3fs / gcsfs / adlfs when present,
else obstore (Rust object_store, no botocore: in this project's environment botocore
cannot be installed next to python-dateutil 4). Settings are the standard ones of each
cloud, read from the environment: AWS_ENDPOINT_URL (an http:// endpoint is allowed),
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_REGION (default
us-east-1), ...; in a pod they come from `spec.secrets` (secretKeyRef env), never from
the operator. Without keys in the environment, an AWS profile is read as the AWS CLI does
(`aws_profile.py`: AWS_PROFILE, ~/.aws/credentials and ~/.aws/config). hf:// is
huggingface_hub's HfFileSystem (HF_ENDPOINT, HF_TOKEN). Error messages name the spec field
and never carry a credential.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from finetune_trainer import aws_profile
from finetune_trainer.errors import TrainerUserError

OBSTORE_SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


class StorageError(TrainerUserError):
    """A storage URI that cannot be used; the message names the spec field."""


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def filesystem(uri: str, field: str) -> tuple[Any, str]:
    """(fsspec filesystem, root path without the scheme) for `uri`."""
    import fsspec

    scheme = scheme_of(uri)
    kwargs: dict[str, Any] = {}
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as err:
        if scheme not in OBSTORE_SCHEMES:
            raise StorageError(
                f"{field}: {uri}: no filesystem for the URI scheme {scheme!r} is installed "
                f"({str(err)[:120]}); use a path, s3://, gs://, az:// or hf://"
            ) from None
        try:
            import obstore.fsspec
        except ImportError:
            raise StorageError(
                f"{field}: {uri}: no filesystem for {scheme}:// is installed; install "
                f"{OBSTORE_SCHEMES[scheme]} or obstore in the trainer image"
            ) from None
        obstore.fsspec.register(scheme)
    if _is_obstore(fsspec.get_filesystem_class(scheme)):  # registered here, now or earlier
        kwargs = _obstore_options(scheme)
    if scheme == "hf" and os.environ.get("HF_ENDPOINT"):  # as set now, not at import
        kwargs = {"endpoint": os.environ["HF_ENDPOINT"].rstrip("/")}
    try:
        fs, root = fsspec.core.url_to_fs(uri, **kwargs)
    except Exception as err:
        raise StorageError(f"{field}: {uri}: {describe(err, scheme)}") from None
    return fs, str(root).rstrip("/")


def _is_obstore(cls: type) -> bool:
    return any(base.__module__.startswith("obstore") for base in cls.__mro__)


def _obstore_options(scheme: str) -> dict[str, Any]:
    if scheme != "s3":
        return {}
    options: dict[str, Any] = {}
    config: dict[str, str] = {}
    profile = aws_profile.settings() if not _env_keys() else aws_profile.Settings()
    if profile.access_key_id and profile.secret_access_key:
        config["access_key_id"] = profile.access_key_id
        config["secret_access_key"] = profile.secret_access_key
        if profile.session_token:
            config["session_token"] = profile.session_token
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    endpoint = env_endpoint or profile.endpoint_url
    if endpoint:  # explicit, so fsspec's instance cache keys on it too
        config["endpoint"] = endpoint
    if endpoint and endpoint.startswith("http://"):
        options["client_options"] = {"allow_http": True}
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        config["region"] = profile.region or "us-east-1"
    if config:
        options["config"] = config
    return options


def _env_keys() -> bool:
    env = os.environ
    return bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))


def has_credentials(scheme: str) -> bool:
    """Whether the environment names credentials for an s3:// store (else a cloud's
    instance metadata is the only source left)."""
    if scheme != "s3":
        return True
    env = os.environ
    if _env_keys():
        return True
    profile = aws_profile.settings()
    s3fs = importlib.util.find_spec("s3fs") is not None  # it reads every kind of profile
    return bool(
        (profile.access_key_id and profile.secret_access_key)
        or (s3fs and env.get("AWS_PROFILE"))
        or env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    )


ENDPOINT_SETTING = {"s3": "AWS_ENDPOINT_URL", "hf": "HF_ENDPOINT", "gs": "the GCS endpoint"}


def describe(err: BaseException, scheme: str = "s3") -> str:
    """An object store's failure in words (the library's text shortened; it holds no
    credentials: stores never echo a secret)."""
    text = f"{type(err).__name__}: {err}".split("\n\nDebug source", 1)[0]
    text = " ".join(text.split())
    short = text if len(text) <= 300 else text[:300] + "..."
    lowered = text.lower()
    name = type(err).__name__
    if name == "OfflineModeIsEnabled" or "offline mode is enabled" in lowered:
        return (
            "HF_HUB_OFFLINE=1 forbids reaching the hub; unset it (a read-only spec.cache "
            "sets it) or use a path"
        )
    if scheme == "hf" and name in ("RepositoryNotFoundError", "GatedRepoError"):
        return (
            f"the repository does not exist or is not accessible with this token ({short}); "
            "check the repo id and HF_TOKEN (in a pod through spec.secrets)"
        )
    if scheme == "hf" and name == "RevisionNotFoundError":
        return f"the revision does not exist ({short})"
    if (
        "nosuchbucket" in lowered
        or "bucket does not exist" in lowered
        or ("bucket" in lowered and "not found" in lowered)
    ):
        return f"the bucket does not exist ({short})"
    if "169.254.169.254" in lowered or ("credential" in lowered and scheme == "s3"):
        return (
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in a pod "
            "through spec.secrets), an AWS profile, or use a workload identity"
        )
    if "accessdenied" in lowered or "forbidden" in lowered or "signature" in lowered:
        return f"access denied: check the credentials and the bucket policy ({short})"
    if "401" in lowered and scheme == "hf":
        return f"the hub refused the token ({short}); check HF_TOKEN"
    if any(
        w in lowered
        for w in ("connect", "dns", "timed out", "error sending request", "name resolution")
    ):
        setting = ENDPOINT_SETTING.get(scheme, "the endpoint")
        return f"the endpoint cannot be reached ({short}); check {setting}"
    return short


def probe(fs: Any, root: str, uri: str, field: str) -> None:
    """Write and remove one small object under root: before any training, a wrong
    bucket, an unreachable endpoint or missing credentials is one line naming the field."""
    instance_ok = bool(os.environ.get("FINETUNE_ALLOW_INSTANCE_CREDENTIALS"))
    if scheme_of(uri) == "s3" and not has_credentials("s3") and not instance_ok:
        raise StorageError(f"{field}: {uri}: {describe(RuntimeError('no credentials'))}")
    try:
        fs.makedirs(root, exist_ok=True)
        path = f"{root}/.finetune-probe-{os.getpid()}"
        fs.pipe_file(path, b"ok")
        fs.rm_file(path)
    except Exception as err:
        raise StorageError(f"{field}: {uri}: {describe(err, scheme_of(uri))}") from None
