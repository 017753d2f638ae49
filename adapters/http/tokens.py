"""Bearer tokens: who may call the API, and whether to read only or also to write.

The file beside the store (mode 0600) holds named tokens; the engine
creates it on its first run with one write token ("operator") and one
read token ("reader"). A token's name is the actor recorded on the
intents its requests write. The running engine re-reads the file when it
changes, so `ledger token rotate` takes effect at once.
"""

from __future__ import annotations

import enum
import hmac
import secrets
from pathlib import Path

import msgspec

from adapters.http.beside import beside_store, write_private

TOKENS_SUFFIX = ".tokens"


class Scope(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    """Write includes read."""


class Token(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    scope: Scope
    secret: str

    def allows(self, scope: Scope) -> bool:
        return self.scope is Scope.WRITE or scope is Scope.READ


class TokenFile(msgspec.Struct, frozen=True, kw_only=True):
    tokens: list[Token]


class TokenError(Exception):
    """Raised when the token file cannot be read or written."""


DEFAULT_TOKENS = (("operator", Scope.WRITE), ("reader", Scope.READ))


def _secret() -> str:
    return secrets.token_urlsafe(32)


class Tokens:
    """The tokens of one store, read again from their file whenever it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._tokens: list[Token] = []

    @classmethod
    def of_store(cls, store_url: str) -> Tokens:
        return cls(beside_store(store_url, TOKENS_SUFFIX))

    def ensure(self) -> list[Token]:
        """The tokens, the file created first (with the default tokens) if there is none."""
        if not self.path.exists():
            self._write([Token(name=n, scope=s, secret=_secret()) for n, s in DEFAULT_TOKENS])
        return self.current()

    def current(self) -> list[Token]:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return []
        seen = (status.st_mtime_ns, status.st_size)
        if seen != self._seen:
            try:
                self._tokens = msgspec.json.decode(self.path.read_bytes(), type=TokenFile).tokens
            except (OSError, msgspec.DecodeError) as error:
                raise TokenError(f"cannot read the token file {self.path}: {error}") from None
            self._seen = seen
        return self._tokens

    def rotate(self, name: str | None = None) -> list[Token]:
        """New secrets for every token, or for the one called `name`; the old ones stop working."""
        tokens = self.ensure()
        if name is not None and name not in {token.name for token in tokens}:
            raise TokenError(f"no token named {name!r} (there are: {_names(tokens)})")
        rotated = [
            msgspec.structs.replace(token, secret=_secret())
            if name in {None, token.name}
            else token
            for token in tokens
        ]
        self._write(rotated)
        return rotated

    def find(self, secret: str) -> Token | None:
        """The token with this secret, compared in constant time against each one."""
        found = None
        for token in self.current():
            if hmac.compare_digest(token.secret.encode(), secret.encode()):
                found = token
        return found

    def writer(self) -> Token | None:
        """A token that may write: what the CLI sends to a running engine."""
        return next((token for token in self.current() if token.scope is Scope.WRITE), None)

    def _write(self, tokens: list[Token]) -> None:
        try:
            write_private(
                self.path, msgspec.json.format(msgspec.json.encode(TokenFile(tokens=tokens)))
            )
        except OSError as error:
            raise TokenError(f"cannot write the token file {self.path}: {error}") from None
        self._seen = None


def _names(tokens: list[Token]) -> str:
    return ", ".join(token.name for token in tokens)
