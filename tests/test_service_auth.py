"""Bearer tokens of the service, over real HTTP on loopback: an OIDC issuer (discovery document
and JWKS of a locally generated RSA key) served by http.server, and a FastAPI app behind
``user_dependency`` served by uvicorn, both in threads; static token files on disk."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

fastapi = pytest.importorskip("fastapi")
jwt = pytest.importorskip("jwt")
uvicorn = pytest.importorskip("uvicorn")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from hepdask.errors import HepdaskError, RequestError  # noqa: E402
from hepdask.service.auth import (  # noqa: E402
    OIDC,
    StaticTokens,
    User,
    authenticator,
    user_dependency,
)

AUDIENCE = "hepdask-service"
KID = "key-1"


@contextlib.contextmanager
def issuer_server(public_key) -> Iterator[tuple[str, Counter]]:
    """An OIDC issuer on loopback: its discovery document and JWKS; yields its URL and the
    number of times each was fetched."""
    jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True),
           "kid": KID, "use": "sig", "alg": "RS256"}
    hits: Counter = Counter()

    class Issuer(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            base = f"http://127.0.0.1:{self.server.server_address[1]}/realms/physics"
            documents = {
                "/realms/physics/.well-known/openid-configuration":
                    {"issuer": base, "jwks_uri": f"{base}/certs"},
                "/realms/physics/certs": {"keys": [jwk]},
            }
            if self.path not in documents:
                self.send_error(404)
                return
            hits[self.path.rsplit("/", 1)[-1]] += 1
            body = json.dumps(documents[self.path]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Issuer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/realms/physics", hits
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def app_server(app) -> Iterator[str]:
    """``app`` served by uvicorn on a loopback port chosen by the system."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_app(routes: dict) -> fastapi.FastAPI:
    """One route per authenticator, answering who the request is from."""
    app = fastapi.FastAPI()

    @app.exception_handler(RequestError)
    async def refused(request, err: RequestError):
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse({"error": str(err)}, status_code=err.status, headers=headers)

    for path, dependency in routes.items():
        depends = fastapi.Depends(dependency)  # bound now, not when the loop is over

        def who(user: User = depends) -> dict:
            return {"name": user.name, "admin": user.admin}
        app.get(path)(who)
    return app


