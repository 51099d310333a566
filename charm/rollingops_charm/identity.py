"""The application's etcd client identity, kept in one Juju app secret.

The leader creates it (and renews it before it expires); every unit reads it and writes key and
certificate to its own directory, 0600. The key never appears in relation data or logs.
"""

from __future__ import annotations

import ops

from rollingops.certificates import ClientIdentity, generate_client_identity, needs_renewal

LABEL = "rollingops-client-identity"


def client_cn(app: str, model_uuid: str) -> str:
    """CN, hence etcd user: unique per application and model."""
    return f"rollingops-{app}-{model_uuid[:8]}"


def read_identity(model: ops.Model) -> ClientIdentity | None:
    """The identity from the app secret, or ``None`` before the leader created it."""
    try:
        content = model.get_secret(label=LABEL).get_content(refresh=True)
    except (ops.SecretNotFoundError, ops.ModelError):
        return None
    if "key" not in content or "cert" not in content:
        return None
    return ClientIdentity(key_pem=content["key"], cert_pem=content["cert"])


def ensure_identity(model: ops.Model) -> ClientIdentity:
    """Leader only: create the identity, or renew it when it nears expiry."""
    current = read_identity(model)
    if current is not None and not needs_renewal(current.cert_pem):
        return current
    fresh = generate_client_identity(client_cn(model.app.name, model.uuid))
    content = {"key": fresh.key_pem, "cert": fresh.cert_pem}
    if current is None:
        model.app.add_secret(content, label=LABEL, description="rollingops etcd client identity")
    else:
        model.get_secret(label=LABEL).set_content(content)
    return fresh
