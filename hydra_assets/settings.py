"""The one place that reads the process environment.

Everything else takes its configuration from here (definition-time settings such as the
partition calendar) or from resources built in ``definitions.py``; on the cluster, resources
read their locations and secrets with ``dg.EnvVar`` at run time, and the same variables are
validated here when the code location loads, so a bad value fails at load with its name.

Every variable is ``HYDRA_`` + the field name in upper case (pydantic-settings). A bad value
raises :class:`SettingsError` whose message starts with the variable's name.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

Environment = Literal["local", "cluster"]
ENVIRONMENTS: tuple[Environment, ...] = ("local", "cluster")
PREFIX = "HYDRA_"

_VAR = Path("var").resolve()
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_HTTP = ("http", "https")
_URL_SCHEMES = {
    "webhook_url": _HTTP,
    "pushgateway_url": _HTTP,
    "comfyui_url": _HTTP,
    "gpt_sovits_url": _HTTP,
    "kokoro_url": _HTTP,
    "xtts_url": _HTTP,
    "llm_base_url": _HTTP,
    "qdrant_url": _HTTP,
    "redis_url": ("redis", "rediss"),
    "review_url": _HTTP,
    "dagster_url": _HTTP,
}
_DIRECTORIES = ("roster_dir", "storage_root", "workflows_dir", "chapters_dir", "review_cache_dir", "model_store", "insightface_root", "sdxl_model_path")
_FILES = ("clip_checkpoint", "laion_mlp", "musiq_weights")


class SettingsError(ValueError):
    """One or more ``HYDRA_*`` variables are invalid; each line names its variable."""


def env_var(field: str) -> str:
    """The environment variable behind a settings field (``timezone`` → ``HYDRA_TIMEZONE``)."""
    return f"{PREFIX}{field.upper()}"


def first_of_month(timezone: str, now: dt.datetime | None = None) -> str:
    """The first day of the current month in ``timezone``, ISO: the calendar's default start."""
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(ZoneInfo(timezone)).date().replace(day=1).isoformat()


class Settings(BaseSettings):
    """Every ``HYDRA_*`` setting, validated at load; unset optional ones are ``None``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", env_ignore_empty=True)

    env: Environment = Field("local", description="local (embedded backends) or cluster")
    timezone: str = Field("UTC", description="zoneinfo name the nights and the 22:00 schedule use")
    nights_start: str = Field(description="first night (YYYY-MM-DD); default: first of this month")
    roster_dir: str = Field(str(Path("roster").resolve()))
    storage_root: str = Field(str(_VAR / "storage"))
    catalog_url: str = Field(f"sqlite:///{_VAR / 'catalog.db'}", description="sqlite or postgresql URL")
    webhook_url: str | None = None
    pushgateway_url: str | None = None
    workflows_dir: str = Field(str(Path("workflows").resolve()), description="ComfyUI workflow JSON files")
    chapters_dir: str = Field(str(Path("chapters").resolve()), description="chapter scripts (markdown)")
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint")
    llm_model: str = "current"
    redis_url: str | None = None
    qdrant_url: str | None = None
    loudness_target_lufs: float = Field(-23.0, ge=-70.0, le=0.0, description="voice lines, ITU-R BS.1770")
    review_port: int = Field(3100, ge=1, le=65535)
    review_user_header: str = Field("X-Forwarded-User", pattern=r"^[A-Za-z0-9-]+$")
    review_url: str = Field("http://127.0.0.1:3100", description="where `hydra review` is reached; assets link its pages")
    dagster_url: str = Field("http://127.0.0.1:3000", description="the webserver the review app launches runs through")
    review_cache_dir: str = Field(str(_VAR / "review_cache"), description="the review app's thumbnail cache")
    report_due_hour: int = Field(7, ge=0, le=23, description="hour (HYDRA_TIMEZONE) the night's report is due")
    # Cluster-only: the resources read these with dg.EnvVar at run time; checked here at load.
    model_store: str | None = None
    insightface_root: str | None = None
    sdxl_model_path: str | None = None
    clip_checkpoint: str | None = None
    laion_mlp: str | None = None
    musiq_weights: str | None = None
    comfyui_url: str | None = None
    gpt_sovits_url: str | None = None
    kokoro_url: str | None = None
    xtts_url: str | None = None

    SECRETS: ClassVar[tuple[str, ...]] = ("HYDRA_LLM_API_KEY",)
    """Read only on the cluster through dg.EnvVar, never stored here."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings reads the environment (any mapping) with _MappingSource and passes the
        # values in; nothing else (no .env file, no secrets dir) may add settings behind its back.
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _default_nights_start(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("nights_start"):
            try:
                values = {**values, "nights_start": first_of_month(str(values.get("timezone") or "UTC"))}
            except (ZoneInfoNotFoundError, ValueError):
                pass  # the timezone's own error names HYDRA_TIMEZONE
        return values

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        value = str(value).strip().lower()
        if value not in ENVIRONMENTS:
            raise ValueError(f"must be one of {', '.join(ENVIRONMENTS)}, got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a zoneinfo timezone (e.g. UTC, Europe/Stockholm)") from None
        return value

    @field_validator("nights_start")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        try:
            if not _ISO_DATE.fullmatch(value):
                raise ValueError
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            raise ValueError(f"{value!r} is not a date in the form YYYY-MM-DD") from None

    @field_validator("catalog_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            url = sa.make_url(value)
        except sa.exc.ArgumentError:
            raise ValueError(f"{_redacted(value)!r} is not a database URL (sqlite:///path or postgresql://host/db)") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            shown = url.render_as_string(hide_password=True)
            raise ValueError(f"{shown!r}: the scheme must be sqlite or postgresql")
        return value

    @field_validator(*_URL_SCHEMES)
    @classmethod
    def _url(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        schemes = _URL_SCHEMES[info.field_name]
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in schemes or not parts.hostname:
            example = f"{schemes[0]}://host:port"
            raise ValueError(f"{_redacted(value)!r} is not a {' or '.join(schemes)} URL (e.g. {example})")
        return value.rstrip("/") if info.field_name in ("review_url", "dagster_url") else value

    @field_validator(*_DIRECTORIES, *_FILES)
    @classmethod
    def _path(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        if "\0" in value or not value.strip():
            raise ValueError("is not a usable path (empty or contains a NUL byte)")
        path = Path(value).expanduser().resolve()
        if info.field_name in _DIRECTORIES and path.exists() and not path.is_dir():
            raise ValueError(f"{str(path)!r} exists and is not a folder")
        if info.field_name in _FILES and path.is_dir():
            raise ValueError(f"{str(path)!r} is a folder, not a file")
        return str(path)


def _redacted(url: str) -> str:
    """The URL with any password replaced, for messages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over any mapping (tests pass a dict)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # As for os.environ: names case-insensitive, empty values as unset (env_ignore_empty).
        return {name.lower(): value for name, value in self._environ.items() if value != ""}


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from ``environ``; raises :class:`SettingsError` naming every bad variable."""
    values = _MappingSource(Settings, environ)()
    try:
        return Settings(**values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            if field == "nights_start" and error["type"] == "missing":
                continue  # no default without a valid timezone, whose error says why
            if error["type"] == "value_error":
                lines.append(f"{env_var(field)} {error['msg'].removeprefix('Value error, ')}")
            else:
                lines.append(f"{env_var(field)}: {error['msg'].lower()}, got {error['input']!r}")
        raise SettingsError("; ".join(lines)) from None


SETTINGS = load_settings()