def request(url: str, token: str | None = None, *, header: str | None = None
            ) -> tuple[int, dict, dict]:
    """GET ``url`` with a bearer token (or a raw Authorization header): status, JSON, headers."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if header is not None:
        headers["Authorization"] = header
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as answer:
            return answer.status, json.load(answer), dict(answer.headers)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.load(err), dict(err.headers)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The issuer, its key and another key, and the app's URL with routes /oidc (admins: user
    carol, group hep-admins), /static (a two-user token file), /bare (a bare-token file),
    /down (an issuer that cannot be reached), /keyless (a
    JWKS that cannot be reached) and /open (no auth)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    directory = tmp_path_factory.mktemp("tokens")
    (directory / "tokens").write_text("# users of the test service\n"
                                      "alice-token alice\n\n"
                                      "bob-token   bob admin  # the operator\n")
    (directory / "bare").write_text("the-only-token\n")
    with issuer_server(key.public_key()) as (issuer, hits):
        oidc = OIDC(issuer, AUDIENCE, admin_groups=["hep-admins"])
        nowhere = f"http://127.0.0.1:{closed_port()}"
        down = OIDC(f"{nowhere}/realms/physics", AUDIENCE, timeout=2)
        keyless = OIDC(issuer, AUDIENCE, jwks_uri=f"{nowhere}/certs", timeout=2)
        app = make_app({
            "/oidc": user_dependency(oidc, admins=["carol"]),
            "/static": user_dependency(StaticTokens.from_file(directory / "tokens")),
            "/bare": user_dependency(StaticTokens.from_file(directory / "bare")),
            "/down": user_dependency(down),
            "/keyless": user_dependency(keyless),
            "/open": user_dependency(None),
        })
        with app_server(app) as url:
            yield {"url": url, "issuer": issuer, "key": key, "other": other, "hits": hits}


def sign(service, *, key=None, headers=None, algorithm="RS256", **claims) -> str:
    now = int(time.time())
    payload = {"iss": service["issuer"], "aud": AUDIENCE, "sub": "f3a1-0c", "iat": now,
               "exp": now + 600, "preferred_username": "alice", **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key or service["key"], algorithm=algorithm,
                      headers={"kid": KID, **(headers or {})})


def refusal(service, token=None, *, route="/oidc", header=None, status=401) -> str:
    code, body, headers = request(service["url"] + route, token, header=header)
    assert code == status, body
    if status == 401:
        assert headers.get("www-authenticate") == "Bearer"
    return body["error"]


def test_valid_token_names_the_user_and_keys_are_fetched_once(service):
    for _ in range(3):
        code, body, _ = request(service["url"] + "/oidc", sign(service))
        assert (code, body) == (200, {"name": "alice", "admin": False})
    late = sign(service, exp=int(time.time()) - 10)  # within the leeway for clock differences
    assert request(service["url"] + "/oidc", late)[:2] == (200, {"name": "alice", "admin": False})
    code, body, _ = request(service["url"] + "/oidc", sign(service, preferred_username=None))
    assert (code, body) == (200, {"name": "f3a1-0c", "admin": False})  # "sub" without the claim
    # A token signed by an unknown key id does not make the service fetch the keys again
    # (within PyJWKClient's cooldown), nor does anything else: discovery once, JWKS once.
    assert "not one of the issuer's" in refusal(service, sign(service, headers={"kid": "k9"}))
    assert service["hits"] == {"openid-configuration": 1, "certs": 1}


def test_admins_by_name_and_by_group(service):
    carol = sign(service, preferred_username="carol")
    assert request(service["url"] + "/oidc", carol)[1] == {"name": "carol", "admin": True}
    for claim in ("groups", "roles"):
        token = sign(service, preferred_username="dave", **{claim: ["cms", "hep-admins"]})
        assert request(service["url"] + "/oidc", token)[1] == {"name": "dave", "admin": True}
    token = sign(service, preferred_username="erin", groups=["cms"])
    assert request(service["url"] + "/oidc", token)[1] == {"name": "erin", "admin": False}


def test_refusals_say_why(service):
    now = int(time.time())
    expired = refusal(service, sign(service, exp=now - 3600, iat=now - 7200))
    assert "expired at" in expired and service["issuer"] in expired
    audience = refusal(service, sign(service, aud="another-service"))
    assert "'another-service'" in audience and f"whose audience is '{AUDIENCE}'" in audience
    issuer = refusal(service, sign(service, iss="https://evil.example.org"))
    assert "issued by 'https://evil.example.org'" in issuer
    assert "does not match the issuer's key" in refusal(service, sign(service,
                                                                       key=service["other"]))
    assert "lacks the 'exp' claim" in refusal(service, sign(service, exp=None))
    assert "not a well-formed JWT" in refusal(service, "not-a-jwt")
    assert "names no key id" in refusal(service, jwt.encode(
        {"iss": service["issuer"], "aud": AUDIENCE, "exp": now + 60}, service["key"],
        algorithm="RS256"))


def test_unsigned_and_symmetric_tokens_are_refused(service):
    claims = {"iss": service["issuer"], "aud": AUDIENCE, "exp": int(time.time()) + 600,
              "preferred_username": "mallory"}
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": KID})
    assert "alg 'none'" in refusal(service, unsigned)
    # HS256 keyed with the issuer's public key (which anyone can fetch), forged by hand since
    # PyJWT will not make one.
    public = service["key"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', 'kid': KID})}.{part(claims)}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert "alg 'HS256'" in refusal(service, forged)


def test_missing_or_garbled_header(service):
    for route in ("/oidc", "/static"):
        assert "needs a bearer token" in refusal(service, route=route)
        assert "is not 'Bearer <token>'" in refusal(service, route=route,
                                                    header="Basic YWxpY2U6cw==")
    assert request(service["url"] + "/open")[1] == {"name": "local", "admin": True}


def test_unreachable_issuer_is_503(service):
    error = refusal(service, sign(service), route="/down", status=503)
    assert "Cannot check the token now" in error and "openid-configuration" in error
    error = refusal(service, sign(service), route="/keyless", status=503)
    assert "Cannot check the token now" in error and "/certs" in error


def test_static_tokens_over_http(service):
    url = service["url"]
    assert request(url + "/static", "alice-token")[1] == {"name": "alice", "admin": False}
    assert request(url + "/static", "bob-token")[1] == {"name": "bob", "admin": True}
    assert "Missing or wrong bearer token" in refusal(service, "alice-tok", route="/static")
    assert request(url + "/bare", "the-only-token")[1] == {"name": "default", "admin": False}
    assert "Missing or wrong" in refusal(service, "alice-token", route="/bare")


@pytest.mark.parametrize(("text", "message"), [
    ("", "holds no token"),
    ("# only a comment\n\n", "holds no token"),
    ("Zk1 alice\nZk2\n", r"Line 2 of the token file .* \(it has 1 field\)"),
    ("Zk1 alice\nZk2 bob root\n", r"Line 2 .* \(its third field is 'root'\)"),
    ("Zk1 alice admin extra\n", r"Line 1 .* \(it has 4 fields\)"),
    ("Zk1 alice\n# comment\nZk1 bob\n", "Lines 1 and 3 of the token file .* same token"),
], ids=["empty", "comments", "bare-among-users", "role", "fields", "duplicate"])
def test_malformed_token_files(tmp_path, text, message):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(HepdaskError, match=message) as info:
        StaticTokens.from_file(path)
    assert str(path) in str(info.value) and "Zk" not in str(info.value)  # tokens stay secret


def test_token_file_roles(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("t1 alice\nt2 alice admin\nt3 bob\n")
    tokens = StaticTokens.from_file(path, admins=["bob"])
    assert [tokens(t) for t in ("t1", "t2", "t3")] == [User("alice", True), User("alice", True),
                                                        User("bob", True)]
    with pytest.raises(HepdaskError, match="Cannot read the token file"):
        StaticTokens.from_file(tmp_path / "absent")


def test_authenticator_from_flags(tmp_path):
    path = tmp_path / "token"
    path.write_text("secret\n")
    assert authenticator() is None
    assert authenticator(token_file=path)("secret") == User("default")
    oidc = authenticator(oidc_issuer="https://auth.example.org/realms/x", oidc_audience="svc",
                         admins=["root"])
    assert isinstance(oidc, OIDC) and oidc.admins == {"root"}
    with pytest.raises(HepdaskError, match="either --token-file or --oidc-issuer"):
        authenticator(token_file=path, oidc_issuer="https://auth.example.org", oidc_audience="a")
    with pytest.raises(HepdaskError, match="--oidc-issuer needs --oidc-audience"):
        authenticator(oidc_issuer="https://auth.example.org")
    with pytest.raises(HepdaskError, match="--oidc-audience needs --oidc-issuer"):
        authenticator(oidc_audience="svc")
    with pytest.raises(HepdaskError, match="not an http"):
        OIDC("auth.example.org", "svc")
