"""Meta-tests: the SDK's public surface, its docs, and the package's import boundaries."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pluggy

import connectors.sdk as sdk
import connectors.spec as spec

ROOT = Path(__file__).resolve().parents[2]
CONNECTORS = ROOT / "connectors"

PUBLIC = {
    # declaring connectors
    "Connector",
    "ConnectorDescription",
    "InvalidConnector",
    "validate_connector",
    "Kind",
    "Stream",
    "RestResource",
    "Action",
    "action",
    "hookimpl",
    "RateLimit",
    # records
    "Record",
    "DealRecord",
    "Page",
    "parse_cursor",
    # auth
    "AuthSpec",
    "OAuth2AuthorizationCode",
    "OAuth2ClientCredentials",
    "ApiKeyAuth",
    "BasicAuth",
    "OAuth2Auth",
    "refresh_oauth2_token",
    "fetch_client_credentials_token",
    # HTTP
    "HubHttp",
    "JsonResponse",
    "RetryPolicy",
    "parse_retry_after",
    "TokenBucket",
    # errors
    "ErrorAction",
    "ErrorRule",
    "ErrorTable",
    "DEFAULT_ERRORS",
    "is_outage",
    "ProviderError",
    "RateLimited",
    "AuthError",
    "ConfigError",
    "ProviderUnavailable",
    "CircuitOpen",
    "FatalProviderError",
    "PaginationError",
    # circuit breaker
    "AsyncCircuitBreaker",
    "BreakerStorage",
    "BreakerSnapshot",
    "BreakerChange",
    "InMemoryBreakerStorage",
    "RedisBreakerStorage",
    # pagination
    "Paginator",
    "PageRequest",
    "RawPage",
    "CursorPaginator",
    "NextUrlPaginator",
    "LinkHeaderPaginator",
    "OffsetPaginator",
    "PageNumberPaginator",
    "paginate",
    # webhooks
    "sign_webhook",
    "verify_webhook",
    "WebhookVerificationError",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert len(sdk.__all__) == len(set(sdk.__all__)), "duplicates in __all__"
    assert set(sdk.__all__) == PUBLIC
    assert sorted(sdk.__all__, key=lambda name: (not name.isupper(), name)) == sdk.__all__


def test_everything_public_is_importable_and_documented() -> None:
    for name in sdk.__all__:
        obj = getattr(sdk, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_public_methods_are_documented() -> None:
    missing = []
    for name in sdk.__all__:
        cls = getattr(sdk, name)
        if not inspect.isclass(cls) or not cls.__module__.startswith("connectors.sdk"):
            continue
        for attribute, member in vars(cls).items():
            if attribute.startswith("_") or not (
                inspect.isfunction(member) or isinstance(member, (property, classmethod, staticmethod))
            ):
                continue
            if not inspect.getdoc(getattr(cls, attribute)):
                missing.append(f"{name}.{attribute}")
    assert missing == []


def test_implementation_modules_are_private() -> None:
    modules = [path.name for path in (CONNECTORS / "sdk").glob("*.py")]
    assert [name for name in modules if name != "__init__.py" and not name.startswith("_")] == []


FORBIDDEN = ("core", "hub", "worker", "fastapi", "sqlalchemy", "arq", "starlette")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_connectors_stay_pure() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & set(FORBIDDEN))
        for path in CONNECTORS.rglob("*.py")
        if imported_roots(path) & set(FORBIDDEN)
    }
    assert offenders == {}


def test_plugins_import_only_the_sdk_of_the_hub() -> None:
    plugin_files = [
        *(CONNECTORS / "salesforce").glob("*.py"),
        CONNECTORS / "fake_crm.py",
        *(ROOT / "tests" / "third_party_connector").rglob("*.py"),
    ]
    for path in plugin_files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("connectors"):
                assert node.module == "connectors.sdk", f"{path.name} imports {node.module}"


def hookspecs() -> list[tuple[str, object]]:
    marker = pluggy.HookspecMarker("hub")
    return [
        (name, fn) for name, fn in vars(spec).items() if callable(fn) and hasattr(fn, marker.project_name + "_spec")
    ]


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    readme = (CONNECTORS / "README.md").read_text()
    assert hookspecs(), "no hook specifications found"
    for name, fn in hookspecs():
        annotations = fn.__annotations__  # strings: the module uses postponed annotations
        params = ", ".join(f"{p}: {annotations[p]}" for p in inspect.signature(fn).parameters)
        signature = f"{name}({params}) -> {annotations['return']}"
        assert f"`{signature}`" in readme, f"README.md lacks the signature {signature}"
        assert ":param" in (fn.__doc__ or ""), f"{name} has no :param: documentation"


def test_every_hook_has_a_test() -> None:
    sources = "\n".join(
        path.read_text() for path in Path(__file__).parent.glob("test_*.py") if path.name != Path(__file__).name
    )
    for name, _ in hookspecs():
        assert f"def {name}(" in sources or f"{name}=" in sources, f"no test implements hook {name}"


def test_the_pytest_plugin_is_cheap_to_import() -> None:
    code = (
        "import sys, connectors.testing as t;"
        "heavy = [m for m in ('httpx', 'pydantic', 'respx', 'pybreaker', 'connectors.sdk') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""
