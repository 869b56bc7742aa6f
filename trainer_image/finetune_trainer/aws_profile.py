"""AWS profiles, read as the AWS CLI and boto read them (obstore reads only env keys).

The profile is AWS_PROFILE (else AWS_DEFAULT_PROFILE, else `default`). Credentials come
from the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, default
~/.aws/credentials; section `[name]`), then the config file (AWS_CONFIG_FILE, default
~/.aws/config; section `[profile name]`, or `[default]`), which also gives `region` and
`endpoint_url` (top level, or under an `s3 =` sub-section). Used by storage.py only when
the environment holds no AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; values set in the
environment (AWS_REGION, AWS_ENDPOINT_URL) win over the profile's. botocore, which would
do this, cannot be installed next to this project's python-dateutil 4.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None
    endpoint_url: str | None = None


def profile_name() -> str:
    return os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"


def _file(variable: str, default: str) -> Path:
    return Path(os.environ.get(variable) or Path.home() / ".aws" / default).expanduser()


def _read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, configparser.Error):
        return configparser.ConfigParser(interpolation=None)
    return parser


def _nested(value: str | None, key: str) -> str | None:
    """`key = value` inside an indented sub-section value such as `s3 =\\n  endpoint_url = x`."""
    for line in (value or "").splitlines():
        name, sep, found = line.partition("=")
        if sep and name.strip() == key:
            return found.strip() or None
    return None


def settings(name: str | None = None) -> Settings:
    """The named profile's credentials, region and S3 endpoint; empty when there is none."""
    name = name or profile_name()
    credentials = _read(_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"))
    config = _read(_file("AWS_CONFIG_FILE", "config"))
    sections = [credentials[name]] if credentials.has_section(name) else []
    config_section = name if name == "default" else f"profile {name}"
    if config.has_section(config_section):
        sections.append(config[config_section])
    elif name == "default" and config.has_section("profile default"):
        sections.append(config["profile default"])

    def first(key: str) -> str | None:
        for section in sections:
            value = section.get(key)
            if value and value.strip():
                return value.strip()
        return None

    s3_endpoint = next(
        (_nested(s.get("s3"), "endpoint_url") for s in sections if s.get("s3")), None
    )
    return Settings(
        access_key_id=first("aws_access_key_id"),
        secret_access_key=first("aws_secret_access_key"),
        session_token=first("aws_session_token"),
        region=first("region"),
        endpoint_url=s3_endpoint or first("endpoint_url"),
    )
