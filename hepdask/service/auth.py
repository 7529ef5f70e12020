"""Who is asking: a bearer token checked against a token file, or an OIDC JWT verified against
its issuer's published keys.

An authenticator is a callable ``token -> User`` that refuses with
:class:`~hepdask.errors.RequestError` (401, with the reason; 503 when the issuer's keys cannot
be fetched, which is not the client's fault). :func:`user_dependency` turns one into the FastAPI
dependency that ``hepdask serve`` and ``hepdask service`` put in front of their routes, so both
check tokens the same way. Signatures are checked by PyJWT (with ``cryptography``), never here.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from ..errors import HepdaskError, RequestError, first_line

try:
    import fastapi
    import jwt
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
except ImportError:
    raise HepdaskError(
        "Checking bearer tokens needs FastAPI and PyJWT, which are not installed. Install them "
        "with: pip install 'hepdask[serve]'."
    ) from None

__all__ = ["ASYMMETRIC_ALGORITHMS", "LOCAL", "OIDC", "Authenticator", "StaticTokens", "User",
           "authenticator", "user_dependency"]

# Signed with the issuer's private key, checked with its public one. "none" and HS* are left
# out: an HS* token "signed" with the public key (which anyone can fetch) would otherwise pass.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")
_JWKS_LIFESPAN = 300.0  # seconds the issuer's key set is reused before it is fetched again
_ADVICE = "send the header 'Authorization: Bearer <token>'"


@dataclass(frozen=True)
class User:
    """Who a request is from: ``name`` owns jobs, uploads and models; an admin sees all."""

    name: str
    admin: bool = False


LOCAL = User("local", admin=True)  # every request, when the service checks no token

Authenticator = Callable[[str], User]


class StaticTokens:
    """Tokens from a file, each naming its user.

    Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, every known token
    each time, so how long an answer takes tells nothing about the tokens.
    """

    def __init__(self, users: Mapping[str, User]) -> None:
        if not users:
            raise HepdaskError("No token given: a token file needs at least one token.")
        self._users = [(_digest(token), user) for token, user in users.items()]

    @classmethod
    def from_file(cls, path: str | Path, *, admins: Sequence[str] = ()) -> StaticTokens:
        """The tokens of ``path``: lines ``TOKEN USER [admin]`` (``#`` starts a comment).

        A file holding a single bare token (``hepdask serve``'s token file) is the one user
        ``default``. ``admins`` are users made admins beside those the file marks.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise HepdaskError(f"Cannot read the token file {path}: {err.strerror}.") from None
        except UnicodeDecodeError:
            raise HepdaskError(f"The token file {path} is not UTF-8 text: write one "
                               "'TOKEN USER [admin]' line per user.") from None
        return cls(_parse_tokens(path, text, frozenset(admins)))

    def __call__(self, token: str) -> User:
        given = _digest(token)
        found = None
        for known, user in self._users:  # no early exit: the time taken is the same for all
            if hmac.compare_digest(given, known):
                found = user
        if found is None:
            raise RequestError(f"Missing or wrong bearer token: {_ADVICE} with a token of the "
                               "service's token file.", 401)
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _parse_tokens(path: Path, text: str, admins: frozenset[str]) -> dict[str, User]:
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        comment = next((i for i, field in enumerate(fields) if field.startswith("#")), None)
        if fields[:comment]:
            lines.append((number, fields[:comment]))
    if not lines:
        raise HepdaskError(f"The token file {path} holds no token: write one 'TOKEN USER "
                           "[admin]' line per user (or a single token, for one user named "
                           "'default').")
    if len(lines) == 1 and len(lines[0][1]) == 1:
        return {lines[0][1][0]: User("default", admin="default" in admins)}
    first: dict[str, int] = {}
    names: dict[str, str] = {}
    for number, fields in lines:
        if len(fields) not in (2, 3) or fields[2:] not in ([], ["admin"]):
            shape = (f"its third field is {fields[2]!r}" if len(fields) == 3
                     else f"it has {len(fields)} field{'s' * (len(fields) > 1)}")
            raise HepdaskError(f"Line {number} of the token file {path} is not 'TOKEN USER "
                               f"[admin]' ({shape}): give each token its user's name, and "
                               "'admin' as a third field for an admin.")
        token, name = fields[:2]
        if token in first:
            raise HepdaskError(f"Lines {first[token]} and {number} of the token file {path} "
                               "have the same token: a token names one user; give one of them "
                               "a new token (e.g. python -c 'import secrets; "
                               "print(secrets.token_urlsafe(32))').")
        first[token] = number
        names[token] = name
    marked = admins | {fields[1] for _, fields in lines if len(fields) == 3}
    return {token: User(name, admin=name in marked) for token, name in names.items()}


class OIDC:
    """OIDC access tokens (JWTs) verified against the issuer's JSON Web Key Set.

    The signature (by a key of the issuer's JWKS, with an asymmetric algorithm), ``exp``,
    ``aud`` and ``iss`` are all checked and all three claims required. The JWKS address comes
    from ``jwks_uri`` or, when None, the issuer's discovery document
    (``<issuer>/.well-known/openid-configuration``), fetched at the first request and kept;
    the key set itself is kept for five minutes, and fetched again at once (at most every 30 s)
    for a key id it does not know, so key rotation needs no restart.

    Parameters
    ----------
    issuer
        The ``iss`` tokens must carry, e.g. ``https://auth.cern.ch/auth/realms/cern``.
    audience
        The ``aud`` tokens must carry: this service (often its OIDC client id).
    jwks_uri
        The issuer's JWKS address, when it has no discovery document.
    user_claim
        The claim naming the user; ``sub`` when a token lacks it.
    admins, admin_groups
        Users who are admins, and groups or roles (a token's ``groups`` or ``roles`` claim)
        whose members are.
    leeway
        Seconds of clock difference with the issuer forgiven when checking ``exp``.
    timeout
        Seconds to wait for the issuer when fetching its discovery document or keys.
    """

    def __init__(self, issuer: str, audience: str, *, jwks_uri: str | None = None,
                 user_claim: str = "preferred_username", admins: Sequence[str] = (),
                 admin_groups: Sequence[str] = (), leeway: float = 30.0,
                 timeout: float = 10.0) -> None:
        for what, url in (("issuer", issuer), ("JWKS address", jwks_uri)):
            if url is not None and not _is_http(url):
                raise HepdaskError(f"The OIDC {what} {url!r} is not an http(s) URL: give it "
                                   "as the issuer publishes it, e.g. "
                                   "https://auth.example.org/realms/physics.")
        if not audience:
            raise HepdaskError("The OIDC audience is empty: give the 'aud' that the issuer "
                               "puts in tokens meant for this service (often its client id).")
        self.issuer, self.audience = issuer, audience
        self.user_claim = user_claim
        self.admins, self.admin_groups = frozenset(admins), frozenset(admin_groups)
        self.leeway, self.timeout = leeway, timeout
        self._jwks_uri = jwks_uri
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def __call__(self, token: str) -> User:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as err:
            raise self._refused(f"The bearer token is not a well-formed JWT "
                                f"({first_line(err)})") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise self._refused(f"The token is signed with alg {_show(alg)}, which this service "
                                f"does not accept: it takes only tokens signed with the "
                                f"issuer's private key ({', '.join(ASYMMETRIC_ALGORITHMS)})")
        key = self._signing_key(header.get("kid"))
        if key.algorithm_name != alg:
            raise self._refused(f"The token says it is signed with {alg}, but the issuer's key "
                                f"{_show(key.key_id)} is a {key.algorithm_name} key: its "
                                "signature cannot be the issuer's")
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.InvalidTokenError as err:
            raise self._reason(err, token) from None
        return self._user(claims)

    def _signing_key(self, kid: Any) -> jwt.PyJWK:
        """The issuer's key ``kid``: 401 for a key it does not have, 503 when its set is out of
        reach or unusable."""
        client = self._keys()
        try:
            client.get_signing_keys()  # the set's own failures first: they are the issuer's
        except jwt.PyJWTError as err:
            raise self._unavailable(f"its keys at {client.uri}", err) from None
        if kid is None:
            raise self._refused("The token's header names no key id (kid), so it cannot be "
                                f"matched with a key of the issuer {self.issuer}")
        try:
            return client.get_signing_key(kid)
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError) as err:  # on a refresh
            raise self._unavailable(f"its keys at {client.uri}", err) from None
        except jwt.PyJWKClientError:
            raise self._refused(f"The token is signed with the key {_show(kid)}, which is not "
                                f"one of the issuer's ({client.uri}; after a key rotation, retry in a minute)"
                                ) from None

    def _keys(self) -> jwt.PyJWKClient:
        """The client of the issuer's JWKS, made at the first request (discovery included)."""
        with self._lock:
            if self._client is None:
                uri = self._jwks_uri or self._discover()
                self._client = jwt.PyJWKClient(uri, lifespan=_JWKS_LIFESPAN,
                                               timeout=self.timeout)
            return self._client

    def _discover(self) -> str:
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                document = json.load(response)
        except (OSError, ValueError, http.client.HTTPException) as err:
            raise self._unavailable(f"its discovery document {url}", err) from None
        uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(uri, str) or not _is_http(uri):
            raise self._unavailable(f"its discovery document {url}",
                                    ValueError(f"jwks_uri is {_show(uri)}, not an http(s) URL"))
        return uri

    def _reason(self, err: jwt.InvalidTokenError, token: str) -> RequestError:
        """What is wrong with a token whose signature ``jwt.decode`` checked (or refused)."""
        if isinstance(err, jwt.InvalidSignatureError):
            return self._refused(f"The token's signature does not match the issuer's key: it "
                                 f"was not signed by {self.issuer}, or it was altered")
        if isinstance(err, jwt.ExpiredSignatureError):
            exp = _claims(token).get("exp")
            when = (f" at {datetime.datetime.fromtimestamp(exp, datetime.UTC).isoformat()}"
                    if isinstance(exp, int | float) else "")
            return self._refused(f"The token expired{when}",
                                 f"get a new one from {self.issuer}")
        if isinstance(err, jwt.InvalidAudienceError):
            return self._refused(f"The token is for the audience "
                                 f"{_show(_claims(token).get('aud'))}, not for this service, "
                                 f"whose audience is {self.audience!r}",
                                 f"ask {self.issuer} for a token with audience "
                                 f"{self.audience!r}")
        if isinstance(err, jwt.InvalidIssuerError):
            return self._refused(f"The token is issued by {_show(_claims(token).get('iss'))}, "
                                 f"not by {self.issuer!r}, the issuer this service trusts")
        if isinstance(err, jwt.MissingRequiredClaimError):
            return self._refused(f"The token lacks the {err.claim!r} claim, which this service "
                                 "requires")
        if isinstance(err, jwt.ImmatureSignatureError):
            return self._refused(f"The token is not valid yet ({first_line(err)})",
                                 f"wait, or check that the clocks of this machine and of "
                                 f"{self.issuer} agree")
        return self._refused(f"The token is not valid ({first_line(err)})")

    def _user(self, claims: dict) -> User:
        name = claims.get(self.user_claim) or claims.get("sub")
        if not isinstance(name, str) or not name:
            raise self._refused(f"The token names no user: it has neither a "
                                f"{self.user_claim!r} nor a 'sub' claim")
        groups = set(_strings(claims.get("groups"))) | set(_strings(claims.get("roles")))
        return User(name, admin=name in self.admins or bool(groups & self.admin_groups))

    def _refused(self, reason: str, advice: str | None = None) -> RequestError:
        advice = advice or (f"{_ADVICE} with a token from {self.issuer} for the audience "
                            f"{self.audience!r}")
        return RequestError(f"{reason}: {advice}.", 401)

    def _unavailable(self, what: str, err: BaseException) -> RequestError:
        return RequestError(f"Cannot check the token now: the issuer {self.issuer} or {what} "
                            f"cannot be used ({first_line(err)}). Try again later; if it "
                            "persists, the service's OIDC issuer (or JWKS address) may be "
                            "wrong.", 503)


def _is_http(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def _claims(token: str) -> dict:
    """A token's claims without checking them: for the messages of a refusal only."""
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {}


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _show(value: Any, limit: int = 120) -> str:
    """A value from a request, quoted and cut short for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def authenticator(*, token_file: str | Path | None = None, oidc_issuer: str | None = None,
                  oidc_audience: str | None = None, oidc_jwks_uri: str | None = None,
                  oidc_user_claim: str = "preferred_username", admins: Sequence[str] = (),
                  admin_groups: Sequence[str] = ()) -> Authenticator | None:
    """The authenticator the service's flags ask for: ``--token-file`` or ``--oidc-issuer``
    with ``--oidc-audience``; None (no auth) when neither is given.

    ``admins`` are admins whichever way users are known; ``admin_groups`` are OIDC groups or
    roles whose members are.
    """
    oidc = oidc_issuer is not None or oidc_audience is not None or oidc_jwks_uri is not None
    if token_file is not None and oidc:
        raise HepdaskError("Give either --token-file or --oidc-issuer with --oidc-audience, not "
                           "both: users are known from a token file or from an OIDC issuer.")
    if token_file is not None:
        return StaticTokens.from_file(token_file, admins=admins)
    if not oidc:
        return None
    if oidc_issuer is None or oidc_audience is None:
        given, missing = (("--oidc-audience", "--oidc-issuer") if oidc_issuer is None
                          else ("--oidc-issuer", "--oidc-audience"))
        raise HepdaskError(f"{given} needs {missing} too: tokens are checked for both the "
                           "issuer ('iss') and the audience ('aud', this service, often its "
                           "client id at the issuer).")
    return OIDC(oidc_issuer, oidc_audience, jwks_uri=oidc_jwks_uri, user_claim=oidc_user_claim,
                admins=admins, admin_groups=admin_groups)


_bearer = HTTPBearer(auto_error=False, description="a token of the service's token file, or "
                     "an access token of its OIDC issuer")


def user_dependency(auth: Authenticator | None, admins: Sequence[str] = ()
                    ) -> Callable[..., User]:
    """The FastAPI dependency giving the :class:`User` of a request (``Depends(...)``).

    With ``auth`` None every request is :data:`LOCAL`, an admin; else a request without a
    bearer token is refused with 401, and one with a token is whoever ``auth`` says, an admin
    too when named in ``admins``. The dependency is a plain function, so FastAPI runs it in its
    thread pool: fetching an issuer's keys never blocks the event loop.
    """
    if auth is None:
        def local() -> User:
            return LOCAL
        return local
    promoted = frozenset(admins)

    def user(request: fastapi.Request,
             credentials: Annotated[HTTPAuthorizationCredentials | None,
                                    fastapi.Security(_bearer)]) -> User:
        if credentials is None:
            header = request.headers.get("authorization")
            problem = ("This service needs a bearer token" if header is None else
                       "The Authorization header is not 'Bearer <token>'")
            raise RequestError(f"{problem}: {_ADVICE}.", 401)
        found = auth(credentials.credentials)
        return User(found.name, admin=True) if found.name in promoted else found
    return user
