"""Request and response bodies of the auth and account routes (inputs forbid unknown fields)."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve.schemas import UNSAFE_TEXT, Input, safe_text


class Register(Input):
    email: Annotated[str, Field(max_length=254)]
    password: Annotated[str, Field(max_length=1024)]
    name: Annotated[str, Field(min_length=1, max_length=100)]


class Grant(BaseModel):
    """OAuth grants may carry extra form fields (client_id, scope): they are ignored."""

    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        if isinstance(value, str) and not safe_text(value):
            raise ValueError(UNSAFE_TEXT)
        return value


class PasswordGrant(Grant):
    grant_type: Literal["password"]
    username: Annotated[str, Field(max_length=254)]
    password: Annotated[str, Field(max_length=1024)]


class RefreshGrant(Grant):
    grant_type: Literal["refresh_token"]
    refresh_token: Annotated[str, Field(max_length=400)]


class MfaLogin(Input):
    mfa_token: Annotated[str, Field(max_length=200)]
    code: Annotated[str, Field(max_length=40)]


class MfaConfirm(Input):
    code: Annotated[str, Field(max_length=12)]


class ProfilePatch(Input):
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    preferences: dict[str, str | int | bool] | None = None
    consents: dict[str, bool] | None = None


class TokenReply(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type
    expires_in: int
    refresh_token: str
